"""Find this node's external interface and public IP (flannel's --iface / --public-ip)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket

from pyroute2 import IPRoute

from tartan.backends.registry import NodeInfo
from tartan.kernel import addr, gso, link


class NodeError(ValueError):
    pass


def _default_route_iface(ipr: IPRoute) -> int:
    for msg in ipr.get_routes(family=socket.AF_INET, table=254):
        if msg["dst_len"] == 0 and msg.get("RTA_OIF"):
            return msg.get("RTA_OIF")
    raise NodeError("no default route to pick the external interface from: pass --iface")


def _pod_traffic_gso_max(ipr: IPRoute, iface: int) -> int:
    """The IPv4 GSO limit pod traffic meets on its way out: the smaller of --iface's (peers)
    and the default route's device (masqueraded traffic), when they differ."""
    devices = {iface}
    with contextlib.suppress(NodeError):
        devices.add(_default_route_iface(ipr))
    return min(gso.limits(index).gso_ipv4_max for index in devices)


def discover(iface: str | None, public_ip: str | None) -> NodeInfo:
    with IPRoute() as ipr:
        found = link.get(ipr, iface) if iface else link.by_index(ipr, _default_route_iface(ipr))
        if found is None:
            raise NodeError(f"--iface {iface}: no such interface")
        addresses = [a for a in addr.list_(ipr, found.index, 4)
                     if isinstance(a, ipaddress.IPv4Interface)]
        gso_max = _pod_traffic_gso_max(ipr, found.index)
    if not addresses:
        raise NodeError(f"interface {found.name} has no IPv4 address")
    if public_ip is None:
        public_ip = str(addresses[0].ip)
    else:
        ipaddress.ip_address(public_ip)
    return NodeInfo(iface=found.name, iface_index=found.index, iface_mtu=found.mtu,
                    public_ip=public_ip, segments=tuple(a.network for a in addresses),
                    iface_gso_max=gso_max)
