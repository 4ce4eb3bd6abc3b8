"""The listener of an applied lab pod: what agnhost's serve-hostname does in upstream's e2e.

Started by the lab inside the pod's network namespace (`nsenter --net=/run/netns/<pod>
python -m tartan.debug.lab_serve ...`), one socket per port of the pod's containers:

    TCP  accept, send the answer (the pod's namespace/name and a newline), close
    UDP  answer every datagram with the same text

It writes the `--ready` file once every socket is bound, and ends on SIGTERM (the lab stops
every process of a pod's namespace when the pod goes). Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import socket
import sys
from pathlib import Path

BACKLOG = 128


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lab_serve", description=__doc__.splitlines()[0])
    p.add_argument("--answer", required=True, help="what every client gets back")
    p.add_argument("--tcp", type=int, action="append", default=[], metavar="PORT")
    p.add_argument("--udp", type=int, action="append", default=[], metavar="PORT")
    p.add_argument("--ready", type=Path, help="a file written once every port is bound")
    return p.parse_args(argv)


def bound(kind: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    if kind == socket.SOCK_STREAM:
        sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def answer_tcp(listener: socket.socket, answer: bytes) -> None:
    with contextlib.suppress(BlockingIOError, InterruptedError):
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            conn.settimeout(1.0)
            conn.sendall(answer)


def answer_udp(sock: socket.socket, answer: bytes) -> None:
    with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
        _, peer = sock.recvfrom(65535)
        sock.sendto(answer, peer)


def serve(tcp: list[int], udp: list[int], answer: bytes, ready: Path | None) -> None:
    selector = selectors.DefaultSelector()
    for port in sorted(set(tcp)):
        selector.register(bound(socket.SOCK_STREAM, port), selectors.EVENT_READ, answer_tcp)
    for port in sorted(set(udp)):
        selector.register(bound(socket.SOCK_DGRAM, port), selectors.EVENT_READ, answer_udp)
    if ready is not None:
        ready.write_text("ready\n")
    while True:
        for key, _ in selector.select():
            key.data(key.fileobj, answer)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        serve(args.tcp, args.udp, (args.answer + "\n").encode(), args.ready)
    except OSError as exc:
        print(f"lab_serve: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
