"""Addresses on links."""

from __future__ import annotations

import errno
import ipaddress
import socket
from ipaddress import IPv4Interface, IPv6Interface

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tartan.kernel.errors import KernelFailure

IFA_F_NODAD = 0x02
# An address with its prefix, as the kernel assigns it to a link (an ifaddr).
IfAddr = IPv4Interface | IPv6Interface


def family_of(address: IfAddr) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def list_(ipr: IPRoute, index: int, version: int | None = None) -> list[IfAddr]:
    """Global addresses on link `index` (link-local IPv6 left out)."""
    family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(version or 0, socket.AF_UNSPEC)
    out: list[IfAddr] = []
    for msg in ipr.get_addr(index=index, family=family):
        found = ipaddress.ip_interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
        if not (found.version == 6 and found.ip.is_link_local):
            out.append(found)
    return out


def add(ipr: IPRoute, index: int, address: IfAddr) -> None:
    """Add `address`; IPv6 without duplicate detection so it is usable at once."""
    attrs = {"index": index, "address": str(address.ip), "prefixlen": address.network.prefixlen,
             "family": family_of(address)}
    if address.version == 4:
        attrs["broadcast"] = str(address.network.broadcast_address)
    else:
        attrs["flags"] = IFA_F_NODAD
    try:
        ipr.addr("add", **attrs)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return
        raise KernelFailure(f"cannot add address {address} to link {index}: {exc}") from None


def delete(ipr: IPRoute, index: int, address: IfAddr) -> None:
    try:
        ipr.addr("del", index=index, address=str(address.ip),
                 prefixlen=address.network.prefixlen, family=family_of(address))
    except NetlinkError as exc:
        if exc.code in (errno.EADDRNOTAVAIL, errno.ENODEV):
            return
        raise KernelFailure(f"cannot remove address {address} from link {index}: {exc}") from None
