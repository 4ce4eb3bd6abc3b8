"""The lab's seam to the system: programs run with argument lists, inside a namespace.

`Sys` runs programs (`ip`, `nsenter`, the plugins, tartand); everything the lab does to the
kernel goes through it, so the command lines are in one place. A node's commands run with
`nsenter --target <holder> --mount --net`, so they see the node's network and the node's
own /run/tartan, /var/lib/cni, /var/lib/tartan and /etc/cni.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

NETNS_DIR = Path("/run/netns")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LabError(Exception):
    """A lab step failed; the message is the one line (or few) the user sees."""


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def in_netns(name: str, argv: list[str]) -> list[str]:
    """argv in a network namespace only (the host's mounts)."""
    return ["nsenter", f"--net={netns_path(name)}", *argv]


def in_node(holder_pid: int, argv: list[str]) -> list[str]:
    """argv in a node: its network namespace and its mount namespace."""
    return ["nsenter", f"--target={holder_pid}", "--mount", "--net", *argv]


def _first_line(proc: subprocess.CompletedProcess) -> str:
    text = (proc.stderr or proc.stdout or "").strip().splitlines()
    return text[-1] if text else f"exit {proc.returncode}"


def _detached(argv: list[str], out: IO[bytes] | int, env: dict[str, str] | None) -> int:
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed") from None
    _CHILDREN[proc.pid] = proc
    return proc.pid


class Sys:
    """Runs programs; `run` raises LabError (naming `what`) when one fails."""

    def run(self, argv: list[str], *, what: str = "", input: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(argv, input=input, env=env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise LabError(f"{what or argv[0]}: no answer within {timeout:.0f}s") from None
        except FileNotFoundError:
            raise LabError(f"{argv[0]} is not installed (needed for {what or argv[0]})") from None
        if check and proc.returncode != 0:
            raise LabError(f"{what or ' '.join(argv[:4])} failed: {_first_line(proc)}")
        return proc

    def ok(self, argv: list[str], timeout: float = 30) -> bool:
        return self.run(argv, timeout=timeout, check=False).returncode == 0

    def spawn(self, argv: list[str], log: Path | None = None,
              env: dict[str, str] | None = None) -> int:
        """Start a long-lived process detached from us (own session); its pid."""
        if log is None:
            return _detached(argv, subprocess.DEVNULL, env)
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            return _detached(argv, out, env)

    def ip(self, *args: str, netns: str | None = None, what: str = "") -> str:
        argv = ["ip", "-n", netns, *args] if netns else ["ip", *args]
        return self.run(argv, what=what or f"ip {' '.join(args[:3])}").stdout


# Popen objects of the processes this process started: reaped when they end, so a stopped
# tartand does not linger as a zombie while we still run.
_CHILDREN: dict[int, subprocess.Popen] = {}


def alive(pid: int) -> bool:
    """Whether pid is a running (not zombie) process."""
    if pid <= 0:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def netns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def in_namespace(pid: int, netns: str) -> bool:
    """Whether pid lives in the named network namespace (guards against recycled pids)."""
    ours = netns_id(netns_path(netns))
    return ours is not None and netns_id(f"/proc/{pid}/ns/net") == ours


def pids_in(netns: str) -> list[int]:
    """Every process whose network namespace is the named one (`ip netns pids`)."""
    ours = netns_id(netns_path(netns))
    if ours is None:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and netns_id(f"{entry}/ns/net") == ours and alive(
                int(entry.name)):
            found.append(int(entry.name))
    return found


def stop(pids: list[int], grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL what is left after `grace` seconds; the pids that were killed."""
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    stubborn = [p for p in pids if alive(p)]
    _signal(stubborn, signal.SIGKILL)
    for pid in pids:
        _reap(pid)
    return stubborn


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
