"""Per-container masquerade (the reference bridge plugin's ipMasq), on the shared applier.

For container C of network N with address A in subnet S, in the nat table of A's family:

    :TARTAN-<hash(N, C)> - [0:0]
    -A TARTAN-<hash> -d S -m comment --comment "name: \\"N\\" id: \\"C\\"" -j ACCEPT
    -A TARTAN-<hash> ! -d 224.0.0.0/4 -m comment --comment "..." -j MASQUERADE   (ff00::/8)
    -A POSTROUTING -s A/32 -m comment --comment "..." -j TARTAN-<hash>          (/128)

Teardown needs only (N, C): the chain name derives from them and the jumps are found by their
target, so nothing leaks when the pod's netns and addresses are already gone (the reference
plugin needs the address). GC finds a network's containers from the rules' comments.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial

from tartan.cni import errors
from tartan.kernel.iptables import Chain, Iptables, LiveTable, Rule, Table, containers_in

Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Applier = Callable[[int], Iptables]  # family (4 or 6) -> the applier for it
FAMILIES = (4, 6)
MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
PREFIX = "TARTAN-"
_QUOTED = r'("(?:[^"\\]|\\.)*")'
_COMMENT = re.compile(rf"name: {_QUOTED} id: {_QUOTED}")


def chain_name(network: str, container_id: str) -> str:
    """TARTAN- and 20 hex digits of sha256: 27 characters, stable for (network, container)."""
    digest = hashlib.sha256(f"{network}\0{container_id}".encode()).hexdigest()
    return PREFIX + digest[:20]


def comment(network: str, container_id: str) -> str:
    """The reference plugin's comment: Go's `name: %q id: %q`."""
    return f"name: {json.dumps(network)} id: {json.dumps(container_id)}"


def tables(network: str, container_id: str, addresses: Iterable[Address]) -> dict[int, Table]:
    """The nat table state for each address family the container has."""
    addresses = list(dict.fromkeys(addresses))
    return {version: _table(network, container_id, [a for a in addresses if a.version == version])
            for version in sorted({a.version for a in addresses})}


def _table(network: str, container_id: str, addresses: list[Address]) -> Table:
    chain = chain_name(network, container_id)
    note = ("-m", "comment", "--comment", comment(network, container_id))
    subnets = dict.fromkeys(str(a.network) for a in addresses)
    version = addresses[0].version
    rules: list[tuple[str, ...]] = [("-d", subnet, *note, "-j", "ACCEPT") for subnet in subnets]
    rules.append(("!", "-d", MULTICAST[version], *note, "-j", "MASQUERADE"))
    jumps = [Rule("POSTROUTING", ("-s", f"{a.ip}/{a.max_prefixlen}", *note, "-j", chain))
             for a in addresses]
    return Table("nat", chains=(Chain(chain, tuple(rules)),), rules=tuple(jumps))


def setup(network: str, container_id: str, addresses: Iterable[Address], *,
          applier: Applier = Iptables) -> bool:
    """Masquerade the container's traffic: one restore per family, none when in place.

    Jumps to the container's chain from addresses it no longer has are removed.
    """
    changed = False
    for version, table in tables(network, container_id, addresses).items():
        changed |= applier(version).apply_with("nat", partial(_without_stale_jumps, table))
    return changed


def check(network: str, container_id: str, addresses: Iterable[Address], *,
          applier: Applier = Iptables) -> None:
    """Raise CheckMismatch when the container's masquerade is not exactly in place."""
    for version, table in tables(network, container_id, addresses).items():
        ipt = applier(version)
        state, live = _with_stale_jumps(ipt, table)
        if lines := ipt.pending(state, live):
            raise errors.CheckMismatch(
                f"IPv{version} masquerade of container {container_id} in network {network} "
                f"is not in place: {lines[0]}", "\n".join(lines))


def _with_stale_jumps(ipt: Iptables, table: Table) -> tuple[Table, LiveTable]:
    live = ipt.read(table.name)
    return _without_stale_jumps(table, live), live


def _without_stale_jumps(table: Table, live: LiveTable) -> Table:
    """`table`, also deleting jumps to its chain from addresses it no longer lists."""
    chain = table.chains[0].name
    stale = [rule for rule in live.jumps_to(chain) if rule not in table.rules]
    return replace(table, delete_rules=tuple(stale))


def teardown(network: str, container_id: str, *, applier: Applier = Iptables,
             families: Iterable[int] = FAMILIES) -> bool:
    """Remove the container's chain and every rule jumping to it; absent is success."""
    doomed = Table("nat", delete_chains=(chain_name(network, container_id),))
    return any(_each_family(families, applier, lambda ipt: ipt.apply(doomed)))


def gc(network: str, valid_container_ids: set[str], *, applier: Applier = Iptables,
       families: Iterable[int] = FAMILIES) -> set[str]:
    """Remove this network's chains of containers not in `valid_container_ids`.

    Returns the container ids whose masquerade was removed.
    """
    def collect(ipt: Iptables) -> set[str]:
        found: set[str] = set()

        def build(live: LiveTable) -> Table:
            found.clear()  # a caller run again after the batch builds from a new reading
            found.update(containers(live, network) - set(valid_container_ids))
            return Table("nat", delete_chains=tuple(chain_name(network, c) for c in sorted(found)))

        ipt.apply_with("nat", build)
        return found

    return set().union(*_each_family(families, applier, collect))


def containers(live: LiveTable, network: str) -> set[str]:
    """Containers of `network` that have a masquerade chain or jump in `live`."""
    return containers_in(live, network, _owner, chain_name)


def _owner(args: tuple[str, ...]) -> tuple[str, str] | None:
    """(network, container id) from a rule's `name: "N" id: "C"` comment."""
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "--comment" and (match := _COMMENT.fullmatch(value)):
            try:
                return json.loads(match[1]), json.loads(match[2])
            except ValueError:
                return None
    return None


def _each_family(families: Iterable[int], applier: Applier, step: Callable) -> list:
    """Run `step` for every family, even when one fails; then raise the first failure."""
    results, failures = [], []
    for family in families:
        try:
            results.append(step(applier(family)))
        except errors.CniError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
    return results
