"""The lab's address plan and names: pure functions, no kernel, no files.

Underlay: a router namespace with one bridge per L2 segment; segment k is 198.18.k.0/24
(RFC 2544 benchmarking space, which no real network uses), the router is .1, node i is
.10+i on segment ((i-1) % segments) + 1, so nodes alternate segments. The cluster network
is 10.244.0.0/16 with /24 node subnets, as flannel's default manifest.

Names: the lab's network namespaces are `<lab>-router`, `<lab>-node<i>` and
`<lab>-node<i>-pod<k>`; lab names have no '-', so one lab's names never match another's.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from tartan.backends.agent import DEFAULT_HTTP_ADDR
from tartan.ipam.lease import DEFAULT_ETCD_PREFIX

LAB_ROOT = Path("/run/tartan-lab")
DEFAULT_NAME = "tlab"
CLUSTER_NETWORK = "10.244.0.0/16"
SUBNET_LEN = 24
UNDERLAY_BASE = "198.18"
MAX_SEGMENTS = 8
MAX_NODES = 200
ETCD_PORT = 2379
ETCD_PEER_PORT = 2380
AGENT_HTTP = DEFAULT_HTTP_ADDR  # each node's tartand, in the node's own namespace
ETCD_PREFIX = DEFAULT_ETCD_PREFIX
CNI_NETWORK = "tartan-lab"

BACKENDS: dict[str, dict[str, object]] = {
    "vxlan": {"Type": "vxlan"},
    "host-gw": {"Type": "host-gw"},
    "directrouting": {"Type": "vxlan", "DirectRouting": True},
}
STORES = ("sqlite", "etcd")

_LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_NODE_NAME = re.compile(r"^node([1-9][0-9]{0,2})$")


class PlanError(ValueError):
    """A lab option that cannot work; the message is the one line the user sees."""


def check_name(name: str) -> str:
    if not _LAB_NAME.match(name):
        raise PlanError(f"lab name {name!r} is invalid: use 1-12 lowercase letters and digits, "
                        "starting with a letter (no '-')")
    return name


def node_index(node: str) -> int:
    match = _NODE_NAME.match(node)
    if not match:
        raise PlanError(f"node name {node!r} is invalid: nodes are named node1, node2, ...")
    return int(match.group(1))


def default_segments(backend: str) -> int:
    """host-gw needs every node on one L2 segment; the others get two kinds of peers."""
    return 1 if backend == "host-gw" else 2


def segment_network(segment: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"{UNDERLAY_BASE}.{segment}.0/24")


def gateway(segment: int) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(f"{UNDERLAY_BASE}.{segment}.1/24")


def segment_of(index: int, segments: int) -> int:
    return (index - 1) % segments + 1


@dataclass(frozen=True)
class NodePlan:
    lab: str
    index: int
    segment: int

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def netns(self) -> str:
        return f"{self.lab}-{self.name}"

    @property
    def address(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{UNDERLAY_BASE}.{self.segment}.{10 + self.index}/24")

    @property
    def ip(self) -> str:
        return str(self.address.ip)

    @property
    def gateway(self) -> str:
        return str(gateway(self.segment).ip)

    @property
    def router_port(self) -> str:
        """The router's end of the node's veth (the node's end is eth0)."""
        return f"n{self.index}"

    def pod_netns(self, k: int) -> str:
        return f"{self.netns}-pod{k}"


def node_plan(lab: str, index: int, segments: int) -> NodePlan:
    if not 1 <= index <= MAX_NODES:
        raise PlanError(f"node{index}: a lab has at most {MAX_NODES} nodes")
    return NodePlan(lab, index, segment_of(index, segments))


def router_netns(lab: str) -> str:
    return f"{lab}-router"


def bridge_name(segment: int) -> str:
    return f"seg{segment}"


def etcd_endpoint() -> str:
    return f"http://{gateway(1).ip}:{ETCD_PORT}"


def net_conf(backend: str) -> dict:
    """flannel's net-conf.json for the backend."""
    return {"Network": CLUSTER_NETWORK, "SubnetLen": SUBNET_LEN, "Backend": dict(BACKENDS[backend])}


def lab_ranges(segments: int) -> list[ipaddress.IPv4Network]:
    """Every range the lab uses: the segments and the cluster network."""
    return [segment_network(s) for s in range(1, segments + 1)] + [
        ipaddress.IPv4Network(CLUSTER_NETWORK)]


def overlaps(ours: list[ipaddress.IPv4Network], host_routes: list[dict]) -> list[str]:
    """Describe each host route (from `ip -j route show table all`) that overlaps a range."""
    found = []
    for route in host_routes:
        dst = route.get("dst", "default")
        if dst == "default" or ":" in dst:
            continue
        theirs = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        found += [f"{net} overlaps the host's route to {dst} (dev {route.get('dev', '?')})"
                  for net in ours if net.overlaps(theirs)]
    return found


def validate(backend: str, store: str, nodes: int, segments: int, pods: int) -> None:
    if backend not in BACKENDS:
        raise PlanError(f"backend {backend!r} is unknown: use {', '.join(BACKENDS)}")
    if store not in STORES:
        raise PlanError(f"store {store!r} is unknown: use {' or '.join(STORES)}")
    if not 1 <= nodes <= MAX_NODES:
        raise PlanError(f"--nodes {nodes}: use 1..{MAX_NODES}")
    if not 1 <= segments <= MAX_SEGMENTS:
        raise PlanError(f"--segments {segments}: use 1..{MAX_SEGMENTS}")
    if not 0 <= pods <= 20:
        raise PlanError(f"--pods-per-node {pods}: use 0..20")
