"""Capture on every hop of a path at once: one pcapng, one line per packet.

One AF_PACKET socket per hop, each made inside the hop's network namespace (a socket stays
in the namespace it was made in), all read by one loop. The kernel stamps every packet
(SO_TIMESTAMPNS), so packets of all hops are put in the order they were seen; a socket sees
both directions of its interface (outgoing ones are marked so).

How it bounds itself: `--count` and `--duration` end it, and so does Ctrl-C (the file is
complete up to the last packet: it is flushed after each one). Each socket has a receive
buffer of its own (4 MiB); when the loop falls behind, the kernel drops packets for that
socket only, never the node's traffic, and the summary says how many it dropped. The filter
also runs in the kernel where it can (SO_ATTACH_FILTER): a packet it rejects is not copied
out at all. What the node pays is a copy of each accepted packet per listening socket
(bench/reports/capture.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from tartan.debug import bpf, pcapng
from tartan.debug.capture_decode import decode, inner_frame
from tartan.debug.capture_hops import HOPS, Hop
from tartan.kernel.netns import entered

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_TIMESTAMPNS = 35
SO_ATTACH_FILTER = 26
SNAPLEN = 262144  # a GSO packet may be far over the MTU
RCVBUF = 4 << 20
REORDER_NS = 100_000_000  # how long a packet waits for the other hops' copies of it


@dataclass(frozen=True)
class Seen:
    hop: Hop
    timestamp_ns: int
    outbound: bool
    data: bytes


@dataclass
class Summary:
    packets: int = 0  # matched and written
    seen: int = 0  # read from the sockets
    dropped: dict[str, int] = field(default_factory=dict)  # hop label -> kernel drops


def attach_filter(sock: socket.socket, program: bpf.Program) -> None:
    """Run `program` in the kernel on every packet of the socket: what it rejects is never
    copied out (SO_ATTACH_FILTER, struct sock_fprog)."""
    code = ctypes.create_string_buffer(b"".join(
        struct.pack("HBBI", insn.code, insn.jt, insn.jf, insn.k) for insn in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_socket(hop: Hop, program: bpf.Program | None = None) -> socket.socket:
    """A packet socket on `hop`'s interface, made in its namespace, with `program` (if
    any) filtering in the kernel."""
    with entered(hop.netns) if hop.netns else contextlib.nullcontext():
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            if program is not None:
                attach_filter(sock, program)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.bind((hop.ifname, 0))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen on {hop.label} ({hop.ifname}): "
                                     f"{exc.strerror}") from None
    sock.setblocking(False)
    return sock


def kernel_drops(sock: socket.socket) -> int:
    """Packets the kernel dropped for this socket since the last call (it resets them)."""
    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    return struct.unpack("II", raw)[1]


def kernel_filter(hop: Hop, expression: str) -> bpf.Program | None:
    """What the kernel may drop for `hop` before copying it out: the filter itself where
    the pod's frames travel as they are; where VXLAN travels, the filter moved onto the
    inner frame (or, when it cannot be moved, every tunnel packet passes to user space)."""
    if not expression.strip():
        return None
    program = bpf.compile_filter(expression)
    if hop.vxlan_port and hop.name == "uplink":
        return bpf.inside_vxlan(program, hop.vxlan_port) or bpf.compile_filter(
            f"(udp dst port {hop.vxlan_port}) or ({expression})")
    return program


class Capture:
    def __init__(self, hops: Sequence[Hop], expression: str = "") -> None:
        self.hops = list(hops)
        self.sockets: dict[int, tuple[socket.socket, Hop]] = {}
        self.interrupted = False  # Ctrl-C ended `read`
        try:
            for hop in self.hops:
                sock = open_socket(hop, kernel_filter(hop, expression))
                self.sockets[sock.fileno()] = (sock, hop)
        except BaseException:
            self.close()
            raise

    def read(self, until: Callable[[], bool], poll: float = 0.05) -> Iterator[Seen]:
        """Packets in the kernel's time order, until `until()` is true. Sockets are read
        one after the other, so a packet is held until the sockets went quiet or the
        newest packet is `REORDER_NS` younger: by then every hop's copy of it was read."""
        pending: list[Seen] = []
        while not until():
            try:
                ready, _, _ = select.select(list(self.sockets), [], [], poll)
            except KeyboardInterrupt:  # what the sockets hold was seen before Ctrl-C
                self.interrupted = True
                pending += [seen for sock, hop in self.sockets.values()
                            for seen in self._drain(sock, hop)]
                break
            pending += [seen for fd in ready for seen in self._drain(*self.sockets[fd])]
            if not pending:
                continue
            pending.sort(key=path_order)
            cut = len(pending) if not ready else next(
                (i for i, seen in enumerate(pending)
                 if seen.timestamp_ns > pending[-1].timestamp_ns - REORDER_NS), len(pending))
            out, pending = pending[:cut], pending[cut:]
            yield from out
        # what the sockets still hold was seen before the end (a deadline, Ctrl-C)
        pending += [seen for sock, hop in self.sockets.values() for seen in self._drain(sock, hop)]
        yield from sorted(pending, key=path_order)

    def _drain(self, sock: socket.socket, hop: Hop, limit: int = 256) -> Iterator[Seen]:
        """What the socket holds, at most `limit` packets: under a flood a socket is never
        empty, and the other hops, the deadline and Ctrl-C must get their turn."""
        for _ in range(limit):
            try:
                data, ancillary, _, address = sock.recvmsg(SNAPLEN, 64)
            except (BlockingIOError, InterruptedError):
                return
            stamp = next((struct.unpack("qq", value[:16]) for level, kind, value in ancillary
                          if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS), None)
            when = stamp[0] * 1_000_000_000 + stamp[1] if stamp else time.time_ns()
            yield Seen(hop, when, address[2] == PACKET_OUTGOING, data)

    def drops(self) -> dict[str, int]:
        return {hop.label: kernel_drops(sock) for sock, hop in self.sockets.values()}

    def close(self) -> None:
        for sock, _ in self.sockets.values():
            sock.close()
        self.sockets.clear()


_RANK = {name: rank for rank, name in enumerate(HOPS)}


def towards_pod(seen: Seen) -> bool:
    """Whether the packet is on its way into the node's pod (else out of it): the pod and
    the tunnel's ends receive it, the host veth and the bridge send it on."""
    if seen.hop.name in ("veth", "bridge"):
        return seen.outbound
    return not seen.outbound


def path_order(seen: Seen) -> tuple[int, int]:
    """The kernel's time; a packet stamped once and seen on several hops of a node (the
    stamp travels with it) in the order of its path there: pod to uplink on its way out,
    uplink to pod on its way in."""
    rank = _RANK.get(seen.hop.name, 0)
    return seen.timestamp_ns, -rank if towards_pod(seen) else rank


def line(seen: Seen, text: str) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(seen.timestamp_ns // 1_000_000_000))
    return (f"{clock}.{seen.timestamp_ns % 1_000_000_000:09d} {seen.hop.label:<14} "
            f"{'out' if seen.outbound else 'in ':<3} {text}")


def run(hops: Sequence[Hop], expression: str, out: Callable[[str], None],
        stream: BinaryIO | None = None, count: int = 0, duration: float = 0.0,
        descriptions: dict[str, str] | None = None,
        ready: Callable[[], None] = lambda: None) -> Summary:
    """Capture on `hops` until `count` packets matched `expression` (tcpdump's filter
    syntax, on the pod's own frames), `duration` seconds passed
    or Ctrl-C; write them to `stream` (pcapng) if given, a line each to `out`. `ready` is
    called once every hop listens."""
    program = bpf.compile_filter(expression)
    summary = Summary()
    writer = pcapng.Writer(stream) if stream is not None else None
    interfaces = {hop.label: writer.interface(hop.label, (descriptions or {}).get(
        hop.label, hop.description)) for hop in hops} if writer else {}
    capture = Capture(hops, expression)
    ready()  # every socket listens from here on
    deadline = time.monotonic() + duration if duration > 0 else None
    interrupted = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C ends the loop between packets, so none of those already seen is lost
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())

    def done() -> bool:
        return bool(interrupted.is_set() or (count and summary.packets >= count)
                    or (deadline is not None and time.monotonic() >= deadline))

    try:
        for seen in capture.read(done):
            summary.seen += 1
            if not bpf.matches(program, inner_frame(seen.data, seen.hop.vxlan_port)):
                continue
            decoded = decode(seen.data, seen.hop.vxlan_port)
            summary.packets += 1
            out(line(seen, decoded.text()))
            if writer is not None:
                writer.packet(interfaces[seen.hop.label], seen.timestamp_ns, seen.data,
                              seen.outbound)
                writer.flush()
            if count and summary.packets >= count:
                break
    except KeyboardInterrupt:
        pass  # Ctrl-C: what was captured is written; the summary follows
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        summary.dropped = {label: n for label, n in capture.drops().items() if n}
        capture.close()
        if stream is not None:
            stream.flush()
            with contextlib.suppress(OSError, ValueError):
                os.fsync(stream.fileno())
    return summary
