"""A real etcd for tests: its own data dir, free ports on 127.0.0.1 (or etcd's own ports on an
address inside a network namespace of the test's), always removed."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from harness import eventually

ETCD = Path("/usr/bin/etcd")
START_TIMEOUT = 15.0


def free_port() -> int:
    """A port nobody listens on now (the kernel's pick; never etcd's 2379/2380)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EtcdServer:
    """One etcd member. `start()` returns once it reports healthy; `stop()` kills it and
    removes its data; both are safe to call again."""

    def __init__(self, netns: str | None = None, host: str = "127.0.0.1") -> None:
        self.netns, self.host = netns, host
        # A namespace of the test's own has its own ports: etcd's defaults are free there.
        self.client_port = 2379 if netns else free_port()
        self.peer_port = 2380 if netns else free_port()
        self.url = f"http://{host}:{self.client_port}"
        self.dir = Path(tempfile.mkdtemp(prefix="tartan-etcd-"))
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix,
            str(ETCD), "--name", "tartan-test", "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"tartan-test={peer}", "--initial-cluster-state", "new",
            "--logger", "zap", "--log-outputs", str(self.dir / "etcd.log"),
        ]

    def start(self) -> EtcdServer:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # no ETCD_* settings leak in
        self.proc = subprocess.Popen(self.argv(), env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        eventually(self.healthy, START_TIMEOUT, 0.1, process=self.proc,
                   what=lambda: f"etcd healthy: {self.log_tail()}")

    def healthy(self) -> bool:
        if self.netns:
            probe = ("import json,sys,urllib.request;sys.exit(json.load(urllib.request.urlopen("
                     f"'{self.url}/health',timeout=1)).get('health')!='true')")
            return subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-c", probe],
                                  capture_output=True, check=False).returncode == 0
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as reply:
                return json.load(reply).get("health") == "true"
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        """Stop the process, keep the data."""
        if self.proc is None:
            return
        self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join((self.dir / "etcd.log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"
