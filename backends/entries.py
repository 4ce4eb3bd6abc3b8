"""What the kernel holds for a set of peers (routes; for VXLAN also neighbour and FDB
entries), and the two ways the agent makes the kernel hold it:

- `sync`, the full pass: one dump per kind, set differences against what every peer asks
  for; it repairs hand-made damage and removes what no lease asks for.
- `apply_delta`, a store change: the entries of the peers that changed, before and after,
  with no dump; it touches nothing else.

Both read and write through kernel/bulk.py (filtered dumps, batched writes): with thousands
of peers, one pyroute2 call per entry is where the time would go.

Both compare entries by identity: a route by its destination, a neighbour by its IP, an FDB
entry by MAC and VTEP. A changed entry is replaced in place before anything stale is
removed, so a peer that moves is never unreachable in between.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from tartan.backends.registry import PeerState
from tartan.backends.routes import PROTO_TARTAN
from tartan.kernel.bulk import Event, Rtnl
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


class Desired:
    """What the kernel was last asked to hold (by the full pass, then by each change since),
    kept so that what the kernel announces can be told apart: Tartan's own writes agree
    with it; an entry of Tartan's deleted or changed by someone else does not."""

    def __init__(self, uplink: int) -> None:
        self.lock = threading.Lock()
        self.uplink = uplink
        self.device = 0  # the VXLAN device's index; 0 for host-gw
        # each kind by identity -> value, as _changes compares them
        self.routes: dict[Hashable, Hashable] = {}
        self.neighbours: dict[Hashable, Hashable] = {}
        self.fdb: dict[Hashable, Hashable] = {}

    def replace(self, wanted: Entries, device: int) -> None:
        with self.lock:
            self.device = device
            self.routes = {route_identity(r): _route_value(r) for r in wanted.routes}
            self.neighbours = {neighbour_identity(n): n for n in wanted.neighbours}
            self.fdb = {fdb_identity(f): f for f in wanted.fdb}

    def update(self, before: Entries, after: Entries) -> None:
        with self.lock:
            _follow(self.routes, before.routes, after.routes, route_identity, _route_value)
            _follow(self.neighbours, before.neighbours, after.neighbours, neighbour_identity)
            _follow(self.fdb, before.fdb, after.fdb, fdb_identity)

    def disagrees(self, event: Event) -> bool:
        """Whether the kernel's announcement says it no longer holds what it was asked to
        (or holds something of Tartan's nobody asked for)."""
        entry = event.entry
        with self.lock:
            if isinstance(entry, int):
                return entry in (self.device, self.uplink) and entry != 0
            if isinstance(entry, RouteSpec):
                wanted = self.routes.get(route_identity(entry))
                return (wanted == _route_value(entry)) if event.deleted else (
                    wanted != _route_value(entry))
            if event.ifindex != self.device or not self.device:
                return False
            if isinstance(entry, Neighbour):
                held = self.neighbours.get(neighbour_identity(entry))
                # a neighbour's deletion is announced without its MAC
                return (held is not None) if event.deleted else held != entry
            return (fdb_identity(entry) in self.fdb) == event.deleted


def _follow(held: dict[Hashable, Hashable], before: Iterable[E], after: Iterable[E],
            identity: Callable[[E], Hashable],
            value: Callable[[E], Hashable] = lambda e: e) -> None:
    """`held` after the change from `before` to `after` (what apply_delta writes)."""
    put, remove = _changes(before, after, identity, value)
    for entry in remove:
        held.pop(identity(entry), None)
    held.update((identity(e), value(e)) for e in put)


def route_identity(spec: RouteSpec) -> Hashable:
    return spec.dst  # "a.b.c.d/len", as the kernel's dumps and str(IPv4Network) spell it


def neighbour_identity(entry: Neighbour) -> Hashable:
    return entry.ip


def fdb_identity(entry: FdbEntry) -> Hashable:
    return entry


def _route_value(spec: RouteSpec) -> Hashable:
    return (spec.dst, spec.gw, spec.oif, spec.onlink)


def _changes(live: Iterable[E], wanted: Iterable[E], identity: Callable[[E], Hashable],
             value: Callable[[E], Hashable] = lambda e: e) -> tuple[list[E], list[E]]:
    """(to put, to remove): wanted entries the kernel lacks or holds otherwise, and live
    entries whose identity nothing wants."""
    live_by_id = {identity(e): value(e) for e in live}
    wanted_by_id = {identity(e): e for e in wanted}
    put = [e for key, e in wanted_by_id.items() if live_by_id.get(key) != value(e)]
    remove = [e for e in live if identity(e) not in wanted_by_id]
    return put, remove


def _apply(put: list[E], remove: list[E], do_put: Callable[[list[E]], None],
           do_remove: Callable[[list[E]], None]) -> int:
    if put:
        do_put(put)
    if remove:
        do_remove(remove)
    return len(put) + len(remove)


def sync(wanted: Entries, desired: Desired, vxlan_device: int = 0) -> int:
    """The full pass: the kernel's Tartan routes (and the VXLAN device's permanent
    neighbours and remote FDB entries) made exactly `wanted`; the number of changes."""
    desired.replace(wanted, vxlan_device)  # first: the writes below then agree with it
    with Rtnl() as rtnl:
        live = Entries(rtnl.routes(PROTO_TARTAN))
        if vxlan_device:
            live.neighbours = rtnl.permanent_neighbours(vxlan_device)
            live.fdb = rtnl.remote_fdb(vxlan_device)
        return _converge(rtnl, live, wanted, vxlan_device)


def apply_delta(before: Entries, after: Entries, desired: Desired,
                vxlan_device: int = 0) -> int:
    """A store change: `before` is what the changed peers' old leases asked for, `after`
    what their new ones ask for; only the difference is written, with no dump."""
    desired.update(before, after)
    with Rtnl() as rtnl:
        return _converge(rtnl, before, after, vxlan_device)


def _converge(rtnl: Rtnl, held: Entries, wanted: Entries, vxlan_device: int) -> int:
    """Write what takes the kernel from `held` to `wanted`; the number of changes."""
    changes = 0
    if vxlan_device:
        changes += _apply(*_changes(held.neighbours, wanted.neighbours, neighbour_identity),
                          lambda es: rtnl.replace_neighbours(vxlan_device, es),
                          lambda es: rtnl.delete_neighbours(vxlan_device, es))
        changes += _apply(*_changes(held.fdb, wanted.fdb, fdb_identity),
                          lambda es: rtnl.replace_fdb(vxlan_device, es),
                          lambda es: rtnl.delete_fdb(vxlan_device, es))
    changes += _apply(*_changes(held.routes, wanted.routes, route_identity, _route_value),
                      rtnl.replace_routes, rtnl.delete_routes)
    return changes
