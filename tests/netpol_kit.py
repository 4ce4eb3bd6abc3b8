"""A small cluster for policy tests: namespaces x, y, z with pods a and b on node1 and c on
node2 (the upstream e2e model's shape), builders for policies, and the compiled result of
both nodes (tests/netpol_sim.py says what it accepts)."""

from __future__ import annotations

import ipaddress

from tartan.netpol.compiler import Compiled, Options, compile_node
from tartan.netpol.model import (
    Cluster,
    ContainerPort,
    Direction,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Pod,
    Protocol,
    Rule,
)
from tartan.netpol.source import Snapshot

from netpol_sim import Packet, verdict

NODES = {"node1": "198.18.1.11", "node2": "198.18.1.12"}
NAMESPACES = tuple(Namespace(n, {"ns": n}) for n in ("x", "y", "z"))
BOTH = frozenset({Direction.INGRESS, Direction.EGRESS})
EGRESS = frozenset({Direction.EGRESS})


def pod(ns: str, name: str, node: str, last: int, **labels: str) -> Pod:
    ports = (ContainerPort(80, Protocol.TCP, "serve-80-tcp"),
             ContainerPort(81, Protocol.TCP, "serve-81-tcp"),
             ContainerPort(80, Protocol.UDP, "serve-80-udp"))
    octet = {"x": 1, "y": 2, "z": 3}[ns]
    return Pod(ns, name, {"pod": name, **labels}, (ipaddress.ip_address(f"10.244.{octet}.{last}"),),
               node, ports)


# a and b of each namespace on node1, c on node2
PODS = tuple(pod(ns, name, "node1" if name != "c" else "node2", i)
             for ns in ("x", "y", "z") for i, name in enumerate("abc", start=2))


def find(key: str) -> Pod:
    return next(p for p in PODS if p.key == key)


def sel(**labels: str) -> LabelSelector:
    return LabelSelector(tuple(sorted(labels.items())))


def policy(name: str, ns: str = "x", selector: LabelSelector | None = None,
           ingress: tuple[Rule, ...] = (), egress: tuple[Rule, ...] = (),
           types: frozenset[Direction] = frozenset({Direction.INGRESS})) -> NetworkPolicy:
    return NetworkPolicy(ns, name, selector or LabelSelector(), ingress, egress, types)


def compiled(*policies: NetworkPolicy, pods: tuple[Pod, ...] = PODS,
             options: Options | None = None) -> dict[str, Compiled]:
    cluster = Cluster(NAMESPACES, pods, policies)
    return {node: compile_node(cluster, node, [ip, f"10.244.{i}.1"], options or Options())
            for i, (node, ip) in enumerate(NODES.items(), start=10)}


def allowed(nodes: dict[str, Compiled], src: str, dst: str, port: int = 80,
            protocol: str = "tcp", pods: tuple[Pod, ...] = PODS) -> bool:
    by_key = {p.key: p for p in pods}
    a, b = by_key[src], by_key[dst]
    packet = Packet(str(a.ips[0]), str(b.ips[0]), protocol, port)
    if verdict(nodes[a.node], "FORWARD", packet) == "DROP":
        return False
    return a.node == b.node or verdict(nodes[b.node], "FORWARD", packet) == "ACCEPT"


def reachable_from(nodes: dict[str, Compiled], src: str, port: int = 80,
                   protocol: str = "tcp") -> set[str]:
    return {p.key for p in PODS if allowed(nodes, src, p.key, port, protocol)}


ALL = {p.key for p in PODS}


def in_ns(*namespaces: str) -> set[str]:
    return {p.key for p in PODS if p.namespace in namespaces}


# -- for the enforcer on a real datapath (tests/kernel) --------------------------------

# A TCP server on port 80 that accepts and closes, run inside a pod's namespace.
LISTENER = ("import socket\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('0.0.0.0', 80)); s.listen(64); print('ready', flush=True)\n"
            "while True:\n    c,_=s.accept(); c.close()\n")


class StaticSource:
    """A policy source that holds one cluster; tests change it and bump the revision."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster, self.revision = cluster, 1

    def snapshot(self) -> Snapshot:
        return Snapshot(self.cluster, self.revision)

    def wait(self, revision: int, timeout: float) -> int:
        return self.revision
