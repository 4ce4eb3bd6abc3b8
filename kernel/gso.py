"""IPv4 BIG TCP: a link's GSO/GRO size limits for IPv4 (Linux 6.3+).

TCP builds super-packets up to the route device's `gso_ipv4_max_size` (64 KiB by default);
every hop on the path (veth, bridge, forwarding, netfilter) costs per packet, so larger
packets make each byte cheaper. A packet larger than an egress device's limit is cut up in
software, which is far slower than what was gained: raise the limit on a pod only when every
way out of it (bridge, host veth, the node's uplink) takes packets that large.

pyroute2 does not know IFLA_GSO_IPV4_MAX_SIZE and IFLA_GRO_IPV4_MAX_SIZE, so these two
requests are built here with the standard library; everything else about links stays in
link.py. The sockets open in the calling thread's namespace (see netns.entered).
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from tartan.kernel.errors import KernelFailure

RTM_NEWLINK, RTM_GETLINK, NLMSG_ERROR = 16, 18, 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
IFLA_TSO_MAX_SIZE, IFLA_GSO_IPV4_MAX_SIZE, IFLA_GRO_IPV4_MAX_SIZE = 59, 63, 64
LEGACY_MAX = 65536  # what every device takes, and the default
KERNEL_MAX = 524288  # GSO_MAX_SIZE: no device takes more
_NLA_TYPE_MASK = 0x3FFF
_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg


@dataclass(frozen=True)
class Limits:
    gso_ipv4_max: int  # 0 when the kernel does not report it (older than 6.3)
    gro_ipv4_max: int
    tso_max: int  # the most the device can take at all

    @property
    def big(self) -> bool:
        return self.gso_ipv4_max > LEGACY_MAX


def _attr(kind: int, value: int) -> bytes:
    return struct.pack("=HHI", 8, kind, value)


def _request(kind: int, flags: int, index: int, attrs: bytes = b"") -> bytes:
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0) + attrs
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | flags, 1, 0) + body


def _exchange(message: bytes) -> bytes:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(message)
        reply = sock.recv(65536)
    length, kind = struct.unpack_from("=IH", reply)
    if kind == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", reply, _HEADER.size)
        if code:
            raise OSError(-code, os.strerror(-code))
    return reply[:length]


def _attributes(reply: bytes) -> dict[int, bytes]:
    found, offset = {}, _HEADER.size + _IFINFO.size
    while offset + 4 <= len(reply):
        size, kind = struct.unpack_from("=HH", reply, offset)
        if size < 4:
            break
        found[kind & _NLA_TYPE_MASK] = reply[offset + 4:offset + size]
        offset += (size + 3) & ~3
    return found


def _u32(attrs: dict[int, bytes], kind: int) -> int:
    value = attrs.get(kind)
    return struct.unpack("=I", value[:4])[0] if value and len(value) >= 4 else 0


def limits(index: int) -> Limits:
    try:
        attrs = _attributes(_exchange(_request(RTM_GETLINK, 0, index)))
    except OSError as exc:
        raise KernelFailure(f"cannot read GSO limits of link {index}: {exc.strerror}") from None
    return Limits(_u32(attrs, IFLA_GSO_IPV4_MAX_SIZE), _u32(attrs, IFLA_GRO_IPV4_MAX_SIZE),
                  _u32(attrs, IFLA_TSO_MAX_SIZE))


def set_ipv4_max(index: int, size: int) -> int:
    """Let link `index` send and build IPv4 packets up to `size` bytes (capped at what the
    device can take); the size set, or 0 when this kernel has no IPv4 BIG TCP."""
    have = limits(index)
    if not have.gso_ipv4_max:
        return 0
    size = min(size, have.tso_max) if have.tso_max else size
    if have.gso_ipv4_max == size and have.gro_ipv4_max == size:
        return size
    attrs = _attr(IFLA_GSO_IPV4_MAX_SIZE, size) + _attr(IFLA_GRO_IPV4_MAX_SIZE, size)
    try:
        _exchange(_request(RTM_NEWLINK, NLM_F_ACK, index, attrs))
    except OSError as exc:
        raise KernelFailure(
            f"cannot set gso_ipv4_max_size {size} on link {index}: {exc.strerror}") from None
    return size
