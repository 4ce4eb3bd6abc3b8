"""What the kernel holds for a set of peers (routes; for VXLAN also neighbour and FDB
entries), and the two ways the agent makes the kernel hold it:

- `sync`, the full pass: one dump per kind, set differences against what every peer asks
  for; it repairs hand-made damage and removes what no lease asks for.
- `apply_delta`, a store change: the entries of the peers that changed, before and after,
  with no dump; it touches nothing else.

Both compare entries by identity: a route by its destination, a neighbour by its IP, an FDB
entry by MAC and VTEP. A changed entry is replaced in place before anything stale is
removed, so a peer that moves is never unreachable in between.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from pyroute2 import IPRoute

from tartan.backends.registry import PeerState
from tartan.backends.routes import PROTO_TARTAN
from tartan.kernel import neigh, route
from tartan.kernel.neigh import FdbEntry, Neighbour
from tartan.kernel.route import RouteSpec

E = TypeVar("E", RouteSpec, Neighbour, FdbEntry)


@dataclass
class Entries:
    """What the kernel should hold for some peers, and each peer's state."""

    routes: list[RouteSpec] = field(default_factory=list)
    neighbours: list[Neighbour] = field(default_factory=list)  # on the VXLAN device
    fdb: list[FdbEntry] = field(default_factory=list)  # on the VXLAN device
    states: list[PeerState] = field(default_factory=list)


def route_identity(spec: RouteSpec) -> Hashable:
    return spec.network


def neighbour_identity(entry: Neighbour) -> Hashable:
    return entry.ip


def fdb_identity(entry: FdbEntry) -> Hashable:
    return entry


def _route_value(spec: RouteSpec) -> Hashable:
    return (spec.network, spec.gw, spec.oif, spec.onlink)


def _changes(live: Iterable[E], wanted: Iterable[E], identity: Callable[[E], Hashable],
             value: Callable[[E], Hashable] = lambda e: e) -> tuple[list[E], list[E]]:
    """(to put, to remove): wanted entries the kernel lacks or holds otherwise, and live
    entries whose identity nothing wants."""
    live_by_id = {identity(e): value(e) for e in live}
    wanted_by_id = {identity(e): e for e in wanted}
    put = [e for key, e in wanted_by_id.items() if live_by_id.get(key) != value(e)]
    remove = [e for e in live if identity(e) not in wanted_by_id]
    return put, remove


def _apply(put: list[E], remove: list[E], do_put: Callable[[E], object],
           do_remove: Callable[[E], object]) -> int:
    for entry in put:
        do_put(entry)
    for entry in remove:
        do_remove(entry)
    return len(put) + len(remove)


def sync(ipr: IPRoute, wanted: Entries, vxlan_device: int = 0) -> int:
    """The full pass: the kernel's Tartan routes (and the VXLAN device's permanent
    neighbours and remote FDB entries) made exactly `wanted`; the number of changes."""
    changes = 0
    if vxlan_device:
        changes += _apply(*_changes(neigh.permanent_neighbours(ipr, vxlan_device),
                                    wanted.neighbours, neighbour_identity),
                          lambda e: neigh.replace_neighbour(ipr, vxlan_device, e),
                          lambda e: neigh.delete_neighbour(ipr, vxlan_device, e))
        changes += _apply(*_changes(neigh.remote_fdb(ipr, vxlan_device), wanted.fdb,
                                    fdb_identity),
                          lambda e: neigh.replace_fdb(ipr, vxlan_device, e),
                          lambda e: neigh.delete_fdb(ipr, vxlan_device, e))
    changes += _apply(*_changes(route.by_protocol(ipr, PROTO_TARTAN), wanted.routes,
                                route_identity, _route_value),
                      lambda spec: route.replace(ipr, spec),
                      lambda spec: route.delete(ipr, spec))
    return changes


def apply_delta(ipr: IPRoute, before: Entries, after: Entries, vxlan_device: int = 0) -> int:
    """A store change: `before` is what the changed peers' old leases asked for, `after`
    what their new ones ask for; only the difference is written, with no dump."""
    changes = 0
    if vxlan_device:
        changes += _apply(*_changes(before.neighbours, after.neighbours, neighbour_identity),
                          lambda e: neigh.replace_neighbour(ipr, vxlan_device, e),
                          lambda e: neigh.delete_neighbour(ipr, vxlan_device, e))
        changes += _apply(*_changes(before.fdb, after.fdb, fdb_identity),
                          lambda e: neigh.replace_fdb(ipr, vxlan_device, e),
                          lambda e: neigh.delete_fdb(ipr, vxlan_device, e))
    changes += _apply(*_changes(before.routes, after.routes, route_identity, _route_value),
                      lambda spec: route.replace(ipr, spec),
                      lambda spec: route.delete(ipr, spec))
    return changes
