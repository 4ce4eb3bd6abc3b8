"""Helpers for the bundle tests: build, install, snapshots of a tree, a fake agent."""

from __future__ import annotations

import importlib.util
import os
import socket
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tartan.cni.fastpath import MAGIC, frame, read_exact

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
CNI_NAMES = ("tartan", "tartan-bridge", "tartan-ipam", "tartan-portmap")
COMMAND_NAMES = ("tartand", "tartanctl")


def make(*targets: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    menv = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "DESTDIR"))}
    menv.update(env or {})
    return subprocess.run(["make", "-s", "-C", str(REPO), *targets], env=menv, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
                          timeout=900)


def install_py(action: str, destdir: Path | str,
               bundle: Path | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(PACKAGING / "install.py"), action, "--destdir", str(destdir)]
    if bundle is not None:
        argv += ["--bundle", str(bundle)]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)


@dataclass
class Staged:
    """A DESTDIR install: where the installed names are."""

    root: Path

    @property
    def cni_bin(self) -> Path:
        return self.root / "opt/cni/bin"

    def cni(self, name: str) -> Path:
        return self.cni_bin / name

    def command(self, name: str) -> Path:
        return self.root / "usr/local/bin" / name


def snapshot(*tops: Path | str) -> dict[str, tuple]:
    """Everything under the given paths: kind, mode, and link target or size and mtime.
    Directory mtimes are left out (adding and removing an entry changes them)."""
    seen: dict[str, tuple] = {}
    for top in map(Path, tops):
        if not os.path.lexists(top):
            seen[str(top)] = ("absent",)
            continue
        seen[str(top)] = _entry(top)
        if top.is_dir() and not top.is_symlink():
            for dirpath, dirnames, filenames in os.walk(top):
                for name in dirnames + filenames:
                    path = Path(dirpath) / name
                    seen[str(path)] = _entry(path)
    return seen


def _entry(path: Path) -> tuple:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return ("dir", st.st_mode)
    return ("file", st.st_mode, st.st_size, st.st_mtime_ns)


@dataclass
class FakeAgent:
    """A unix socket that answers every request with a fixed reply, recording what it got."""

    path: Path
    code: int = 0
    reply: bytes = b'{"cniVersion": "1.1.0", "fake": "agent"}'
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.requests.append(self._read(conn))
                conn.sendall(MAGIC + self.code.to_bytes(4, "big", signed=True)
                             + frame(self.reply))

    @staticmethod
    def _read(conn: socket.socket) -> tuple[str, dict[str, str], bytes]:
        assert read_exact(conn, len(MAGIC)) == MAGIC
        parts = [read_exact(conn, int.from_bytes(read_exact(conn, 4), "big"))
                 for _ in range(3)]
        env = dict(item.split("=", 1) for item in parts[1].decode().split("\0") if item)
        return parts[0].decode(), env, parts[2]

    def close(self) -> None:
        self.sock.close()


def packaging_module(name: str):
    """A module of packaging/ (cni_modules, startup), which is not an installed package."""
    qualified = f"tartan_packaging_{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, PACKAGING / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
    return sys.modules[qualified]
