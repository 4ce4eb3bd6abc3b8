"""Stores of every kind for the lease tests, and a real etcd per test session."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from etcd_server import ETCD, EtcdServer
from lease_kit import STORE_KINDS, StoreKit, etcd_kit, memory_kit, sqlite_kit


def _require_etcd() -> None:
    if not ETCD.exists():
        pytest.skip(f"{ETCD} is not installed (Debian package etcd-server)")


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdServer]:
    """One etcd for the session; tests keep apart by using their own key prefix."""
    _require_etcd()
    server = EtcdServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def etcd_factory() -> Iterator[Callable[[], EtcdServer]]:
    """Throwaway etcd servers (for tests that stop them); all removed at the end."""
    _require_etcd()
    made: list[EtcdServer] = []

    def factory() -> EtcdServer:
        server = EtcdServer()
        made.append(server)
        return server.start()

    try:
        yield factory
    finally:
        for server in made:
            server.stop()


def make_kit(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreKit:
    if kind == "memory":
        return memory_kit()
    if kind == "sqlite":
        return sqlite_kit(tmp_path / "leases.db")
    server = request.getfixturevalue("etcd")
    return etcd_kit(server.url, f"/tartan-test/{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=STORE_KINDS)
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreKit]:
    """Clients of one fresh store of each kind in turn."""
    made = make_kit(request.param, request, tmp_path)
    try:
        yield made
    finally:
        made.close_all()
