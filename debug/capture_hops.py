"""The hops of a pod's path, where `capture` listens: read from the kernel, never guessed.

    pod     the pod's interface, inside its network namespace
    veth    the host end of its veth pair (the pod interface's peer)
    bridge  the bridge that veth is a port of (cni0)
    vxlan   the node's VXLAN device (tartan.<VNI>), when the backend has one
    uplink  the node's link to the other nodes: the VXLAN device's parent, else the device
            of the routes tartand installed (host-gw), else of the route towards the peer
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from pyroute2 import IPRoute

from tartan.backends.routes import PROTO_TARTAN
from tartan.backends.vxlan import DEFAULT_PORT, find_device
from tartan.kernel import addr, link, route
from tartan.kernel.errors import KernelFailure
from tartan.kernel.netns import netlink_in

HOPS = ("pod", "veth", "bridge", "vxlan", "uplink")


class HopError(KernelFailure):
    """A hop that cannot be found (the message says which and why)."""


@dataclass(frozen=True)
class Hop:
    node: str
    name: str  # one of HOPS
    netns: str | None  # the namespace's path (None: the caller's)
    ifname: str
    description: str
    vxlan_port: int = 0  # the tunnel's UDP port, on the hops that carry VXLAN
    pod: str = ""  # set on a second pod's hops of one node, to tell them apart

    @property
    def label(self) -> str:
        """As the pcapng interface is named: `node1/veth` (`node1/veth(x/b)` for the second
        pod of a path within one node)."""
        return f"{self.node}/{self.name}" + (f"({self.pod})" if self.pod else "")


def of_second_pod(hops: list[Hop], pod: str) -> list[Hop]:
    """The pod and veth hops of a path's other pod on the same node, labelled apart."""
    return [dataclasses.replace(h, pod=pod) for h in hops if h.name in ("pod", "veth")]


def parse_hops(text: str) -> tuple[str, ...]:
    wanted = tuple(part.strip() for part in text.split(",") if part.strip())
    if unknown := [name for name in wanted if name not in HOPS]:
        raise ValueError(f"unknown hop {', '.join(unknown)}: use some of {','.join(HOPS)}")
    return wanted or HOPS


def pod_hops(node: str, node_netns: str | None, pod: str, pod_netns: str,
             pod_ifname: str = "eth0", towards: str | None = None,
             wanted: Sequence[str] = HOPS) -> list[Hop]:
    """The hops of pod `pod` (namespace/name) on `node`, in the path's order, limited to
    `wanted`; `towards` (an address) picks the uplink when nothing else tells it."""
    with netlink_in(pod_netns) as ipr:
        eth = link.get(ipr, pod_ifname)
        if eth is None:
            raise HopError(f"{pod} has no interface {pod_ifname} in {pod_netns}")
        peer = link.peer_index(ipr, eth.index)
    found = [Hop(node, "pod", pod_netns, pod_ifname, f"{pod} {pod_ifname}, in its namespace")]
    with netlink_in(node_netns) as ipr:
        if not peer:
            raise HopError(f"{pod}'s {pod_ifname} is not a veth: no host end to listen on")
        veth = link.by_index(ipr, peer)
        found.append(Hop(node, "veth", node_netns, veth.name, f"{pod}'s host end"))
        if veth.master:
            bridge = link.by_index(ipr, veth.master)
            found.append(Hop(node, "bridge", node_netns, bridge.name, f"the bridge of {pod}"))
        found += _node_hops(ipr, node, node_netns, towards)
    return [hop for hop in found if hop.name in wanted]


def node_hops(node: str, node_netns: str | None, towards: str | None = None,
              wanted: Sequence[str] = HOPS) -> list[Hop]:
    """The hops of the node itself (vxlan, uplink): where a pod's packets leave it."""
    with netlink_in(node_netns) as ipr:
        return [hop for hop in _node_hops(ipr, node, node_netns, towards) if hop.name in wanted]


def _node_hops(ipr: IPRoute, node: str, netns: str | None, towards: str | None) -> list[Hop]:
    out: list[Hop] = []
    vxlan = find_device(link.all_links(ipr))
    uplink = 0
    port = 0
    if vxlan is not None:
        info = link.vxlan_info(ipr, vxlan.index)
        port = int(info.get("port") or DEFAULT_PORT)
        out.append(Hop(node, "vxlan", netns, vxlan.name,
                       f"VXLAN device, VNI {info.get('vni')}, port {port}", port))
        uplink = int(info.get("link") or 0) or _holding(ipr, str(info.get("local") or ""))
    if not uplink:
        tagged = route.by_protocol(ipr, PROTO_TARTAN, socket.AF_INET)
        uplink = next((r.oif for r in tagged if r.oif and r.gw), 0)
    if not uplink and towards:
        uplink = route.output_device(ipr, towards)
    if uplink:
        device = link.by_index(ipr, uplink)
        out.append(Hop(node, "uplink", netns, device.name, "the link to the other nodes", port))
    return out


def _holding(ipr: IPRoute, address: str) -> int:
    """The link that has `address` (0: none, or no address given)."""
    if not address:
        return 0
    for li in link.all_links(ipr):
        if any(str(a.ip) == address for a in addr.list_(ipr, li.index)):
            return li.index
    return 0
