"""Who may open a connection to whom, computed from the policy model alone (issue 10).

`verdict` decides one connection to the letter of networking.k8s.io/v1: it is allowed iff
egress allows it at the source and ingress allows it at the destination. A side is isolated
when some policy that selects the pod there names that direction in its policyTypes; it then
allows what at least one rule of those policies matches. `truth_table` applies that to every
ordered pair of pods; `render` prints it as the Kubernetes e2e framework's TruthTable does
(`.` allowed, `X` denied), and `compare`/`render_diff` set it against what a prober saw, so a
failure names the cells that disagree (cyclonus' explainer, prober and comparer split).

Only new connections are modelled: replies of an allowed connection always pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tartan.netpol.model import (
    Cluster,
    Direction,
    IPAddress,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
    Protocol,
    Rule,
)

Endpoint = Pod | IPAddress
Key = tuple[str, str, int, Protocol]  # (from "ns/pod", to "ns/pod", port, protocol)


@dataclass(frozen=True)
class Side:
    """One end's say. `by` names, when allowed while isolated, every rule that allowed it
    ("ns/name ingress rule 0", rules counted from 0 as in the manifest's list), and when
    denied the policies that isolate it ("ns/name ingress"); it is empty when not isolated."""

    isolated: bool
    allowed: bool
    by: tuple[str, ...] = ()


OPEN = Side(isolated=False, allowed=True)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    egress: Side
    ingress: Side

    @property
    def by(self) -> tuple[str, ...]:
        """What decided it: the allowing rules of both sides, or the isolating policies of
        each side that denied it."""
        sides = (self.egress, self.ingress)
        if self.allowed:
            return tuple(name for side in sides for name in side.by)
        return tuple(name for side in sides if not side.allowed for name in side.by)


def verdict(cluster: Cluster, src: Endpoint, dst: Endpoint, port: int,
            protocol: Protocol) -> Verdict:
    """Whether `src` may open a connection to `dst` on `port`/`protocol`."""
    return _Evaluator(cluster).verdict(src, dst, port, protocol)


class _Evaluator:
    """verdict() over one cluster, remembering which pods a peer and a policy select."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._peers: dict[tuple[Peer, str], frozenset[Pod]] = {}
        self._policies = sorted(cluster.policies, key=lambda p: (p.namespace, p.name))

    def verdict(self, src: Endpoint, dst: Endpoint, port: int, protocol: Protocol) -> Verdict:
        egress = self.side(Direction.EGRESS, src, src, dst, port, protocol)
        ingress = self.side(Direction.INGRESS, dst, src, dst, port, protocol)
        return Verdict(egress.allowed and ingress.allowed, egress, ingress)

    def side(self, direction: Direction, at: Endpoint, src: Endpoint, dst: Endpoint,
             port: int, protocol: Protocol) -> Side:
        """What the policies of `at` (src for egress, dst for ingress) say."""
        if not isinstance(at, Pod):
            return OPEN
        isolating = [p for p in self._policies if p.isolates(direction) and p.selects(at)]
        if not isolating:
            return OPEN
        peer = dst if direction is Direction.EGRESS else src
        word = direction.value.lower()
        allowing = tuple(f"{policy.key} {word} rule {i}"
                         for policy in isolating
                         for i, rule in enumerate(policy.rules(direction))
                         if self.rule_matches(rule, policy, peer, dst, port, protocol))
        if allowing:
            return Side(isolated=True, allowed=True, by=allowing)
        return Side(isolated=True, allowed=False,
                    by=tuple(f"{policy.key} {word}" for policy in isolating))

    def rule_matches(self, rule: Rule, policy: NetworkPolicy, peer: Endpoint, dst: Endpoint,
                     port: int, protocol: Protocol) -> bool:
        peers_ok = not rule.peers or any(self.peer_matches(p, policy.namespace, peer)
                                         for p in rule.peers)
        return peers_ok and (not rule.ports or any(port_matches(p, dst, port, protocol)
                                                   for p in rule.ports))

    def peer_matches(self, peer: Peer, namespace: str, other: Endpoint) -> bool:
        """Whether a rule's from/to entry covers the other end of the connection."""
        if peer.ip_block is not None:
            addresses = other.ips if isinstance(other, Pod) else (other,)
            return any(peer.ip_block.contains(address) for address in addresses)
        return isinstance(other, Pod) and other in self.peer_pods(peer, namespace)

    def peer_pods(self, peer: Peer, namespace: str) -> frozenset[Pod]:
        key = (peer, namespace)
        if key not in self._peers:
            self._peers[key] = frozenset(self.cluster.peer_pods(peer, namespace))
        return self._peers[key]


def port_matches(rule_port: PolicyPort, dst: Endpoint, port: int, protocol: Protocol) -> bool:
    """Whether one entry of a rule's ports covers `port`/`protocol` at `dst`. A named port
    is the number the destination pod gives that name; an address has no names."""
    if rule_port.protocol is not protocol:
        return False
    if rule_port.port is None:
        return True
    if isinstance(rule_port.port, str):
        return isinstance(dst, Pod) and dst.named_port(rule_port.port, protocol) == port
    if rule_port.end_port is not None:
        return rule_port.port <= port <= rule_port.end_port
    return rule_port.port == port


# -- the truth table ------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    src: str  # "ns/pod"
    dst: str
    port: int
    protocol: Protocol
    verdict: Verdict

    @property
    def key(self) -> Key:
        return (self.src, self.dst, self.port, self.protocol)

    @property
    def allowed(self) -> bool:
        return self.verdict.allowed


@dataclass(frozen=True)
class Table:
    """A verdict for every (from, to, port, protocol); `pods` orders both axes."""

    pods: tuple[str, ...]
    ports: tuple[int, ...]
    protocols: tuple[Protocol, ...]
    cells: Mapping[Key, Cell] = field(hash=False)

    def cell(self, src: str, dst: str, port: int, protocol: Protocol | str) -> Cell:
        return self.cells[(src, dst, port, Protocol(protocol))]

    def grids(self) -> Iterator[tuple[int, Protocol]]:
        """The (port, protocol) pairs, one grid each, in rendering order."""
        return ((port, protocol) for port in self.ports for protocol in self.protocols)

    def ordered(self) -> Iterator[Cell]:
        for port, protocol in self.grids():
            for src in self.pods:
                for dst in self.pods:
                    yield self.cells[(src, dst, port, protocol)]


def truth_table(cluster: Cluster, ports: Sequence[int] = (80, 81),
                protocols: Sequence[Protocol] = (Protocol.TCP, Protocol.UDP)) -> Table:
    """Every pod to every pod (itself included), hostNetwork pods left out: their traffic
    is the node's."""
    pods = sorted((p for p in cluster.pods if not p.host_network),
                  key=lambda p: (p.namespace, p.name))
    evaluator = _Evaluator(cluster)
    cells: dict[Key, Cell] = {}
    for port in ports:
        for protocol in protocols:
            for src in pods:
                for dst in pods:
                    cell = Cell(src.key, dst.key, port, protocol,
                                evaluator.verdict(src, dst, port, protocol))
                    cells[cell.key] = cell
    return Table(tuple(p.key for p in pods), tuple(ports), tuple(protocols), cells)


def to_json(table: Table) -> dict[str, Any]:
    return {
        "ports": list(table.ports),
        "protocols": [p.value for p in table.protocols],
        "pods": list(table.pods),
        "cells": [{"from": c.src, "to": c.dst, "port": c.port, "protocol": c.protocol.value,
                   "allowed": c.allowed, "by": list(c.verdict.by)} for c in table.ordered()],
    }


# -- rendering and comparing ----------------------------------------------------------

ALLOWED, DENIED = ".", "X"
UNEXPECTED_ALLOW, UNEXPECTED_DENY, UNOBSERVED = "!", "#", "?"


def mark(allowed: bool) -> str:
    return ALLOWED if allowed else DENIED


def _grid(table: Table, port: int, protocol: Protocol, marks: Mapping[Key, str]) -> list[str]:
    """The e2e TruthTable layout: a `-` corner, the tos across, one tab-separated row per
    from."""
    lines = ["\t".join(["-", *table.pods])]
    for src in table.pods:
        row = [marks[(src, dst, port, protocol)] for dst in table.pods]
        lines.append("\t".join([src, *row]))
    return lines


def render(table: Table) -> str:
    """One grid per (port, protocol), each under a `port/PROTOCOL` title."""
    marks = {key: mark(cell.allowed) for key, cell in table.cells.items()}
    blocks = ["\n".join([f"{port}/{protocol.value}", *_grid(table, port, protocol, marks)])
              for port, protocol in table.grids()]
    return "\n\n".join(blocks) + "\n"


def _observations(expected: Table, observed: Mapping[Key, bool]) -> dict[Key, bool]:
    """`observed` with its protocols as Protocol; a key the table lacks is an error (a typo
    in a pod name must not read as agreement)."""
    result: dict[Key, bool] = {}
    for (src, dst, port, protocol), allowed in observed.items():
        key = (src, dst, port, Protocol(protocol))
        if key not in expected.cells:
            raise ValueError(f"observed {src} -> {dst} {port}/{protocol}: not in the table")
        result[key] = allowed
    return result


def compare(expected: Table, observed: Mapping[Key, bool]) -> list[Cell]:
    """The expected cells that the observation contradicts, in table order. Cells that were
    not observed are not compared."""
    seen = _observations(expected, observed)
    return [cell for cell in expected.ordered()
            if cell.key in seen and seen[cell.key] != cell.allowed]


def _diff_mark(cell: Cell, seen: Mapping[Key, bool]) -> str:
    if cell.key not in seen:
        return UNOBSERVED
    if seen[cell.key] == cell.allowed:
        return mark(cell.allowed)
    return UNEXPECTED_ALLOW if seen[cell.key] else UNEXPECTED_DENY


def render_diff(expected: Table, observed: Mapping[Key, bool]) -> str:
    """The expected grids with each disagreement marked (`!` allowed but expected denied,
    `#` denied but expected allowed, `?` not observed), then one line per disagreement with
    what the model says decided it. Grids without any observation are left out."""
    seen = _observations(expected, observed)
    marks = {key: _diff_mark(cell, seen) for key, cell in expected.cells.items()}
    blocks: list[str] = []
    for port, protocol in expected.grids():
        cells = [c for c in expected.cells.values() if (c.port, c.protocol) == (port, protocol)]
        observed_here = [c for c in cells if c.key in seen]
        if not observed_here:
            continue
        differ = sum(seen[c.key] != c.allowed for c in observed_here)
        title = f"{port}/{protocol.value}: {differ} of {len(observed_here)} observed cells differ"
        blocks.append("\n".join([title, *_grid(expected, port, protocol, marks)]))
    differing = compare(expected, observed)
    lines = [_diff_line(cell) for cell in differing] or ["no observed cell differs"]
    legend = (f"{UNEXPECTED_ALLOW} allowed, expected denied; {UNEXPECTED_DENY} denied, "
              f"expected allowed; {UNOBSERVED} not observed")
    return "\n\n".join([*blocks, legend, "\n".join(lines)]) + "\n"


def _diff_line(cell: Cell) -> str:
    by = ", ".join(cell.verdict.by) or "no policy isolates it"
    return (f"{cell.src} -> {cell.dst} {cell.port}/{cell.protocol.value}: expected "
            f"{mark(cell.allowed)}, observed {mark(not cell.allowed)} ({by})")
