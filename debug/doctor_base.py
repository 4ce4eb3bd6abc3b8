"""What doctor's checks share: the node as they read it, and a finding."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from tartan.cni import subnet_env
from tartan.debug.node import Network


@dataclass(frozen=True)
class Finding:
    check: str
    problem: str
    cause: str
    fix: str


@dataclass
class Node:
    """What the checks look at, read once."""

    network: Network
    conf_dir: str
    env: subnet_env.SubnetEnv | None
    env_error: str
    store_args: argparse.Namespace | None
    sysctl_root: Path = Path("/proc/sys")
    name: str = field(default_factory=lambda: os.uname().nodename)
    _leases: list[Any] | None = field(default=None, repr=False)

    def sysctl(self, name: str) -> str | None:
        return self._read(self.sysctl_root / name.replace(".", "/"))

    def rp_filter(self, ifname: str) -> int:
        """The device's rp_filter as the kernel applies it: the larger of `all` and its own."""
        conf = self.sysctl_root / "net/ipv4/conf"
        values = [self._read(conf / name / "rp_filter") for name in ("all", ifname)]
        return max(int(v) for v in values if v and v.isdigit()) if any(values) else 0

    def leases(self) -> list[Any]:
        """Every lease in the store (read once; raises what opening or reading it raises)."""
        if self._leases is None:
            from tartan.backends.agent import open_store

            assert self.store_args is not None
            store = open_store(self.store_args)
            try:
                self._leases = list(store.list_leases()[0])
            finally:
                store.close()
        return self._leases

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            return path.read_text().strip()
        except OSError:
            return None


Check = Callable[[Node, IPRoute], Iterator[Finding]]
