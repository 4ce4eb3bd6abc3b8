"""Denied packets per (policy, direction), from the counters of the pod chains' final drops.

Every isolated pod has a chain per direction (TARTAN-NPI-<h> ingress, TARTAN-NPE-<h> egress)
that ends in the DROP every packet reaches when no rule of the chain allowed it; that rule's
counters are the pod's denied packets in that direction. A pod isolated by several policies
counts each of its drops once for each of them: none of them allowed the packet, so each one
denied it. (The totals of the policies of one pod then add up to more than the pod's drops.)

The kernel's counters are not monotonic, Prometheus counters must be: an iptables-restore that
re-declares a chain (`:CHAIN - [0:0]`, how the applier rewrites a chain whose rules changed)
starts the chain's counters at zero, and a chain that is deleted takes its count with it. So
the totals are kept here: per chain the last reading, and each reading adds what is new since.
A chain was reset when its rules differ from the last reading's (the applier rewrote it) or
its drop count went down (something else restored it): then all of its count is new. A chain
that was not in the last reading counts from zero, but the first reading of a process only
sets the baseline: what the chains held then was counted by the previous agent, if at all.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from tartan.kernel.iptables import RuleCounters
from tartan.kernel.iptables_backend import target_of
from tartan.netpol.model import Direction

POD_CHAINS = {"TARTAN-NPI-": Direction.INGRESS, "TARTAN-NPE-": Direction.EGRESS}
POD_CHAIN_PREFIXES = tuple(POD_CHAINS)
Key = tuple[str, str]  # (policy key "ns/name", direction "ingress" or "egress")


@dataclass(frozen=True)
class Denied:
    packets: int = 0
    bytes: int = 0

    def __add__(self, other: Denied) -> Denied:
        return Denied(self.packets + other.packets, self.bytes + other.bytes)


@dataclass(frozen=True)
class _Reading:
    """One pod chain in one reading: its rules, and its final drop's counters."""

    rules: tuple[tuple[str, ...], ...]
    drop: Denied


def direction_of(chain: str) -> str | None:
    """"ingress" or "egress" for a pod chain, None for any other chain."""
    for prefix, direction in POD_CHAINS.items():
        if chain.startswith(prefix):
            return direction.lower()
    return None


def isolated_pods(isolated: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Pods with a chain, per direction (both directions always present)."""
    out = {direction.lower(): 0 for direction in POD_CHAINS.values()}
    for chain in isolated:
        if (direction := direction_of(chain)) is not None:
            out[direction] += 1
    return out


class DeniedTotals:
    """Monotonic totals of denied packets and bytes per (policy, direction).

    `add` takes one reading of the pod chains' counters with the map of the policies that
    isolated each chain while it counted (`Compiled.isolated`). Callers serialise `add`;
    `totals` may be read from any thread (each `add` replaces it whole).
    """

    def __init__(self) -> None:
        self.totals: dict[Key, Denied] = {}
        self._last: dict[str, _Reading] | None = None  # None: no reading yet

    @property
    def has_baseline(self) -> bool:
        return self._last is not None

    def add(self, counters: Mapping[str, Sequence[RuleCounters]],
            isolated: Mapping[str, Sequence[str]], partial: bool = False) -> None:
        """`partial`: the reading holds only some chains; the others keep their last one."""
        now = {chain: _reading(rules) for chain, rules in counters.items()
               if direction_of(chain) is not None}
        if self._last is not None:
            totals = dict(self.totals)
            for chain, reading in now.items():
                new = _since(self._last.get(chain), reading)
                direction = direction_of(chain)
                if (new.packets or new.bytes) and direction is not None:
                    for policy in isolated.get(chain, ()):
                        key = (policy, direction)
                        totals[key] = totals.get(key, Denied()) + new
            self.totals = totals
        self._last = {**self._last, **now} if partial and self._last is not None else now

    def restored(self, chains: Mapping[str, Sequence[tuple[str, ...]]],
                 rewritten: Collection[str]) -> None:
        """After a restore that wrote `rewritten` chains afresh (their counters start at
        zero) and left the others of `chains` alone (chains not in it are gone): the last
        reading as a new one would show it, without reading the kernel."""
        if self._last is None:
            return
        last = {chain: reading for chain, reading in self._last.items() if chain in chains}
        for chain, rules in chains.items():
            if direction_of(chain) is not None and (chain in rewritten or chain not in last):
                last[chain] = _Reading(tuple(tuple(rule) for rule in rules), Denied())
        self._last = last


def _reading(rules: Sequence[RuleCounters]) -> _Reading:
    """The chain's final drop is its last DROP rule (an NFLOG before it counts the same)."""
    drops = [rule for rule in rules if target_of(rule.args) == "DROP"]
    drop = Denied(drops[-1].packets, drops[-1].bytes) if drops else Denied()
    return _Reading(tuple(rule.args for rule in rules), drop)


def _since(before: _Reading | None, now: _Reading) -> Denied:
    """What `now` counted since `before`: all of it for a new, rewritten or reset chain."""
    if (before is None or before.rules != now.rules
            or now.drop.packets < before.drop.packets or now.drop.bytes < before.drop.bytes):
        return now.drop
    return Denied(now.drop.packets - before.drop.packets, now.drop.bytes - before.drop.bytes)
