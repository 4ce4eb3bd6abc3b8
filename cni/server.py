"""The agent's CNI socket: run plugin requests with the very code the plugins run in-process.

tartand hosts it at /run/tartan/cni.sock (mode 0600). Only root may use it (peer
credentials are checked, not just the file mode). Requests for different containers run
concurrently; requests for one container are serialised. A request the server cannot read
(malformed, oversized) gets a CNI error reply, and the server keeps serving.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tartan.cni import after_reply, errors, registry, skel
from tartan.cni.fastpath import (
    CALLER_NS,
    DECLINED,
    MAGIC,
    MAX_FRAME,
    SOCKET_PATH,
    frame,
    namespace_identity,
    read_exact,
)

READ_TIMEOUT = 10.0

Observer = Callable[[str, str, str, str, float], None]  # plugin, container, command, outcome, s
# After a request was answered, still under its container's lock: command, env, exit code,
# stdout (tartand records which pod got which address).
Served = Callable[[str, Mapping[str, str], int, str], None]


@dataclass
class Request:
    plugin: str
    env: dict[str, str]
    stdin: bytes

    @property
    def command(self) -> str:
        return self.env.get("CNI_COMMAND", "")

    @property
    def container(self) -> str:
        return self.env.get("CNI_CONTAINERID", "")


class BadRequest(Exception):
    def __init__(self, error: errors.CniError) -> None:
        super().__init__(error.msg)
        self.error = error


class KeyedLocks:
    """One lock per key, dropped when nobody holds or waits for it (memory stays bounded)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def held(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


def _read_frame(conn: socket.socket, what: str) -> bytes:
    (size,) = struct.unpack(">I", read_exact(conn, 4))
    if size > MAX_FRAME:
        raise BadRequest(errors.InvalidEnv(f"request {what} is {size} bytes; the limit is "
                                           f"{MAX_FRAME}"))
    return read_exact(conn, size)


def read_request(conn: socket.socket) -> Request:
    if read_exact(conn, len(MAGIC)) != MAGIC:
        raise BadRequest(errors.DecodeFailure("not a Tartan CNI request"))
    try:
        plugin = _read_frame(conn, "plugin name").decode()
        env_block = _read_frame(conn, "environment").decode()
    except UnicodeDecodeError:
        raise BadRequest(errors.DecodeFailure("request is not UTF-8")) from None
    stdin = _read_frame(conn, "config")
    if plugin not in registry.PLUGINS:
        raise BadRequest(errors.InvalidEnv(f"unknown plugin {plugin!r}"))
    pairs = (item.partition("=") for item in env_block.split("\0") if item)
    return Request(plugin, {k: v for k, _, v in pairs}, stdin)


def encode_reply(reply: skel.Reply) -> bytes:
    return MAGIC + struct.pack(">i", reply.exit_code) + frame(skel.printed(reply))


def _drain(conn: socket.socket) -> None:
    """Half-close and read what a bad client left unread, so closing sends no reset that
    could destroy our error reply before the client reads it."""
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(1.0)
    while conn.recv(65536):
        pass


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class CniServer:
    def __init__(self, path: Path, observe: Observer | None = None, mode: int = 0o600,
                 allowed_uids: frozenset[int] = frozenset({0}),
                 served: Served | None = None) -> None:
        self.path, self.mode, self.allowed = path, mode, allowed_uids
        self.observe = observe or (lambda *_: None)
        self.served = served or (lambda *_: None)
        self.locks = KeyedLocks()
        self.identity = namespace_identity()
        self.sock: socket.socket | None = None
        self._plugins: dict[str, skel.Plugin] = {}

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_socket()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, self.mode)
        sock.listen(128)
        self.sock = sock
        for name in registry.NAMES:  # import now: the first request pays nothing
            self._plugins[name] = registry.load(name)
        threading.Thread(target=self._accept, name="cni-accept", daemon=True).start()

    def _remove_stale_socket(self) -> None:
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._remove_stale_socket()

    def _accept(self) -> None:
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        def send(reply: skel.Reply) -> None:
            conn.sendall(encode_reply(reply))
            _drain(conn)

        with conn:
            conn.settimeout(READ_TIMEOUT)
            with contextlib.suppress(OSError):  # the plugin went away: nothing to tell it
                self._answer(conn, send)

    def _answer(self, conn: socket.socket, send: Callable[[skel.Reply], None]) -> None:
        if peer_uid(conn) not in self.allowed:
            error = errors.InvalidEnv("the Tartan CNI socket serves root only")
            self.observe("", "", "", "refused", 0.0)
            send(skel.error_reply(error, b""))
            return
        try:
            request = read_request(conn)
        except BadRequest as exc:
            self.observe("", "", "", f"code {exc.error.code}", 0.0)
            send(skel.error_reply(exc.error, b""))
            return
        except (OSError, ConnectionError, struct.error):
            send(skel.error_reply(errors.DecodeFailure("request was cut short"), b""))
            return
        self.handle(request, send)

    def handle(self, request: Request,
               send: Callable[[skel.Reply], None] = lambda _: None) -> skel.Reply:
        """Run `request`, give `send` the reply, then finish the work its handlers deferred
        (after_reply) before the next request for the same container may start."""
        if request.env.pop(CALLER_NS, None) != self.identity:
            self.observe(request.plugin, request.container, request.command, "declined", 0.0)
            reply = skel.Reply(DECLINED, "")
            send(reply)
            return reply
        started = time.perf_counter()
        with self.locks.held(request.container or request.plugin), \
                after_reply.collecting() as pending:
            try:
                reply = skel.run(self._plugins[request.plugin], request.env, request.stdin)
                outcome = "ok" if reply.exit_code == 0 else _error_code(reply)
                self.observe(request.plugin, request.container, request.command, outcome,
                             time.perf_counter() - started)
                send(reply)
                self.served(request.command, request.env, reply.exit_code, reply.stdout)
            finally:
                if pending:
                    self._finish(request, pending)
        return reply

    def _finish(self, request: Request, pending: list[after_reply.Work]) -> None:
        started = time.perf_counter()
        failures = after_reply.run(pending)
        outcome = f"failed: {failures[0]}" if failures else "ok"
        self.observe(request.plugin, request.container, f"{request.command}-after-reply",
                     outcome, time.perf_counter() - started)


def _error_code(reply: skel.Reply) -> str:
    import json

    try:
        return f"code {json.loads(reply.stdout)['code']}"
    except (ValueError, KeyError, TypeError):
        return "failed"


def main(argv: list[str] | None = None) -> int:
    """`python -m tartan.cni.server --socket PATH`: the CNI socket without the agent."""
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(prog="tartan-cni-server")
    parser.add_argument("--socket", type=Path, default=Path(SOCKET_PATH))
    parser.add_argument("--mode", type=lambda text: int(text, 8), default=0o600)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = CniServer(args.socket, mode=args.mode)
    server.start()
    print(f"serving CNI requests on {args.socket}", file=sys.stderr, flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
