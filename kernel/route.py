"""Routes."""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tartan.kernel.errors import KernelFailure

RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RTNH_F_ONLINK = 4


@dataclass(frozen=True)
class RouteSpec:
    dst: str  # CIDR; "0.0.0.0/0" or "::/0" for the default route
    gw: str = ""
    oif: int = 0
    table: int = RT_TABLE_MAIN
    onlink: bool = False
    proto: int = RTPROT_BOOT

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
        attrs["flags"] = RTNH_F_ONLINK
    if spec.proto != RTPROT_BOOT:
        attrs["proto"] = spec.proto
    return attrs


def _failure(verb: str, spec: RouteSpec, exc: NetlinkError) -> KernelFailure:
    via = f" via {spec.gw}" if spec.gw else ""
    return KernelFailure(f"cannot {verb} route {spec.dst}{via}: {exc}")


def replace(ipr: IPRoute, spec: RouteSpec) -> None:
    try:
        ipr.route("replace", **_attrs(spec))
    except NetlinkError as exc:
        raise _failure("set", spec, exc) from None


def delete(ipr: IPRoute, spec: RouteSpec) -> None:
    try:
        ipr.route("del", **_attrs(spec))
    except NetlinkError as exc:
        if exc.code not in (errno.ESRCH, errno.ENOENT):
            raise KernelFailure(f"cannot delete route {spec.dst}: {exc}") from None


def by_protocol(ipr: IPRoute, proto: int, family: int = socket.AF_INET,
                table: int = RT_TABLE_MAIN) -> list[RouteSpec]:
    """Routes tagged with `proto`: the ones a program installed and so may remove."""
    out = []
    for msg in ipr.get_routes(family=family, table=table, proto=proto):
        dst = f"{msg.get('RTA_DST') or ('0.0.0.0' if family == socket.AF_INET else '::')}"
        out.append(RouteSpec(dst=f"{dst}/{msg['dst_len']}", gw=msg.get("RTA_GATEWAY") or "",
                             oif=msg.get("RTA_OIF") or 0, table=table,
                             onlink=bool(msg["flags"] & RTNH_F_ONLINK), proto=proto))
    return out


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


def output_device(ipr: IPRoute, address: str) -> int:
    """The index of the link the kernel would send a packet to `address` out of (0: no
    route)."""
    try:
        msgs = ipr.route("get", dst=address)
    except NetlinkError as exc:
        if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return 0
        raise KernelFailure(f"cannot look up the route to {address}: {exc}") from None
    return int(msgs[0].get("RTA_OIF") or 0) if msgs else 0
