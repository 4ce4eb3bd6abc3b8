"""A LeaseStore in one SQLite file that every agent on a machine shares.

The lab runs several agents (in their own network and mount namespaces) against one file,
so all writes are `BEGIN IMMEDIATE` transactions (one writer at a time across processes,
others wait up to the busy timeout) and compare-and-set goes through a version column.
Every write bumps one revision counter; `wait` polls it, and expires due leases itself
(as a write), so waiters wake on expiry just as etcd's delete events wake watchers.

Objects (ipam/objects.py) are rows of `tartan_objects`, with a counter of their own in
`tartan_object_state` that `wait_objects` polls: object writes do not wake `wait`, and lease
writes do not wake `wait_objects`. Opening an older file adds both tables.

Waits sleep on inotify (kernel/inotify.py) until the file or its WAL is written, by this
process or another, and check the revision then (and once a second regardless): an idle
agent does not poll. Where inotify cannot be had, they poll as before.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from tartan.ipam.lease import (
    DEFAULT_SQLITE_PATH,
    OBJECT_POLL_INTERVAL,
    POLL_INTERVAL,
    Clock,
    Lease,
    LeaseAttrs,
    LeaseChanges,
    StoreUnavailable,
    StoreUnusable,
    poll_wait,
    renewed_expiration,
)
from tartan.ipam.netconf import WHOLE, decode_json
from tartan.ipam.objects import (
    ObjectChanges,
    Objects,
    check_key,
    deleted_by_kind,
    encode_object,
    objects_by_kind,
)
from tartan.kernel.inotify import FileWatch

# Opening fails this way only when the path itself is wrong: no retry will fix it.
_PERMANENT_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                               errno.EACCES, errno.EPERM, errno.EROFS})
DEFAULT_BUSY_TIMEOUT = 5.0
FETCH_BATCH = 500  # subnets per SELECT ... IN (...) (SQLite allows 999 parameters by default)
WATCHED_CHECK_INTERVAL = 1.0  # a watched wait checks this often even when nothing woke it
SETTLE_PAUSES = (0.001, 0.003, 0.01, 0.03)  # after a wake: the commit shows within these
TOMBSTONE_REVISIONS = 100_000  # deletions kept for `*_changes`, in revisions of their kind
SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS tartan_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL,
    config TEXT,
    compacted INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO tartan_state (id, revision, config) VALUES (1, 1, NULL);
CREATE TABLE IF NOT EXISTS tartan_leases (
    subnet TEXT PRIMARY KEY,
    attrs TEXT NOT NULL,
    expiration REAL NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tartan_lease_tombstones (
    subnet TEXT PRIMARY KEY,
    revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tartan_object_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL,
    compacted INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO tartan_object_state (id, revision) VALUES (1, 1);
CREATE TABLE IF NOT EXISTS tartan_objects (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS tartan_object_tombstones (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);
COMMIT;
"""
# Files made before objects had revisions get the columns; what they hold counts as written
# at revision 0, and `compacted` says no change before the current revision can be told.
MIGRATIONS = (
    ("tartan_objects", "revision", "ALTER TABLE tartan_objects ADD COLUMN revision "
     "INTEGER NOT NULL DEFAULT 0"),
    ("tartan_object_state", "compacted", "ALTER TABLE tartan_object_state ADD COLUMN compacted "
     "INTEGER NOT NULL DEFAULT 0; UPDATE tartan_object_state SET compacted = revision"),
    ("tartan_state", "compacted", "ALTER TABLE tartan_state ADD COLUMN compacted "
     "INTEGER NOT NULL DEFAULT 0; UPDATE tartan_state SET compacted = revision"),
)
INDEXES = """
CREATE INDEX IF NOT EXISTS tartan_objects_by_revision ON tartan_objects (revision);
CREATE INDEX IF NOT EXISTS tartan_tombstones_by_revision ON tartan_object_tombstones (revision);
CREATE INDEX IF NOT EXISTS tartan_leases_by_version ON tartan_leases (version);
CREATE INDEX IF NOT EXISTS tartan_leases_by_expiration ON tartan_leases (expiration);
CREATE INDEX IF NOT EXISTS tartan_lease_tombstones_by_revision
    ON tartan_lease_tombstones (revision);
"""
T = TypeVar("T")


def _translated(method: Callable[..., T]) -> Callable[..., T]:
    """sqlite3 and OS errors become StoreUnavailable, here and nowhere else."""

    @functools.wraps(method)
    def wrapper(self: SqliteLeaseStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(self.explain(exc)) from None

    return wrapper


class SqliteLeaseStore:
    """Leases in `path`; `clock` decides expiry (tests pass a fake one)."""

    def __init__(self, path: str | os.PathLike = DEFAULT_SQLITE_PATH, clock: Clock = time.time,
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        self.path = Path(path)
        self.clock = clock
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()  # one connection, shared by the caller's threads
        self._conn = self._connect()
        self._listed: dict[str, Lease] = {}  # the last listing, by subnet text
        self._watches = threading.local()  # a FileWatch per waiting thread (each reads its own)
        self._all_watches: list[FileWatch] = []

    def explain(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        if "locked" in text or "busy" in text:
            return (f"lease store {self.path} stayed locked by another process for longer "
                    f"than {self.busy_timeout:g} s; retry, or find the stuck writer")
        return f"lease store {self.path} cannot be used: {text}"

    def _connect(self) -> sqlite3.Connection:
        try:
            return self._open()
        except OSError as exc:
            if exc.errno in _PERMANENT_ERRNOS:
                raise StoreUnusable(self._unusable(exc)) from None
            raise StoreUnavailable(self.explain(exc)) from None
        except sqlite3.DatabaseError as exc:
            # "unable to open database file": the folder refuses the -wal/-shm files
            if any(text in str(exc) for text in ("not a database", "malformed", "unable to open",
                                                   "readonly")):
                raise StoreUnusable(self._unusable(exc)) from None
            raise StoreUnavailable(self.explain(exc)) from None
        except sqlite3.Error as exc:
            raise StoreUnavailable(self.explain(exc)) from None

    def _unusable(self, exc: BaseException) -> str:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = getattr(exc, "filename", None) or self.path
        return (f"lease store {self.path} cannot be used: {where}: {reason}; "
                "pass --store sqlite:/a/writable/path.db")

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            conn.executescript(SCHEMA)
            _migrate(conn)
            conn.executescript(INDEXES)
        except BaseException:
            conn.close()
            raise
        return conn

    # -- the LeaseStore protocol ------------------------------------------------------

    @_translated
    def get_config(self) -> dict | None:
        with self._lock:
            (text,) = self._conn.execute("SELECT config FROM tartan_state").fetchone()
        return None if text is None else decode_json(text, f"{WHOLE} in {self.path}")

    @_translated
    def put_config(self, config: dict) -> None:
        with self._write() as db:
            db.execute("UPDATE tartan_state SET config = ?", (json.dumps(config),))
            _bump(db)

    @_translated
    def list_leases(self) -> tuple[list[Lease], int]:
        """Every unexpired lease. A lease whose version this store listed before is reused,
        not decoded again: the agent's full pass lists thousands of leases that rarely
        change (0.19 s of CPU at 5,000 when every one was decoded)."""
        known = self._listed
        with self._read() as db:
            (revision,) = db.execute("SELECT revision FROM tartan_state").fetchone()
            rows = db.execute("SELECT subnet, version FROM tartan_leases WHERE expiration > ?",
                              (self.clock(),)).fetchall()
            stale = [subnet for subnet, version in rows
                     if (seen := known.get(subnet)) is None or seen.version != version]
            fetched: dict[str, tuple[str, str, float, int]] = {}
            for first in range(0, len(stale), FETCH_BATCH):
                chunk = stale[first:first + FETCH_BATCH]
                fetched.update((row[0], row) for row in db.execute(
                    "SELECT subnet, attrs, expiration, version FROM tartan_leases WHERE subnet "
                    f"IN ({','.join('?' * len(chunk))})", chunk))
        listed: dict[str, Lease] = {}
        for subnet, version in rows:
            lease = known.get(subnet)
            if lease is None or lease.version != version:
                lease = _lease(fetched[subnet]) if subnet in fetched else None
            if lease is not None:
                listed[subnet] = lease
        self._listed = listed
        return sorted(listed.values(), key=_subnet_order), revision

    @_translated
    def create(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: float) -> Lease | None:
        now = self.clock()
        with self._write() as db:
            db.execute("DELETE FROM tartan_leases WHERE subnet = ? AND expiration <= ?",
                       (str(subnet), now))
            version = _bump(db)
            inserted = db.execute(
                "INSERT OR IGNORE INTO tartan_leases VALUES (?, ?, ?, ?)",
                (str(subnet), attrs.to_json(), now + ttl, version)).rowcount
            if not inserted:
                db.execute("ROLLBACK")  # nothing changed: keep the revision as it was
                return None
        return Lease(subnet, attrs, now + ttl, version)

    @_translated
    def update(self, lease: Lease, attrs: LeaseAttrs, ttl: float) -> Lease | None:
        now = self.clock()
        expiration = renewed_expiration(lease, ttl, now)
        with self._write() as db:
            version = _bump(db)
            changed = db.execute(
                "UPDATE tartan_leases SET attrs = ?, expiration = ?, version = ? "
                "WHERE subnet = ? AND version = ? AND expiration > ?",
                (attrs.to_json(), expiration, version, str(lease.subnet), lease.version, now),
            ).rowcount
            if not changed:
                db.execute("ROLLBACK")
                return None
        return Lease(lease.subnet, attrs, expiration, version)

    @_translated
    def delete(self, subnet: IPv4Network) -> None:
        with self._write() as db:
            if db.execute("DELETE FROM tartan_leases WHERE subnet = ?", (str(subnet),)).rowcount:
                _bury(db, [str(subnet)], _bump(db))

    @_translated
    def lease_changes(self, since: int) -> LeaseChanges | None:
        with self._read() as db:
            revision, compacted = db.execute(
                "SELECT revision, compacted FROM tartan_state").fetchone()
            if not compacted <= since <= revision:
                return None
            rows = db.execute("SELECT subnet, attrs, expiration, version FROM tartan_leases "
                              "WHERE version > ?", (since,)).fetchall()
            gone = db.execute("SELECT subnet FROM tartan_lease_tombstones WHERE revision > ? "
                              "AND subnet NOT IN (SELECT subnet FROM tartan_leases)",
                              (since,)).fetchall()
        now = self.clock()
        changed = [lease for lease in map(_lease, rows)
                   if lease is not None and lease.expiration > now]
        deleted = [IPv4Network(subnet) for (subnet,) in gone]
        deleted += [IPv4Network(row[0]) for row in rows if row[2] <= now]
        return LeaseChanges(revision, changed, deleted)

    def wait(self, revision: int, timeout: float) -> int:
        return self._poll(revision, timeout, self._expire, POLL_INTERVAL)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            for watch in self._all_watches:
                watch.close()
            self._all_watches.clear()

    def _poll(self, revision: int, timeout: float, check: Callable[[], int],
              interval: float) -> int:
        """poll_wait, sleeping on the file's watch where there is one."""
        watch = self._watch()
        if watch is None:
            return poll_wait(revision, timeout, check, interval=interval)
        deadline = time.monotonic() + timeout
        current = check()
        while current == revision and (left := deadline - time.monotonic()) > 0:
            if watch.wait(min(WATCHED_CHECK_INTERVAL, left)):
                # A writer appends to the WAL (what wakes the watch) before it publishes the
                # commit in the shared index: look again for a moment until it shows.
                for pause in SETTLE_PAUSES:
                    current = check()
                    if current != revision:
                        return current
                    time.sleep(pause)
            current = check()
        return current

    def _watch(self) -> FileWatch | None:
        if not hasattr(self._watches, "watch"):
            watch: FileWatch | None
            try:
                watch = FileWatch(self.path.parent, (self.path.name, f"{self.path.name}-wal"))
            except OSError:
                watch = None  # no inotify here (limits, or the kernel's): poll
            self._watches.watch = watch
            if watch is not None:
                with self._lock:
                    self._all_watches.append(watch)
        found: FileWatch | None = self._watches.watch
        return found

    # -- the ObjectStore protocol -----------------------------------------------------

    @_translated
    def put_object(self, kind: str, key: str, value: Mapping[str, Any]) -> None:
        text = encode_object(kind, key, value)
        with self._write() as db:
            revision = _bump_objects(db)
            db.execute("INSERT OR REPLACE INTO tartan_objects (kind, key, value, revision) "
                       "VALUES (?, ?, ?, ?)", (kind, key, text, revision))
            db.execute("DELETE FROM tartan_object_tombstones WHERE kind = ? AND key = ?",
                       (kind, key))

    @_translated
    def delete_object(self, kind: str, key: str) -> bool:
        check_key(kind, key)
        with self._write() as db:
            deleted = db.execute("DELETE FROM tartan_objects WHERE kind = ? AND key = ?",
                                 (kind, key)).rowcount
            if deleted:
                revision = _bump_objects(db)
                db.execute("INSERT OR REPLACE INTO tartan_object_tombstones VALUES (?, ?, ?)",
                           (kind, key, revision))
                _compact(db, revision - TOMBSTONE_REVISIONS)
        return bool(deleted)

    @_translated
    def list_objects(self) -> tuple[dict[str, Objects], int]:
        with self._read() as db:
            (revision,) = db.execute("SELECT revision FROM tartan_object_state").fetchone()
            rows = db.execute("SELECT kind, key, value FROM tartan_objects").fetchall()
        return objects_by_kind(rows, str(self.path)), revision

    @_translated
    def object_changes(self, since: int) -> ObjectChanges | None:
        with self._read() as db:
            revision, compacted = db.execute(
                "SELECT revision, compacted FROM tartan_object_state").fetchone()
            if not compacted <= since <= revision:
                return None
            rows = db.execute("SELECT kind, key, value FROM tartan_objects WHERE revision > ?",
                              (since,)).fetchall()
            gone = db.execute("SELECT kind, key FROM tartan_object_tombstones "
                              "WHERE revision > ?", (since,)).fetchall()
        return ObjectChanges(revision, objects_by_kind(rows, str(self.path)),
                             deleted_by_kind(gone))

    def wait_objects(self, revision: int, timeout: float) -> int:
        return self._poll(revision, timeout, self._object_revision, OBJECT_POLL_INTERVAL)

    # -- transactions -----------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One snapshot for several SELECTs."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: the write lock is taken up front (or waited for), so
        a read-then-write never fails half-way on a lock upgrade. The body may end it
        with ROLLBACK itself."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            if self._conn.in_transaction:
                self._conn.execute("COMMIT")

    @_translated
    def _expire(self) -> int:
        """The current revision, after deleting due leases (a cheap read when none are)."""
        now = self.clock()
        with self._lock:
            revision, due = self._conn.execute(
                "SELECT revision, EXISTS (SELECT 1 FROM tartan_leases WHERE expiration <= ?) "
                "FROM tartan_state", (now,)).fetchone()
        if not due:
            return revision
        with self._write() as db:
            due = [subnet for (subnet,) in db.execute(
                "DELETE FROM tartan_leases WHERE expiration <= ? RETURNING subnet", (now,))]
            if due:
                _bury(db, due, _bump(db))
            (revision,) = db.execute("SELECT revision FROM tartan_state").fetchone()
        return revision

    @_translated
    def _object_revision(self) -> int:
        """What `wait_objects` polls: one cheap read."""
        with self._lock:
            (revision,) = self._conn.execute(
                "SELECT revision FROM tartan_object_state").fetchone()
        return revision


def _bump(db: sqlite3.Connection) -> int:
    (revision,) = db.execute(
        "UPDATE tartan_state SET revision = revision + 1 RETURNING revision").fetchone()
    return revision


def _bury(db: sqlite3.Connection, subnets: list[str], revision: int) -> None:
    """Remember that these subnets' leases went at `revision` (for `lease_changes`)."""
    db.executemany("INSERT OR REPLACE INTO tartan_lease_tombstones VALUES (?, ?)",
                   [(subnet, revision) for subnet in subnets])
    _compact(db, revision - TOMBSTONE_REVISIONS, "tartan_lease_tombstones", "tartan_state")


def _bump_objects(db: sqlite3.Connection) -> int:
    (revision,) = db.execute("UPDATE tartan_object_state SET revision = revision + 1 "
                             "RETURNING revision").fetchone()
    return revision


def _compact(db: sqlite3.Connection, below: int, tombstones: str = "tartan_object_tombstones",
             state: str = "tartan_object_state") -> None:
    """Forget deletions older than `below` (of objects, or of leases): asking for changes
    since before then lists all."""
    if db.execute(f"DELETE FROM {tombstones} WHERE revision <= ?", (below,)).rowcount:
        db.execute(f"UPDATE {state} SET compacted = MAX(compacted, ?)", (below,))


def _migrate(conn: sqlite3.Connection) -> None:
    """Add what an older file lacks (under the write lock: two agents may open it at once)."""
    def missing() -> list[str]:
        return [statements for table, column, statements in MIGRATIONS
                if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}]

    if not missing():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statements in missing():
            for statement in statements.split("; "):
                conn.execute(statement)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _subnet_order(lease: Lease) -> tuple[int, int]:
    return int(lease.subnet.network_address), lease.subnet.prefixlen


def _lease(row: tuple[str, str, float, int]) -> Lease | None:
    subnet, attrs, expiration, version = row
    try:
        return Lease(IPv4Network(subnet), LeaseAttrs.from_json(attrs), expiration, version)
    except ValueError:
        return None  # not written by Tartan; skipped, as flannel skips bad subnet keys

