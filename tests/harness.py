"""Test harness: namespaces that always go away, and plugins run exactly as a runtime does.

Kernel tests make a "host" network namespace per case (the plugin runs inside it, so the
bridge, veths and iptables rules never touch the real host) and a "container" namespace per
pod. Everything is removed in finalizers, also when the test fails half-way.

Waiting is written once, here: `eventually` polls a condition until it holds, `completes`
runs a call that must return on its own. Their timeouts are hang guards, not timing goals
(those belong in bench/): a loaded machine makes a test slower, never wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

VENV_BIN = Path(sys.executable).parent
REFERENCE_CNI = Path("/usr/lib/cni")
NETNS_DIR = Path("/run/netns")
HANG_GUARD = 30.0  # seconds: only to fail a call that hangs, never to say "fast enough"

T = TypeVar("T")


def plugin_dir() -> Path:
    """Where the installed Tartan console scripts live (the venv's bin)."""
    return VENV_BIN


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def in_netns(ns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv] if ns else argv


@dataclass
class Netns:
    name: str

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.name)

    def run(self, *argv: str, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(in_netns(self.name, list(argv)), capture_output=True, text=True,
                              check=check, timeout=timeout)

    def ping(self, address: str, count: int = 1, timeout: int = 2) -> bool:
        proc = self.run("ping", "-c", str(count), "-W", str(timeout), address, check=False)
        return proc.returncode == 0

    def links(self) -> list[str]:
        out = self.run("ip", "-o", "link", "show").stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def addresses(self, ifname: str) -> list[str]:
        out = self.run("ip", "-o", "addr", "show", "dev", ifname).stdout
        rows = [line.split() for line in out.splitlines()]
        return [row[3] for row in rows if row[2] in ("inet", "inet6")]

    def iptables_save(self, table: str = "nat") -> str:
        return self.run("iptables-save", "-t", table).stdout


def make_netns(name: str) -> Netns:
    _ip("netns", "add", name)
    ns = Netns(name)
    ns.run("ip", "link", "set", "lo", "up")
    return ns


def remove_netns(name: str) -> None:
    if (NETNS_DIR / name).exists():
        _ip("netns", "del", name, check=False)


@dataclass
class PluginReply:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout) if self.stdout.strip() else {}

    @property
    def error_code(self) -> int | None:
        return self.json.get("code") if self.code != 0 else None


def run_plugin(
    plugin: str,
    command: str,
    config: dict | bytes | str,
    *,
    container_id: str = "",
    netns: str = "",
    ifname: str = "eth0",
    cni_args: str = "",
    host_ns: Netns | None = None,
    path: list[Path] | None = None,
    extra_env: dict | None = None,
    timeout: float = 60,
) -> PluginReply:
    """Run a plugin as a child process the way libcni does: env + stdin, reply on stdout.

    `plugin` is a name found on `path` (default: Tartan's console scripts, then the
    reference plugins), or an absolute path.
    """
    search = path or [plugin_dir(), REFERENCE_CNI]
    exe = plugin if os.path.isabs(plugin) else shutil.which(
        plugin, path=os.pathsep.join(map(str, search)))
    assert exe, f"plugin {plugin} not found on {search}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_PATH": os.pathsep.join(str(p) for p in search),
    }
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns:
        env["CNI_NETNS"] = netns
    if ifname:
        env["CNI_IFNAME"] = ifname
    if cni_args:
        env["CNI_ARGS"] = cni_args
    env.update(extra_env or {})
    if isinstance(config, dict):
        stdin = json.dumps(config).encode()
    elif isinstance(config, str):
        stdin = config.encode()
    else:
        stdin = config
    proc = subprocess.run(
        in_netns(host_ns.name if host_ns else None, [exe]),
        input=stdin, env=env, capture_output=True, timeout=timeout, check=False,
    )
    return PluginReply(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def stop_process(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM (an agent leaves its datapath and exits), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")


def _say(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what


def eventually(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.1,
               what: str | Callable[[], str] = "", *,
               process: subprocess.Popen | None = None,
               retry_on: tuple[type[BaseException], ...] = (AssertionError,),
               pause: Callable[[float], object] = time.sleep) -> T:
    """Call `check` until it passes and return what it returned.

    It passes when it returns a truthy value; a falsy value, or one of `retry_on` raised
    (AssertionError: a check may assert), means "not yet". Any other exception, and
    pytest.fail, end the wait at once, as does the exit of `process` (a process the
    condition depends on). After `timeout` seconds: AssertionError naming `what` (text, or a
    callable called only then, e.g. to add a log) and the last value or exception.
    `pause(interval)` runs between calls (a store's wait may stand in for a sleep).
    """
    deadline = time.monotonic() + timeout
    name = getattr(check, "__name__", "check")
    while True:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{_say(what) or name}: pid {process.pid} exited with "
                                 f"{process.returncode} while waiting")
        try:
            result = check()
        except retry_on as exc:
            last: object = exc
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            message = f"{_say(what) or name}: not within {timeout:g} s; last: {last!r}"
            raise AssertionError(message) from (last if isinstance(last, BaseException)
                                                else None)
        pause(interval)


def completes(call: Callable[[], T], timeout: float = HANG_GUARD,
              what: str = "") -> T:
    """Run `call` in a thread and return its result (or raise what it raised): for calls
    that must return on their own, e.g. a wait whose own timeout is far longer than this
    hang guard, so that returning at all proves it did not sit out its timeout."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=f"completes:{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{what or getattr(call, '__name__', 'call')} still running "
                             f"after {timeout:g} s (hang guard)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
