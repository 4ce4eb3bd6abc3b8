"""A LeaseStore and ObjectStore in memory: real semantics (CAS, expiry, wait) for one
process's threads. Objects are kept as the JSON text the other stores keep, so a value they
would refuse is refused here too, and a listing never shares state with the caller."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping
from ipaddress import IPv4Network
from typing import Any

from tartan.ipam.lease import (
    Clock,
    Lease,
    LeaseAttrs,
    LeaseChanges,
    poll_wait,
    renewed_expiration,
)
from tartan.ipam.objects import (
    ObjectChanges,
    Objects,
    check_key,
    deleted_by_kind,
    encode_object,
    objects_by_kind,
)


class MemoryLeaseStore:
    """Leases in a dict. "Another client" of it is the same object used from another thread."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._leases: dict[IPv4Network, Lease] = {}
        self._gone: dict[IPv4Network, int] = {}  # subnet -> revision its lease went at
        self._config: dict | None = None
        self._revision = 1
        self._objects_cond = threading.Condition()  # objects: their own revision and waiters
        self._objects: dict[tuple[str, str], str] = {}  # (kind, key) -> JSON text
        self._object_revision = 1
        self._written: dict[tuple[str, str], int] = {}  # (kind, key) -> revision of its write
        self._tombstones: dict[tuple[str, str], int] = {}  # deleted: revision of the delete

    def get_config(self) -> dict | None:
        with self._cond:
            return copy.deepcopy(self._config)

    def put_config(self, config: dict) -> None:
        with self._cond:
            self._config = copy.deepcopy(config)
            self._bump()

    def list_leases(self) -> tuple[list[Lease], int]:
        with self._cond:
            now = self.clock()
            live = [lease for lease in self._leases.values() if lease.expiration > now]
            return sorted(live, key=lambda lease: lease.subnet), self._revision

    def create(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: float) -> Lease | None:
        with self._cond:
            if self._live(subnet) is not None:
                return None
            return self._put(Lease(subnet, attrs, self.clock() + ttl, 0))

    def update(self, lease: Lease, attrs: LeaseAttrs, ttl: float) -> Lease | None:
        with self._cond:
            current = self._live(lease.subnet)
            if current is None or current.version != lease.version:
                return None
            expiration = renewed_expiration(lease, ttl, self.clock())
            return self._put(Lease(lease.subnet, attrs, expiration, 0))

    def delete(self, subnet: IPv4Network) -> None:
        with self._cond:
            if self._leases.pop(subnet, None) is not None:
                self._gone[subnet] = self._bump()

    def lease_changes(self, since: int) -> LeaseChanges | None:
        with self._cond:
            if not 0 <= since <= self._revision:
                return None
            now = self.clock()
            changed = [lease for lease in self._leases.values()
                       if lease.version > since and lease.expiration > now]
            deleted = [subnet for subnet, at in self._gone.items()
                       if at > since and subnet not in self._leases]
            deleted += [lease.subnet for lease in self._leases.values()
                        if lease.version > since and lease.expiration <= now]
            return LeaseChanges(self._revision, changed, deleted)

    def wait(self, revision: int, timeout: float) -> int:
        return poll_wait(revision, timeout, self._expire, self._sleep)

    def close(self) -> None:
        pass

    # -- the ObjectStore protocol -----------------------------------------------------

    def put_object(self, kind: str, key: str, value: Mapping[str, Any]) -> None:
        text = encode_object(kind, key, value)
        with self._objects_cond:
            self._objects[kind, key] = text
            self._bump_objects()
            self._written[kind, key] = self._object_revision
            self._tombstones.pop((kind, key), None)

    def delete_object(self, kind: str, key: str) -> bool:
        check_key(kind, key)
        with self._objects_cond:
            if self._objects.pop((kind, key), None) is None:
                return False
            self._bump_objects()
            self._written.pop((kind, key), None)
            self._tombstones[kind, key] = self._object_revision
            return True

    def object_changes(self, since: int) -> ObjectChanges | None:
        with self._objects_cond:
            if not 0 <= since <= self._object_revision:
                return None
            rows = [(kind, key, self._objects[kind, key])
                    for (kind, key), revision in self._written.items() if revision > since]
            gone = [ident for ident, revision in self._tombstones.items() if revision > since]
            return ObjectChanges(self._object_revision, objects_by_kind(rows, "memory"),
                                 deleted_by_kind(gone))

    def list_objects(self) -> tuple[dict[str, Objects], int]:
        with self._objects_cond:
            rows = [(kind, key, text) for (kind, key), text in self._objects.items()]
            revision = self._object_revision
        return objects_by_kind(rows, "memory"), revision

    def wait_objects(self, revision: int, timeout: float) -> int:
        with self._objects_cond:
            self._objects_cond.wait_for(lambda: self._object_revision != revision, timeout)
            return self._object_revision

    def _live(self, subnet: IPv4Network) -> Lease | None:
        lease = self._leases.get(subnet)
        return lease if lease is not None and lease.expiration > self.clock() else None

    def _put(self, lease: Lease) -> Lease:
        stored = Lease(lease.subnet, lease.attrs, lease.expiration, self._bump())
        self._leases[lease.subnet] = stored
        self._gone.pop(lease.subnet, None)
        return stored

    def _bump(self) -> int:
        self._revision += 1
        self._cond.notify_all()
        return self._revision

    def _bump_objects(self) -> None:
        self._object_revision += 1
        self._objects_cond.notify_all()

    def _expire(self) -> int:
        """Drop expired leases as a write, as etcd deletes the keys of an expired lease."""
        with self._cond:
            now = self.clock()
            expired = [s for s, lease in self._leases.items() if lease.expiration <= now]
            for subnet in expired:
                del self._leases[subnet]
            if expired:
                revision = self._bump()
                self._gone.update(dict.fromkeys(expired, revision))
            return self._revision

    def _sleep(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait(seconds)
