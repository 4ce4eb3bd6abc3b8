"""The SQLite store's objects: the tables, older files, locking and failures."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from lease_kit import FakeClock, attrs, net

from tartan.ipam.lease import StoreUnavailable
from tartan.ipam.lease_sqlite import SqliteLeaseStore
from tartan.ipam.objects import KINDS, PODS, InvalidObjectKey

POD = {"kind": "Pod", "metadata": {"namespace": "prod", "name": "web-1"}}
# The schema before objects: a file an older Tartan made.
OLD_SCHEMA = """
CREATE TABLE tartan_state (id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL,
                           config TEXT);
INSERT INTO tartan_state VALUES (1, 7, '{"Network": "10.244.0.0/16"}');
CREATE TABLE tartan_leases (subnet TEXT PRIMARY KEY, attrs TEXT NOT NULL,
                            expiration REAL NOT NULL, version INTEGER NOT NULL);
INSERT INTO tartan_leases VALUES ('10.244.1.0/24', '{"PublicIP": "192.168.50.1"}', 1e12, 7);
"""


@pytest.fixture
def store(tmp_path: Path):
    made = SqliteLeaseStore(tmp_path / "leases.db", clock=FakeClock())
    try:
        yield made
    finally:
        made.close()


def test_a_file_from_before_objects_gets_their_tables(tmp_path: Path):
    path = tmp_path / "leases.db"
    with sqlite3.connect(path) as old:
        old.executescript(OLD_SCHEMA)
    old.close()
    store = SqliteLeaseStore(path, clock=FakeClock())
    try:
        assert store.list_objects() == ({kind: {} for kind in KINDS}, 1)
        store.put_object(PODS, "prod/web-1", POD)
        assert store.list_objects() == ({kind: {} for kind in KINDS} | {PODS: {
            "prod/web-1": POD}}, 2)
        leases, revision = store.list_leases()  # leases and config as they were
        assert ([lease.subnet for lease in leases], revision) == ([net("10.244.1.0/24")], 7)
        assert store.get_config() == {"Network": "10.244.0.0/16"}
    finally:
        store.close()


def test_objects_are_rows_with_their_own_counter(store: SqliteLeaseStore):
    store.create(net("10.244.1.0/24"), attrs(), 60)
    store.put_object(PODS, "prod/web-1", POD)
    rows = store._conn.execute("SELECT kind, key, value FROM tartan_objects").fetchall()
    assert rows == [("pods", "prod/web-1", '{"kind":"Pod","metadata":{"namespace":"prod",'
                                           '"name":"web-1"}}')]
    assert store._conn.execute("SELECT revision FROM tartan_object_state").fetchone() == (2,)
    assert store._conn.execute("SELECT revision FROM tartan_state").fetchone() == (2,)


def test_bad_keys_and_values_are_refused_before_the_store_is_touched(tmp_path: Path):
    store = SqliteLeaseStore(tmp_path / "leases.db")
    store.close()  # any use of the connection would fail
    with pytest.raises(InvalidObjectKey):
        store.put_object(PODS, "web-1", POD)
    with pytest.raises(InvalidObjectKey):
        store.delete_object("services", "prod/web")
    with pytest.raises(ValueError, match="cannot be stored as JSON"):
        store.put_object(PODS, "prod/web-1", {"x": object()})


def test_a_closed_store_is_unavailable(tmp_path: Path):
    store = SqliteLeaseStore(tmp_path / "leases.db")
    store.close()
    calls = [lambda: store.put_object(PODS, "prod/web-1", POD),
             lambda: store.delete_object(PODS, "prod/web-1"), store.list_objects,
             lambda: store.wait_objects(1, 3600)]
    for call in calls:
        with pytest.raises(StoreUnavailable, match=f"lease store {store.path} cannot be used"):
            call()


def test_a_writer_holding_the_lock_too_long_makes_writes_unavailable(tmp_path: Path):
    path = tmp_path / "leases.db"
    store = SqliteLeaseStore(path, busy_timeout=0.2)
    store.put_object(PODS, "prod/web-1", POD)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        for write in (lambda: store.put_object(PODS, "prod/web-2", POD),
                      lambda: store.delete_object(PODS, "prod/web-1")):
            with pytest.raises(StoreUnavailable, match="stayed locked by another process"):
                write()
        objects, revision = store.list_objects()  # readers are not blocked (WAL)
        assert (list(objects[PODS]), revision) == (["prod/web-1"], 2)
        assert store.wait_objects(revision, 0) == revision
        holder.execute("ROLLBACK")
        assert store.delete_object(PODS, "prod/web-1") is True
    finally:
        holder.close()
        store.close()


def test_rows_not_written_by_tartan_are_skipped(store: SqliteLeaseStore):
    store.put_object(PODS, "prod/web-1", POD)
    with store._conn:
        store._conn.executemany("INSERT INTO tartan_objects (kind, key, value) "
                                "VALUES (?, ?, ?)", [
            ("services", "prod/web", "{}"), ("pods", "no-namespace", "{}"),
            ("pods", "prod/not-json", "{nope"), ("pods", "prod/a-list", "[1, 2]")])
    assert store.list_objects()[0][PODS] == {"prod/web-1": POD}


def test_an_older_file_cannot_tell_changes_from_before_it_was_opened(tmp_path: Path):
    path = tmp_path / "leases.db"
    with sqlite3.connect(path) as old:
        old.executescript(OLD_SCHEMA + """
            CREATE TABLE tartan_object_state (id INTEGER PRIMARY KEY, revision INTEGER NOT NULL);
            INSERT INTO tartan_object_state VALUES (1, 5);
            CREATE TABLE tartan_objects (kind TEXT NOT NULL, key TEXT NOT NULL,
                                         value TEXT NOT NULL, PRIMARY KEY (kind, key));
            INSERT INTO tartan_objects VALUES ('pods', 'prod/web-1', '{"kind":"Pod"}');""")
    old.close()
    first, second = (SqliteLeaseStore(path, clock=FakeClock()) for _ in range(2))
    try:
        assert first.list_objects() == ({kind: {} for kind in KINDS} | {PODS: {
            "prod/web-1": {"kind": "Pod"}}}, 5)
        assert first.object_changes(4) is None  # from before the columns: unknown
        assert first.object_changes(5) is not None and len(first.object_changes(5)) == 0
        second.put_object(PODS, "prod/web-2", POD)
        assert first.object_changes(5).changed[PODS] == {"prod/web-2": POD}
    finally:
        first.close()
        second.close()


def test_old_deletions_are_forgotten_and_then_changes_list_again(
        store: SqliteLeaseStore, monkeypatch: pytest.MonkeyPatch):
    from tartan.ipam import lease_sqlite

    monkeypatch.setattr(lease_sqlite, "TOMBSTONE_REVISIONS", 3)
    _, start = store.list_objects()
    for index in range(4):
        store.put_object(PODS, f"prod/p{index}", POD)
    for index in range(4):
        store.delete_object(PODS, f"prod/p{index}")
    tombstones = store._conn.execute("SELECT key FROM tartan_object_tombstones").fetchall()
    assert sorted(tombstones) == [("prod/p1",), ("prod/p2",), ("prod/p3",)]
    assert store.object_changes(start) is None
    _, now = store.list_objects()
    recent = store.object_changes(now - 3)
    assert recent is not None and recent.deleted[PODS] == {"prod/p1", "prod/p2", "prod/p3"}
