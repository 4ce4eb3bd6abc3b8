"""Routes."""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tartan.cni.errors import KernelFailure

RT_TABLE_MAIN = 254


@dataclass(frozen=True)
class RouteSpec:
    dst: str  # CIDR; "0.0.0.0/0" or "::/0" for the default route
    gw: str = ""
    oif: int = 0
    table: int = RT_TABLE_MAIN
    onlink: bool = False

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.dst, strict=False)

    @property
    def family(self) -> int:
        return socket.AF_INET if self.network.version == 4 else socket.AF_INET6


def _attrs(spec: RouteSpec) -> dict:
    net = spec.network
    attrs: dict = {"dst": str(net.network_address), "dst_len": net.prefixlen,
                   "family": spec.family, "table": spec.table}
    if spec.gw:
        attrs["gateway"] = spec.gw
    if spec.oif:
        attrs["oif"] = spec.oif
    if spec.onlink:
        attrs["flags"] = 4  # RTNH_F_ONLINK
    return attrs


def add(ipr: IPRoute, spec: RouteSpec) -> None:
    try:
        ipr.route("add", **_attrs(spec))
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return
        via = f" via {spec.gw}" if spec.gw else ""
        raise KernelFailure(f"cannot add route {spec.dst}{via}: {exc}") from None


def exists(ipr: IPRoute, spec: RouteSpec) -> bool:
    net = spec.network
    for msg in ipr.get_routes(family=spec.family, table=spec.table):
        if msg["dst_len"] != net.prefixlen:
            continue
        dst = msg.get("RTA_DST") or str(net.network_address if net.prefixlen == 0 else "")
        if dst != str(net.network_address):
            continue
        if spec.gw and msg.get("RTA_GATEWAY") != spec.gw:
            continue
        return True
    return False
