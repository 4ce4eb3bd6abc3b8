"""Node subnet leases: the model, the narrow store protocol, and the allocation policy.

A lease gives one node one subnet of the cluster Network for a while. Stores (memory,
SQLite for one machine, etcd for a cluster) only keep leases and compare-and-set them;
`LeaseManager` decides which subnet a node gets. Renewal is a compare-and-set on the
lease's version: a node back from a partition whose subnet was reassigned gets
`LeaseLost` instead of stealing it back (flannel renews with a blind put).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any, Protocol

from tartan.ipam.netconf import NetworkConfig
from tartan.ipam.objects import ObjectStore

log = logging.getLogger(__name__)

DEFAULT_TTL = 24 * 3600.0  # flannel's subnet lease TTL
DEFAULT_SQLITE_PATH = "/var/lib/tartan/leases.db"
DEFAULT_ETCD_ENDPOINT = "http://127.0.0.1:2379"
DEFAULT_ETCD_PREFIX = "/coreos.com/network"  # flannel's default --etcd-prefix
RENEW_FRACTION = 0.5  # renew once half of the TTL is left
ACQUIRE_ROUNDS = 16  # lists + create attempts before giving up on a contended network
RANDOM_PROBES = 64  # random picks before listing every free subnet
POLL_INTERVAL = 0.05  # seconds between polls of stores without change notification
# objects are polled more often: a policy change is enforced within 0.1 s of its write, and a
# poll of SQLite's object revision costs about 9 us of CPU (0.1 % of a core at this rate)
OBJECT_POLL_INTERVAL = 0.01
Clock = Callable[[], float]


class LeaseError(Exception):
    """Base of the lease errors the agent handles."""


class StoreUnavailable(LeaseError):
    """The store cannot be reached or used now (etcd down, database locked, I/O error)."""


class StoreUnusable(LeaseError):
    """The store as configured can never work (a path that cannot be created or written, a
    file that is not a database): waiting will not help, the configuration must change."""


class SubnetsExhausted(LeaseError):
    """Every subnet in the configured range is leased."""


class LeaseLost(LeaseError):
    """The lease changed or vanished since it was read: the node must acquire again."""


class LeaseContention(LeaseError):
    """Other nodes kept taking the subnets this node picked; try again shortly."""


@dataclass(frozen=True)
class LeaseAttrs:
    """What a lease says about its node, in flannel's JSON form."""

    public_ip: str
    backend_type: str = ""
    backend_data: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"PublicIP": self.public_ip}
        if self.backend_type:  # flannel omits empty fields
            out["BackendType"] = self.backend_type
        if self.backend_data:
            out["BackendData"] = self.backend_data
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LeaseAttrs:
        """Keys match case-insensitively, as Go decodes them; ValueError when unusable."""
        folded = {key.lower(): value for key, value in raw.items()}
        public_ip = folded.get("publicip")
        if not isinstance(public_ip, str) or not _is_ipv4(public_ip):
            raise ValueError(f"PublicIP {public_ip!r} is not an IPv4 address")
        backend_type = folded.get("backendtype") or ""
        data = folded.get("backenddata") or {}
        if not isinstance(backend_type, str) or not isinstance(data, dict):
            raise ValueError("BackendType must be a string and BackendData an object")
        return cls(public_ip, backend_type, data)

    @classmethod
    def from_json(cls, text: str | bytes) -> LeaseAttrs:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("lease attributes must be a JSON object")
        return cls.from_dict(raw)


def _is_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


@dataclass(frozen=True)
class Lease:
    subnet: IPv4Network
    attrs: LeaseAttrs
    expiration: float  # seconds since the epoch; math.inf for a reservation (no TTL)
    version: int  # opaque compare-and-set token (etcd mod_revision, SQLite row version)


@dataclass(frozen=True)
class LeaseChanges:
    """What changed after a revision: leases written since (as they are now; a renewal is a
    write) and subnets whose lease is gone (deleted or expired, and not leased again);
    `revision` is the one they bring the caller to."""

    revision: int
    changed: list[Lease]
    deleted: list[IPv4Network]

    def __len__(self) -> int:
        return len(self.changed) + len(self.deleted)


def subnet_key(subnet: IPv4Network) -> str:
    """flannel's key for a subnet: 10.244.1.0/24 -> "10.244.1.0-24"."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(key: str) -> IPv4Network | None:
    address, _, length = key.rpartition("-")
    try:
        return IPv4Network(f"{address}/{length}")
    except ValueError:
        return None


def renewed_expiration(lease: Lease, ttl: float, now: float) -> float:
    """A reservation (no expiry) stays one when renewed, as flannel keeps it."""
    return math.inf if math.isinf(lease.expiration) else now + ttl


class LeaseStore(Protocol):
    """Where leases live. Every method may raise StoreUnavailable."""

    def get_config(self) -> dict | None:
        """The stored net-conf.json, or None when there is none."""

    def put_config(self, config: dict) -> None: ...

    def list_leases(self) -> tuple[list[Lease], int]:
        """Unexpired leases, and the revision to pass to `wait`."""

    def create(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: float) -> Lease | None:
        """Lease `subnet` if nobody holds it (expired leases count as absent); else None."""

    def update(self, lease: Lease, attrs: LeaseAttrs, ttl: float) -> Lease | None:
        """Replace attrs and extend expiry if `lease` is unchanged since read; else None."""

    def delete(self, subnet: IPv4Network) -> None: ...

    def lease_changes(self, since: int) -> LeaseChanges | None:
        """What changed after `since` (a revision `list_leases` or `wait` reported), read at
        one revision; None when the store can no longer tell (deletions that old are
        forgotten): the caller lists again."""

    def wait(self, revision: int, timeout: float) -> int:
        """Block until leases may have changed after `revision` (a write, an expiry) or
        `timeout` seconds pass; return the current revision. Callers list again after."""

    def close(self) -> None: ...


class ClusterStore(LeaseStore, ObjectStore, Protocol):
    """What `open_store` opens: the leases, and the objects beside them (ipam/objects.py)."""


def poll_wait(revision: int, timeout: float, check: Callable[[], int],
              sleep: Callable[[float], Any] = time.sleep,
              interval: float = POLL_INTERVAL) -> int:
    """`wait` (or `wait_objects`) for stores that are polled: `check` returns the revision
    (the lease stores' expires due leases first), every `interval` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        current = check()
        left = deadline - time.monotonic()
        if current != revision or left <= 0:
            return current
        sleep(min(interval, left))


def open_store(url: str, *, prefix: str | None = None, clock: Clock = time.time
               ) -> ClusterStore:
    """A store from the agent's --store URL: sqlite:/path, http://host:port[,...], memory:."""
    scheme, _, rest = url.partition(":")
    if scheme == "sqlite":
        from tartan.ipam.lease_sqlite import SqliteLeaseStore

        return SqliteLeaseStore(rest or DEFAULT_SQLITE_PATH, clock=clock)
    if scheme in ("http", "https"):
        from tartan.ipam.lease_etcd import EtcdLeaseStore

        return EtcdLeaseStore(url.split(","), prefix=prefix or DEFAULT_ETCD_PREFIX, clock=clock)
    if scheme == "memory":
        from tartan.ipam.lease_memory import MemoryLeaseStore

        return MemoryLeaseStore(clock=clock)
    raise ValueError(f"lease store {url!r} is not a store URL; use sqlite:/path/to/leases.db "
                     "or http://host:2379 (etcd; several separated by commas)")


def peers(leases: Iterable[Lease], own_subnet: IPv4Network | None) -> list[Lease]:
    """Every lease but this node's, by subnet: the routes/tunnels the agent programs."""
    return sorted((lease for lease in leases if lease.subnet != own_subnet),
                  key=lambda lease: lease.subnet)


class _Taken:
    """The candidate subnets the listed leases cover (also leases of another size)."""

    def __init__(self, config: NetworkConfig, leases: Iterable[Lease]) -> None:
        self.exact: set[IPv4Network] = set()
        self.wide: list[IPv4Network] = []
        for lease in leases:
            subnet = lease.subnet
            if not subnet.overlaps(config.network):
                continue
            if subnet.prefixlen >= config.subnet_len:
                self.exact.add(subnet.supernet(new_prefix=config.subnet_len))
            else:
                self.wide.append(subnet)

    def __contains__(self, subnet: IPv4Network) -> bool:
        return subnet in self.exact or any(subnet.subnet_of(wide) for wide in self.wide)


class LeaseManager:
    """Acquire and renew this node's subnet lease over any LeaseStore."""

    def __init__(self, store: LeaseStore, config: NetworkConfig, clock: Clock = time.time,
                 ttl: float = DEFAULT_TTL, rng: random.Random | None = None) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.ttl = ttl
        self.rng = rng or random.Random()

    def acquire(self, attrs: LeaseAttrs, previous: IPv4Network | None = None) -> Lease:
        """This node's lease: its own existing one (same public IP), else `previous`
        (from the subnet file) if free, else a random free subnet."""
        for _ in range(ACQUIRE_ROUNDS):
            leases, _ = self.store.list_leases()
            lease = self._try_acquire(attrs, previous, leases)
            if lease is not None:
                log.info("leased %s for %s", lease.subnet, attrs.public_ip)
                return lease
        raise LeaseContention(
            f"gave up leasing a subnet of {self.config.network} after {ACQUIRE_ROUNDS} "
            "attempts: other nodes took every subnet this node picked; retry shortly")

    def renew(self, lease: Lease, attrs: LeaseAttrs | None = None) -> Lease:
        renewed = self.store.update(lease, attrs or lease.attrs, self.ttl)
        if renewed is None:
            raise LeaseLost(f"lease of {lease.subnet} changed, expired or was deleted since "
                            "this node last held it; acquire a lease again")
        return renewed

    def renew_at(self, lease: Lease) -> float:
        """When to renew: once less than half of the TTL is left, so a 24 h lease is
        renewed every 12 h and survives a 12 h store outage; short test TTLs scale along."""
        return lease.expiration - self.ttl * RENEW_FRACTION

    def needs_renewal(self, lease: Lease) -> bool:
        return self.clock() >= self.renew_at(lease)

    # -- policy -----------------------------------------------------------------------

    def _try_acquire(self, attrs: LeaseAttrs, previous: IPv4Network | None,
                     leases: list[Lease]) -> Lease | None:
        """One round; None when another writer won a race (list again and retry)."""
        own = self._own_lease(attrs, previous, leases)
        if own is not None:
            return self.store.update(own, attrs, self.ttl)
        taken = _Taken(self.config, leases)
        if previous is not None and self.config.is_candidate(previous) and previous not in taken:
            return self.store.create(previous, attrs, self.ttl)
        return self.store.create(self._random_free(taken, leases), attrs, self.ttl)

    def _own_lease(self, attrs: LeaseAttrs, previous: IPv4Network | None,
                   leases: list[Lease]) -> Lease | None:
        mine = [lease for lease in leases if lease.attrs.public_ip == attrs.public_ip
                and self.config.is_candidate(lease.subnet)]
        if not mine:
            return None
        return max(mine, key=lambda lease: (lease.subnet == previous, lease.expiration))

    def _random_free(self, taken: _Taken, leases: list[Lease]) -> IPv4Network:
        count = self.config.subnet_count()
        for _ in range(RANDOM_PROBES):
            subnet = self.config.subnet_at(self.rng.randrange(count))
            if subnet not in taken:
                return subnet
        free = [subnet for subnet in self.config.candidate_subnets() if subnet not in taken]
        if not free:
            raise self._exhausted(count, leases)
        return self.rng.choice(free)

    def _exhausted(self, count: int, leases: list[Lease]) -> SubnetsExhausted:
        conf = self.config
        return SubnetsExhausted(
            f"no free subnet in Network {conf.network}: all {count} /{conf.subnet_len} "
            f"subnets from {conf.subnet_min.network_address} (SubnetMin) to "
            f"{conf.subnet_max.network_address} (SubnetMax) are leased ({len(leases)} leases "
            "held); wait for a stale lease to expire, delete one, or widen the range")
