"""Why a traced probe vanished when no rule dropped it: what the kernel of the node where it
was last seen holds for it, looked at in the path's order.

    no route      the source node has no route of tartand's to the destination's subnet
    MTU           the probe is bigger than the next hop carries (with DF set, nothing
                  fragments it: the kernel drops it and answers "fragmentation needed")
    neighbour     the route's next hop has no link-layer address (the peer's VTEP entry is
                  missing, or the peer does not answer ARP)
    FDB           the VXLAN device knows the peer's VTEP MAC but not the node it lives on
    rp_filter     strict reverse-path filtering on the device the probe arrived by, while the
                  route back to its source leaves by another

Each explainer returns the cause in one sentence, or "" when its part of the kernel is fine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tartan.backends.routes import PROTO_TARTAN
from tartan.debug.capture_hops import Hop
from tartan.kernel import addr, link, neigh, route
from tartan.kernel.netns import entered, netlink_in

VXLAN_OVERHEAD = 50  # outer Ethernet is not counted in the MTU: IPv4 20 + UDP 8 + VXLAN 8 + 14
NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x80  # reachable, stale, delay, probe, permanent


@dataclass(frozen=True)
class Vanishing:
    """Where the probe was last seen, and the hop it should have reached next."""

    last: Hop | None  # None: not even the source pod's interface saw it
    last_direction: str
    missing: Hop
    src_ip: str
    dst_ip: str
    length: int  # of the probe's IP packet
    tunnelled: bool  # the path has a VXLAN hop
    src_node: Hop | None  # a hop of the source's node (its namespace), None: pod hops only


def explain(where: Vanishing) -> str:
    """The first cause the kernel shows, or ""."""
    src_node = where.src_node.node if where.src_node else ""
    for explainer in (_no_route, _too_big, _no_link_layer, _reverse_path):
        cause = explainer(where, src_node)
        if cause:
            return cause
    return ""


def _no_route(where: Vanishing, src_node: str) -> str:
    """Without a route of tartand's to the destination's subnet the probe went by the default
    route (if any), unencapsulated, and the underlay could not deliver it."""
    node = where.src_node
    left = where.last is not None and where.last.node == src_node
    if node is None or not (left or where.missing.node == src_node):
        return ""
    address = ipaddress.ip_address(where.dst_ip)
    with netlink_in(node.netns) as ipr:
        tartans = route.by_protocol(ipr, PROTO_TARTAN, socket.AF_INET)
        routed = route.output_device(ipr, where.dst_ip)
        bridged = any(address in ipaddress.ip_network(f"{a.ip}/{a.network.prefixlen}",
                                                      strict=False)
                      for li in link.all_links(ipr) if li.kind == "bridge"
                      for a in addr.list_(ipr, li.index, 4))
    if bridged or any(address in spec.network for spec in tartans):
        return ""
    how = "it left by the default route, unencapsulated" if routed else "nothing routes it"
    return (f"{src_node} has no route to {where.dst_ip}'s pod subnet ({how}): its tartand did "
            f"not program the peer (is it running? `tartanctl lab doctor {src_node}`)")


def _too_big(where: Vanishing, src_node: str) -> str:
    hop = where.missing
    with netlink_in(hop.netns) as ipr:
        device = link.get(ipr, hop.ifname)
    if device is None:
        return ""
    inside = hop.name == "uplink" and where.tunnelled
    limit = device.mtu - (VXLAN_OVERHEAD if inside else 0)
    if where.length <= limit:
        return ""
    if hop.name == "pod":
        return (f"MTU: the probe is {where.length} bytes with DF set and the pod's {hop.ifname} "
                f"has MTU {device.mtu}: its socket refuses it (message too long)")
    carries = (f"{hop.ifname} has MTU {device.mtu}, so VXLAN carries at most {limit}"
               if inside else f"{hop.ifname} has MTU {device.mtu}")
    return (f"MTU: the probe is {where.length} bytes with DF set and {hop.label} ({carries}): "
            "the kernel drops it and answers \"fragmentation needed\" (`tartanctl doctor` "
            "checks the MTUs along the path)")


def _no_link_layer(where: Vanishing, src_node: str) -> str:
    """The source node routes the probe to a next hop it cannot address: on the VXLAN device
    the peer's VTEP neighbour and FDB entries (written by tartand, no learning), on the
    uplink (host-gw) the peer node's ARP entry."""
    hop = where.missing
    if hop.node != src_node or hop.name not in ("vxlan", "uplink"):
        return ""
    with netlink_in(hop.netns) as ipr:
        gateway, oif = _next_hop(ipr, where.dst_ip)
        if not gateway or not oif:
            return ""
        device = link.by_index(ipr, oif)
        if hop.name == "uplink" and device.kind == "vxlan":
            return _fdb_gap(ipr, device, gateway)
        if hop.name == "vxlan" and device.kind != "vxlan":
            return ""
        entry = _neighbour(ipr, oif, gateway)
    if entry is None or not entry[1] & NUD_USABLE:
        if device.kind == "vxlan":
            return (f"{src_node} has no neighbour entry for the peer's VTEP {gateway} on "
                    f"{device.name}: tartand writes it from the peer's lease (VtepMAC); "
                    "without it the kernel asks ARP on a device that floods nowhere")
        return (f"{src_node} has no link-layer address for the next hop {gateway} on "
                f"{device.name}: the peer node does not answer ARP (is it up, on this "
                "segment?)")
    return ""


def _fdb_gap(ipr: IPRoute, device: link.Link, gateway: str) -> str:
    entry = _neighbour(ipr, device.index, gateway)
    if entry is None or not entry[0]:
        return ""
    mac = entry[0]
    if any(fdb.mac == mac for fdb in neigh.remote_fdb(ipr, device.index)):
        return ""
    return (f"{device.name} has no FDB entry for the peer's VTEP MAC {mac} ({gateway}): the "
            "device does not know which node's address to send the tunnel packet to, and "
            "drops it (tartand writes it from the peer's lease)")


def _reverse_path(where: Vanishing, src_node: str) -> str:
    """A node drops what arrives on a device when strict rp_filter (1) is on for it and the
    route back to the source leaves by another device (the kernel uses the larger of `all`
    and the device's own value)."""
    last = where.last
    if last is None or where.last_direction != "in" or last.name not in ("vxlan", "uplink"):
        return ""
    if last.node == src_node:
        return ""
    strict = _rp_filter(last.netns, last.ifname)
    if strict != 1:
        return ""
    with netlink_in(last.netns) as ipr:
        arrived = link.get(ipr, last.ifname)
        back = route.output_device(ipr, where.src_ip)
        back_name = link.by_index(ipr, back).name if back else ""
    if arrived is None or back == arrived.index:
        return ""
    leaves = f"leaves by {back_name}" if back_name else "does not exist"
    return (f"strict rp_filter on {last.node} {last.ifname} (net.ipv4.conf.{last.ifname}."
            f"rp_filter or .all is 1): the route back to {where.src_ip} {leaves}, so the "
            f"kernel drops what arrives on {last.ifname}; set it to 2 (loose) or restore the "
            "route")


def _next_hop(ipr: IPRoute, address: str) -> tuple[str, int]:
    try:
        msgs = ipr.route("get", dst=address)
    except NetlinkError:
        return "", 0
    if not msgs:
        return "", 0
    return str(msgs[0].get("RTA_GATEWAY") or ""), int(msgs[0].get("RTA_OIF") or 0)


def _neighbour(ipr: IPRoute, index: int, ip: str) -> tuple[str, int] | None:
    """(link-layer address, NUD state) of `ip` on the device, or None."""
    for msg in ipr.get_neighbours(family=socket.AF_INET, ifindex=index):
        if msg.get("NDA_DST") == ip:
            return str(msg.get("NDA_LLADDR") or "").lower(), int(msg["state"])
    return None


def _rp_filter(netns: str | None, ifname: str) -> int:
    def read(name: str) -> int:
        try:
            return int(Path(f"/proc/sys/net/ipv4/conf/{name}/rp_filter").read_text())
        except (OSError, ValueError):
            return 0

    with entered(netns) if netns else contextlib.nullcontext():
        return max(read("all"), read(ifname))


def vanishing(steps: Sequence[tuple[str, str, bool]], hops: dict[str, Hop], src_ip: str,
              dst_ip: str, length: int) -> Vanishing | None:
    """From the path's steps (label, direction, seen): the last hop that saw the probe and
    the one after it."""
    last = max((i for i, (_, _, seen) in enumerate(steps) if seen), default=-1)
    if last + 1 >= len(steps) or steps[last + 1][0] not in hops:
        return None
    before = steps[last] if last >= 0 else None
    src_node = hops[steps[0][0]].node
    return Vanishing(hops.get(before[0]) if before else None, before[1] if before else "",
                     hops[steps[last + 1][0]], src_ip, dst_ip, length,
                     any(h.name == "vxlan" for h in hops.values()),
                     next((h for h in hops.values() if h.node == src_node and h.name != "pod"),
                          None))
