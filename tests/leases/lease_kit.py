"""What the lease tests share: a settable clock, and stores of every kind opened alike."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

from tartan.ipam.lease import LeaseAttrs, LeaseStore
from tartan.ipam.lease_memory import MemoryLeaseStore
from tartan.ipam.lease_sqlite import SqliteLeaseStore
from tartan.ipam.netconf import NetworkConfig, parse_network_config

from harness import eventually

STORE_KINDS = ("memory", "sqlite", "etcd")


class FakeClock:
    """Time that only moves when a test says so (safe to move from another thread)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass
class StoreKit:
    """Several clients of one backing store. For memory, "another client" is the same
    object; for SQLite another connection to the file; for etcd another connection."""

    kind: str
    clock: Callable[[], float]
    opener: Callable[[], LeaseStore]
    opened: list[LeaseStore] = field(default_factory=list)

    def open(self) -> LeaseStore:
        store = self.opener()
        self.opened.append(store)
        return store

    @property
    def min_ttl(self) -> float:
        return 2.0 if self.kind == "etcd" else 1.0  # etcd rounds shorter TTLs up to 2 s

    def advance(self, seconds: float) -> None:
        """Let time pass: the fake clock jumps; etcd's real leases just keep running."""
        if isinstance(self.clock, FakeClock):
            self.clock.advance(seconds)

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


def memory_kit() -> StoreKit:
    clock = FakeClock()
    shared = MemoryLeaseStore(clock=clock)
    return StoreKit("memory", clock, lambda: shared)


def sqlite_kit(path: Path, busy_timeout: float = 5.0) -> StoreKit:
    clock = FakeClock()
    return StoreKit("sqlite", clock,
                    lambda: SqliteLeaseStore(path, clock=clock, busy_timeout=busy_timeout))


def etcd_kit(url: str, prefix: str) -> StoreKit:
    from tartan.ipam.lease_etcd import EtcdLeaseStore

    return StoreKit("etcd", time.time, lambda: EtcdLeaseStore(url, prefix=prefix))


def attrs(public_ip: str = "192.168.50.1", mac: str = "aa:bb:cc:00:00:01") -> LeaseAttrs:
    return LeaseAttrs(public_ip, "vxlan", {"VNI": 1, "VtepMAC": mac})


def net(text: str) -> IPv4Network:
    return IPv4Network(text)


def config(**fields) -> NetworkConfig:
    return parse_network_config({"Network": "10.244.0.0/16", **fields})


def one_free_subnet() -> NetworkConfig:
    """A range of exactly one subnet: 10.9.0.64/26."""
    return parse_network_config({"Network": "10.9.0.0/24", "SubnetLen": 26,
                                 "SubnetMin": "10.9.0.64", "SubnetMax": "10.9.0.64"})


def wait_until(store: LeaseStore, done: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Wait on the store (re-listing after every wake, as the agent does) until `done`."""
    _, revision = store.list_leases()

    def wait_on_store(interval: float) -> None:
        nonlocal revision
        revision = store.wait(revision, interval)

    return eventually(done, timeout, 1.0, what=f"{done.__name__} on {type(store).__name__}",
                      pause=wait_on_store)
