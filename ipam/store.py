"""The narrow seam between allocation policy and where reservations live.

`Store` is what the allocator needs; `DiskStore` (disk.py) keeps host-local's files and
`MemoryStore` here is a real implementation for tests. Callers hold `lock()` around every
sequence of reads and writes that must be consistent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from tartan.ipam.ranges import IPAddress


@dataclass(frozen=True)
class Attachment:
    """Who holds a reservation: a container's interface.

    `ifname` is "" for files written by host-local before it recorded interface names.
    """

    container_id: str
    ifname: str

    def matches(self, query: Attachment) -> bool:
        """Whether a reservation held by self belongs to `query`."""
        if self.container_id != query.container_id:
            return False
        return self.ifname == query.ifname or not self.ifname


class Store(Protocol):
    def lock(self) -> AbstractContextManager[None]:
        """Exclusive access against every other process sharing the store."""

    def reserve(self, owner: Attachment, ip: IPAddress, range_id: int) -> bool:
        """Reserve `ip` for `owner`; False if it is taken. Records it as last reserved."""

    def last_reserved(self, range_id: int) -> IPAddress | None: ...

    def release(self, ip: IPAddress) -> None:
        """Forget the reservation of `ip`, if any."""

    def release_by_id(self, owner: Attachment) -> list[IPAddress]: ...

    def find_by_id(self, owner: Attachment) -> list[IPAddress]: ...

    def reservations(self) -> dict[IPAddress, Attachment]: ...


class MemoryStore:
    """A Store in a dict, for tests and for callers that need no persistence."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.held: dict[IPAddress, Attachment] = {}
        self.last: dict[int, IPAddress] = {}

    @contextmanager
    def lock(self) -> Iterator[None]:
        with self._mutex:
            yield

    def reserve(self, owner: Attachment, ip: IPAddress, range_id: int) -> bool:
        if ip in self.held:
            return False
        self.held[ip] = owner
        self.last[range_id] = ip
        return True

    def last_reserved(self, range_id: int) -> IPAddress | None:
        return self.last.get(range_id)

    def release(self, ip: IPAddress) -> None:
        self.held.pop(ip, None)

    def release_by_id(self, owner: Attachment) -> list[IPAddress]:
        gone = self.find_by_id(owner)
        for ip in gone:
            self.release(ip)
        return gone

    def find_by_id(self, owner: Attachment) -> list[IPAddress]:
        return [ip for ip, holder in self.held.items() if holder.matches(owner)]

    def reservations(self) -> dict[IPAddress, Attachment]:
        return dict(self.held)
