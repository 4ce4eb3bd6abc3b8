"""The SQLite store's own concerns: the file, locking, and failures."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from lease_kit import FakeClock, attrs, net

from tartan.ipam.lease import DEFAULT_SQLITE_PATH, StoreUnavailable, StoreUnusable, open_store
from tartan.ipam.lease_sqlite import SqliteLeaseStore
from tartan.ipam.netconf import NetConfError


def test_the_file_is_made_private_with_its_folders(tmp_path: Path):
    path = tmp_path / "var" / "lib" / "tartan" / "leases.db"
    store = SqliteLeaseStore(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert store._conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        store.close()
    assert DEFAULT_SQLITE_PATH == "/var/lib/tartan/leases.db"


def test_store_url(tmp_path: Path):
    store = open_store(f"sqlite:{tmp_path}/x/leases.db")
    try:
        assert isinstance(store, SqliteLeaseStore) and store.path == tmp_path / "x/leases.db"
    finally:
        store.close()


def test_a_writer_holding_the_lock_too_long_makes_it_unavailable(tmp_path: Path):
    path = tmp_path / "leases.db"
    store = SqliteLeaseStore(path, busy_timeout=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="stayed locked by another process for "
                                                   "longer than 0.2 s"):
            store.create(net("10.244.1.0/24"), attrs(), 60)
        assert store.list_leases() == ([], 1)  # readers are not blocked (WAL)
        holder.execute("ROLLBACK")
        assert store.create(net("10.244.1.0/24"), attrs(), 60) is not None
    finally:
        holder.close()
        store.close()


def test_a_file_that_is_not_a_database_is_unusable_not_unavailable(tmp_path: Path):
    path = tmp_path / "leases.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreUnusable, match=f"lease store {path} cannot be used: .*file is "
                                            "not a database; pass --store"):
        SqliteLeaseStore(path)


def test_a_path_that_cannot_be_made_is_unusable(tmp_path: Path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreUnusable, match="cannot be used: .*file: File exists; pass --store"):
        SqliteLeaseStore(tmp_path / "file" / "leases.db")


def test_a_folder_that_refuses_the_journal_files_is_unusable(tmp_path: Path, monkeypatch):
    """A writable file in a folder that is not: SQLite cannot make its -wal/-shm files
    (root ignores folder permissions, so the error is simulated here)."""
    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(sqlite3, "connect", refuse)
    with pytest.raises(StoreUnusable, match="unable to open database file; pass --store"):
        SqliteLeaseStore(tmp_path / "leases.db")


def test_a_locked_database_at_open_is_retried_not_fatal(tmp_path: Path, monkeypatch):
    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(sqlite3, "connect", locked)
    with pytest.raises(StoreUnavailable, match="stayed locked"):
        SqliteLeaseStore(tmp_path / "leases.db")


def test_a_closed_store_is_unavailable(tmp_path: Path):
    store = SqliteLeaseStore(tmp_path / "leases.db")
    store.close()
    with pytest.raises(StoreUnavailable):
        store.list_leases()


def test_rows_not_written_by_tartan_are_skipped(tmp_path: Path):
    clock = FakeClock()
    store = SqliteLeaseStore(tmp_path / "leases.db", clock=clock)
    try:
        store.create(net("10.244.1.0/24"), attrs(), 60)
        with store._conn:
            store._conn.execute("INSERT INTO tartan_leases VALUES ('bogus', '{}', ?, 1)",
                                (clock() + 60,))
        assert [lease.subnet for lease in store.list_leases()[0]] == [net("10.244.1.0/24")]
    finally:
        store.close()


def test_a_stored_config_that_is_not_json(tmp_path: Path):
    store = SqliteLeaseStore(tmp_path / "leases.db")
    try:
        with store._conn:
            store._conn.execute("UPDATE tartan_state SET config = '{nope'")
        with pytest.raises(NetConfError, match="net-conf.json in .* is not valid JSON"):
            store.get_config()
    finally:
        store.close()
