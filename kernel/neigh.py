"""Neighbour (ARP) entries and VXLAN forwarding-database entries."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tartan.kernel.errors import KernelFailure

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7


@dataclass(frozen=True)
class Neighbour:
    ip: str
    mac: str


@dataclass(frozen=True)
class FdbEntry:
    mac: str
    dst: str


def permanent_neighbours(ipr: IPRoute, index: int) -> list[Neighbour]:
    out = []
    for msg in ipr.get_neighbours(family=socket.AF_INET, ifindex=index):
        if msg["state"] & NUD_PERMANENT and msg.get("NDA_LLADDR"):
            out.append(Neighbour(msg.get("NDA_DST"), msg.get("NDA_LLADDR").lower()))
    return out


def replace_neighbour(ipr: IPRoute, index: int, entry: Neighbour) -> None:
    try:
        ipr.neigh("replace", ifindex=index, dst=entry.ip, lladdr=entry.mac, state=NUD_PERMANENT,
                  family=socket.AF_INET)
    except NetlinkError as exc:
        raise KernelFailure(f"cannot set neighbour {entry.ip} -> {entry.mac}: {exc}") from None


def delete_neighbour(ipr: IPRoute, index: int, entry: Neighbour) -> None:
    try:
        ipr.neigh("del", ifindex=index, dst=entry.ip, lladdr=entry.mac, family=socket.AF_INET)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ESRCH):
            raise KernelFailure(f"cannot delete neighbour {entry.ip}: {exc}") from None


def remote_fdb(ipr: IPRoute, index: int) -> list[FdbEntry]:
    """The device's own (self) entries that point a MAC at a remote VTEP."""
    out = []
    for msg in ipr.get_neighbours(family=AF_BRIDGE, ifindex=index):
        dst, mac = msg.get("NDA_DST"), msg.get("NDA_LLADDR")
        if dst and mac and msg["flags"] & NTF_SELF and mac != "00:00:00:00:00:00":
            out.append(FdbEntry(mac.lower(), dst))
    return out


def replace_fdb(ipr: IPRoute, index: int, entry: FdbEntry) -> None:
    try:
        ipr.fdb("replace", ifindex=index, lladdr=entry.mac, dst=entry.dst, state=NUD_PERMANENT,
                flags=NTF_SELF)
    except NetlinkError as exc:
        raise KernelFailure(f"cannot set FDB {entry.mac} -> {entry.dst}: {exc}") from None


def delete_fdb(ipr: IPRoute, index: int, entry: FdbEntry) -> None:
    try:
        ipr.fdb("del", ifindex=index, lladdr=entry.mac, dst=entry.dst, flags=NTF_SELF)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ESRCH):
            raise KernelFailure(f"cannot delete FDB {entry.mac} -> {entry.dst}: {exc}") from None
