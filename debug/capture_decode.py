"""What a captured frame is, in one line, and which frame a filter looks at (scapy decodes).

A frame on a hop that carries VXLAN (UDP to the tunnel's port) is decoded twice: the outer
addresses and the VNI, then the pod's own frame inside, which is what the line describes
and what a capture filter is applied to.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import ARP, Ether  # noqa: E402
from scapy.layers.vxlan import VXLAN  # noqa: E402
from scapy.packet import Packet  # noqa: E402

ICMP_TYPES = {0: "echo-reply", 3: "unreachable", 8: "echo-request", 11: "time-exceeded"}
TCP_FLAGS = "FSRPAUEC"


def internet_checksum(data: bytes) -> int:
    """RFC 1071's sum, complemented: 0 over a packet whose checksum field is right."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_checksum_bad(ip_packet: bytes) -> bool:
    """Whether an IPv4 UDP datagram carries a checksum (not 0) that does not add up."""
    header = (ip_packet[0] & 0x0F) * 4
    udp = ip_packet[header:]
    if len(udp) < 8 or udp[6:8] == b"\x00\x00":
        return False
    length = struct.unpack("!H", udp[4:6])[0]
    pseudo = ip_packet[12:20] + struct.pack("!BBH", 0, 17, length)
    return internet_checksum(pseudo + udp[:length]) != 0


@dataclass(frozen=True)
class Decoded:
    inner: bytes  # the pod's frame: what the filter sees
    flow: str  # the inner frame in a few words
    tunnel: str = ""  # "192.168.50.1 > 192.168.50.2 vni 1", on a VXLAN frame

    def text(self) -> str:
        return f"{self.tunnel} | {self.flow}" if self.tunnel else self.flow


def inner_frame(data: bytes, vxlan_port: int = 0) -> bytes:
    """The pod's frame, without scapy (every packet goes through here, so it is cheap):
    inside VXLAN (IPv4, UDP to `vxlan_port`), else the frame as it is."""
    if vxlan_port and len(data) >= 50 and data[12:14] == b"\x08\x00" and data[23] == 17:
        udp = 14 + (data[14] & 0x0F) * 4
        if len(data) >= udp + 16 and int.from_bytes(data[udp + 2:udp + 4], "big") == vxlan_port:
            return data[udp + 16:]
    return data


def decode(data: bytes, vxlan_port: int = 0) -> Decoded:
    frame = Ether(data)
    if vxlan_port and UDP in frame and frame[UDP].dport == vxlan_port and IP in frame:
        header = bytes(frame[UDP].payload)
        if len(header) >= 8:
            vx = VXLAN(header)
            inner = bytes(vx.payload)
            outer = frame[IP]
            return Decoded(inner, flow(Ether(inner)),
                           f"{outer.src} > {outer.dst} vxlan vni {vx.vni}")
    return Decoded(data, flow(frame))


def flow(frame: Packet) -> str:
    """`10.244.1.2 > 10.244.2.3 ICMP echo-request id 7 seq 1, 84 bytes` and the like."""
    if ARP in frame:
        arp = frame[ARP]
        what = "who-has" if arp.op == 1 else "is-at" if arp.op == 2 else f"op {arp.op}"
        return f"ARP {what} {arp.pdst} tell {arp.psrc}"
    for layer in (IP, IPv6):
        if layer in frame:
            ip = frame[layer]
            size = ip.len if layer is IP else ip.plen + 40
            return f"{_l4(ip, frame)}, {size} bytes"
    return f"{frame.src} > {frame.dst} ethertype 0x{frame.type:04x}, {len(frame)} bytes"


def _l4(ip: Packet, frame: Packet) -> str:
    if TCP in frame:
        tcp = frame[TCP]
        flags = "".join(c for i, c in enumerate(TCP_FLAGS) if int(tcp.flags) & (1 << i))
        return f"{ip.src}:{tcp.sport} > {ip.dst}:{tcp.dport} TCP [{flags or '.'}]"
    if UDP in frame:
        udp = frame[UDP]
        return f"{ip.src}:{udp.sport} > {ip.dst}:{udp.dport} UDP"
    if ICMP in frame:
        icmp = frame[ICMP]
        name = ICMP_TYPES.get(int(icmp.type), f"type {icmp.type}")
        extra = f" id {icmp.id} seq {icmp.seq}" if icmp.type in (0, 8) else ""
        return f"{ip.src} > {ip.dst} ICMP {name}{extra}"
    proto = ip.proto if hasattr(ip, "proto") else ip.nh
    return f"{ip.src} > {ip.dst} proto {proto}"
