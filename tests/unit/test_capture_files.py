"""The capture's file and filter: the pcapng writer read back by tcpdump and tshark, and the
user-space BPF interpreter against tcpdump's own matching of the same frames."""

from __future__ import annotations

import ipaddress
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tartan.debug import bpf, pcapng

MAC_A, MAC_B = bytes.fromhex("0a580af40102"), bytes.fromhex("0a580af40203")


def checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, ttl, proto,
                         0, ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def ether(payload: bytes, ethertype: int = 0x0800) -> bytes:
    return MAC_B + MAC_A + struct.pack("!H", ethertype) + payload


def icmp(src: str, dst: str) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"ping"
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return ether(ipv4(src, dst, 1, body))


def udp(src: str, dst: str, sport: int, dport: int, data: bytes = b"x") -> bytes:
    return ether(ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(data), 0)
                      + data))


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = 0x02) -> bytes:
    return ether(ipv4(src, dst, 6, struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags,
                                               64240, 0, 0)))


def arp() -> bytes:
    return ether(struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, MAC_A, bytes(4),
                             bytes(6), bytes(4)), 0x0806)


FRAMES = [icmp("10.244.1.2", "10.244.2.3"), udp("10.244.1.2", "10.96.0.10", 40000, 53),
          tcp("10.244.1.2", "10.244.2.3", 41000, 80), tcp("10.244.2.3", "10.244.1.2", 80, 41000,
                                                          0x12),
          udp("192.168.50.1", "192.168.50.2", 51000, 8472, b"\x08" + bytes(7)), arp(),
          b"\x01\x02"]  # a runt: every load beyond it rejects
FILTERS = ["", "icmp", "udp port 53", "tcp dst port 80", "host 10.244.2.3", "arp", "not icmp",
           "net 10.244.0.0/16 and tcp", "tcp[tcpflags] & tcp-syn != 0 and not "
           "tcp[tcpflags] & tcp-ack != 0", "ip[8] = 64", "len > 60", "ip6", "udp and ip[6:2] "
           "& 0x1fff = 0", "portrange 50000-52000"]

needs_tcpdump = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump missing")


def write(path: Path, frames=FRAMES) -> None:
    with open(path, "wb") as stream:
        writer = pcapng.Writer(stream)
        pod = writer.interface("node1/pod", "x/a eth0 in its netns")
        veth = writer.interface("node1/veth", "x/a's host veth")
        for index, frame in enumerate(frames):
            writer.packet(pod if index % 2 else veth, 1_764_547_200_000_000_000 + index * 1000,
                          frame, outbound=index % 2 == 0, comment=f"frame {index}")
        writer.flush()


@needs_tcpdump
@pytest.mark.parametrize("expression", FILTERS)
def test_the_interpreter_accepts_exactly_what_tcpdump_does(tmp_path: Path, expression: str):
    program = bpf.compile_filter(expression)
    path = tmp_path / "frames.pcapng"
    write(path)
    ours = [index for index, frame in enumerate(FRAMES) if bpf.matches(program, frame)]
    read = subprocess.run(["tcpdump", "-r", str(path), "-nn", "-tt", *expression.split()],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    stamps = [int(round((float(line.split()[0]) - 1_764_547_200) * 1e6)) for line in read
              if re.match(r"\d+\.\d+ ", line)]  # one line per frame (the index in us)
    assert ours == stamps, (expression, read)


@needs_tcpdump
def test_a_bad_filter_is_one_line_naming_it():
    with pytest.raises(bpf.FilterError, match=r"bad capture filter 'tcp prot 80': .*"):
        bpf.compile_filter("tcp prot 80")


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark missing")
def test_tshark_reads_the_hops_names_directions_and_comments(tmp_path: Path):
    path = tmp_path / "frames.pcapng"
    write(path, FRAMES[:3])
    fields = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.interface_name",
         "-e", "frame.interface_description", "-e", "frame.comment", "-e", "frame.time_epoch",
         "-e", "ip.dst"], capture_output=True, text=True, check=True).stdout.splitlines()
    rows = [line.split("\t") for line in fields]
    assert [row[0] for row in rows] == ["node1/veth", "node1/pod", "node1/veth"]
    assert rows[1][1] == "x/a eth0 in its netns" and rows[2][2] == "frame 2"
    assert rows[1][3].startswith("1764547200.000001000")
    assert [row[4] for row in rows] == ["10.244.2.3", "10.96.0.10", "10.244.2.3"]


# -- decoding and the order of the hops ---------------------------------------------------


def vxlan(frame: bytes, vni: int = 1, port: int = 8472) -> bytes:
    header = struct.pack("!II", 0x08000000, vni << 8)
    return udp("192.168.50.1", "192.168.50.2", 51000, port, header + frame)


def test_a_vxlan_frame_is_decoded_twice_and_the_filter_sees_the_inner_one():
    from tartan.debug.capture_decode import decode, inner_frame

    inner = icmp("10.244.1.2", "10.244.2.3")
    decoded = decode(vxlan(inner, vni=7), vxlan_port=8472)
    assert decoded.inner == inner == inner_frame(vxlan(inner, vni=7), 8472)
    assert inner_frame(vxlan(inner), 4789) == vxlan(inner) and inner_frame(inner, 8472) == inner
    assert decoded.text() == ("192.168.50.1 > 192.168.50.2 vxlan vni 7 | 10.244.1.2 > "
                              "10.244.2.3 ICMP echo-request id 7 seq 1, 32 bytes")
    assert bpf.matches(bpf.compile_filter("icmp"), decoded.inner)
    other_port = decode(vxlan(inner), vxlan_port=4789)  # not the tunnel's port: plain UDP
    assert other_port.inner != inner and "UDP" in other_port.flow
    assert decode(tcp("10.244.1.2", "10.244.2.3", 41000, 80)).flow == (
        "10.244.1.2:41000 > 10.244.2.3:80 TCP [S], 40 bytes")
    assert decode(arp()).flow == "ARP who-has 0.0.0.0 tell 0.0.0.0"


def test_copies_of_one_stamp_are_put_in_the_paths_order_on_each_node():
    from tartan.debug.capture import Seen, path_order
    from tartan.debug.capture_hops import Hop, parse_hops

    def seen(hop: str, outbound: bool, when: int = 5) -> Seen:
        return Seen(Hop("node1", hop, None, hop, ""), when, outbound, b"")

    leaving = [seen("pod", True, 1), seen("bridge", False), seen("veth", False),
               seen("uplink", True), seen("vxlan", True)]
    assert [s.hop.name for s in sorted(leaving, key=path_order)] == [
        "pod", "veth", "bridge", "vxlan", "uplink"]
    arriving = [seen("pod", False, 9), seen("veth", True), seen("vxlan", False),
                seen("bridge", True), seen("uplink", False)]
    assert [s.hop.name for s in sorted(arriving, key=path_order)] == [
        "uplink", "vxlan", "bridge", "veth", "pod"]
    assert parse_hops("pod, uplink") == ("pod", "uplink")
    with pytest.raises(ValueError, match="unknown hop tunnel: use some of pod,veth"):
        parse_hops("pod,tunnel")


@needs_tcpdump
@pytest.mark.parametrize("expression", [f for f in FILTERS if f and "len" not in f])
def test_a_filter_moved_inside_vxlan_judges_the_inner_frame_and_others_as_they_are(
        expression: str):
    program = bpf.compile_filter(expression)
    moved = bpf.inside_vxlan(program, 8472)
    assert moved is not None
    for frame in FRAMES:
        assert bpf.matches(moved, vxlan(frame)) == bpf.matches(program, frame), frame
        if frame is not FRAMES[4]:  # that one is a tunnel packet (to 8472) itself
            assert bpf.matches(moved, frame) == bpf.matches(program, frame), frame
    assert bpf.inside_vxlan(bpf.compile_filter("len > 60"), 8472) is None
