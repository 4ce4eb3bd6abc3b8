"""Namespaces and plugin runs for the CNI benchmarks: what an implementation is, its network
config, and one timed exec of a plugin as a runtime does it (env + config on stdin)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tartan.kernel import netns

VENV_BIN = Path(sys.executable).parent
REFERENCE_DIR = Path("/usr/lib/cni")
NETNS_DIR = Path("/run/netns")
CNI_VERSION = "1.0.0"  # the newest version both the reference v1.1.1 and Tartan speak
PLUGIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BenchError(Exception):
    """A failure that ends the benchmark with a one-line message."""


# --- namespaces -------------------------------------------------------------------------

def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


def netns_add(name: str) -> str:
    ip("netns", "add", name)
    return str(NETNS_DIR / name)


def netns_del(name: str) -> None:
    if (NETNS_DIR / name).exists():
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body (and every child it starts) inside network namespace `name`.

    Only the network namespace changes: the mount namespace stays the host's, so
    `ip netns add` from inside still makes pod namespaces everyone can see. The bench is
    one thread, so tartan's per-thread setns covers the children it starts.
    """
    with netns.entered(str(NETNS_DIR / name)):
        yield


@dataclass
class Namespaces:
    """Every namespace the bench made, so that all of them go away at the end."""

    prefix: str = field(default_factory=lambda: f"tbench-{uuid.uuid4().hex[:6]}")
    made: list[str] = field(default_factory=list)

    def add(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        self.made.append(name)
        return netns_add(name)

    def remove(self, path: str) -> None:
        name = Path(path).name
        netns_del(name)
        if name in self.made:
            self.made.remove(name)

    def remove_all(self) -> None:
        for name in reversed(self.made):
            netns_del(name)
        self.made.clear()


# --- plugins ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Impl:
    """One implementation: its bridge plugin, IPAM type, and where the runtime looks."""

    name: str
    plugin: Path
    ipam: str
    cni_path: tuple[Path, ...]
    bridge: str
    subnet: str
    env: tuple[tuple[str, str], ...] = ()  # extra plugin environment (TARTAN_CNI_SOCKET)
    modes: tuple[str, ...] = ("masq", "nomasq")  # the modes it can be measured in
    subnet_file: str = ""  # set for the `tartan` meta plugin: its flannel-style subnet.env

    def ipam_binary(self) -> Path:
        found = shutil.which(self.ipam, path=os.pathsep.join(map(str, self.cni_path)))
        if not found:
            raise BenchError(f"{self.name}: IPAM plugin {self.ipam} not found on CNI_PATH")
        return Path(found)


def network_config(impl: Impl, mode: str, data_dir: Path) -> bytes:
    if impl.subnet_file:
        return meta_config(impl, data_dir)
    config = {
        "cniVersion": CNI_VERSION,
        "name": f"bench-{impl.name}-{mode}",
        "type": impl.plugin.name,
        "bridge": impl.bridge,
        "isGateway": True,
        "ipMasq": mode == "masq",
        "ipam": {"type": impl.ipam, "subnet": impl.subnet, "dataDir": str(data_dir)},
    }
    return json.dumps(config).encode()


def meta_config(impl: Impl, data_dir: Path) -> bytes:
    """The `tartan` meta plugin's config: it builds the tartan-bridge + tartan-ipam delegate
    from the subnet file (ipMasq = not FLANNEL_IPMASQ) and keeps it under its dataDir."""
    config = {
        "cniVersion": CNI_VERSION,
        "name": f"bench-{impl.name}",
        "type": impl.plugin.name,
        "subnetFile": impl.subnet_file,
        "dataDir": str(data_dir / "meta"),
        "delegate": {"ipam": {"dataDir": str(data_dir)}},
    }
    return json.dumps(config).encode()


@dataclass
class Invocation:
    ms: float
    code: int
    stdout: str
    stderr: str

    def brief(self) -> str:
        text = (self.stdout.strip() or self.stderr.strip() or "no output").splitlines()
        return text[0][:300] if text else "no output"


def timed_exec(argv: list[str], env: dict[str, str], stdin: bytes) -> Invocation:
    """Run argv once with env and stdin; the time covers fork, exec, the work and exit."""
    start = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False,
                          timeout=120)
    ms = (time.perf_counter() - start) * 1000
    return Invocation(ms, proc.returncode, proc.stdout.decode(errors="replace"),
                      proc.stderr.decode(errors="replace"))


def cni_env(impl: Impl, command: str, container_id: str = "", netns: str = "") -> dict[str, str]:
    env = {
        "PATH": PLUGIN_PATH,
        "CNI_COMMAND": command,
        "CNI_PATH": os.pathsep.join(map(str, impl.cni_path)),
        "CNI_IFNAME": "eth0",
        **dict(impl.env),
    }
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns:
        env["CNI_NETNS"] = netns
    return env


def check_add(impl: Impl, run: Invocation) -> None:
    try:
        ips = json.loads(run.stdout).get("ips") if run.code == 0 else None
    except (ValueError, AttributeError):
        ips = None
    if run.code != 0 or not ips:
        raise BenchError(f"{impl.name} ADD failed (exit {run.code}): {run.brief()}")


def check_del(impl: Impl, run: Invocation) -> None:
    if run.code != 0:
        raise BenchError(f"{impl.name} DEL failed (exit {run.code}): {run.brief()}")
