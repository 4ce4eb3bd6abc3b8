"""The node agent's loop: hold a lease, keep the datapath equal to the lease set, forever.

Two paths keep the kernel right:
- A store change is applied incrementally: the store says which leases changed since the
  revision the agent last saw, and only those peers' entries are written (a renewal that
  changes nothing writes nothing). Its cost does not grow with the number of peers.
- The full pass, level-triggered, at start and every reconcile interval (and whenever the
  store cannot say what changed): every lease listed, the kernel dumped and made to match,
  so hand-made damage is repaired and whatever no lease asks for is removed.
When the store is unreachable the datapath is kept, still reconciled against the last leases
seen, and the store is retried with backoff.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, Protocol

from tartan.backends import masq
from tartan.backends.log import Log
from tartan.backends.metrics import Metrics
from tartan.backends.registry import Backend, NodeInfo, PeerProgramming, PeerState, Report
from tartan.cni import subnet_env
from tartan.ipam.lease import (
    Lease,
    LeaseAttrs,
    LeaseChanges,
    LeaseError,
    LeaseLost,
    StoreUnavailable,
)
from tartan.ipam.netconf import NetworkConfig
from tartan.kernel.errors import TartanError

MAX_BACKOFF = 10.0
WAKE = 1.0  # longest a wait on the store keeps the loop from the kernel monitor's call


class LeaseReader(Protocol):
    """What the loop reads of the leases: the read half of ipam.lease.LeaseStore (a lease
    store, or the Kubernetes API's Nodes: ipam/lease_kube.py)."""

    def list_leases(self) -> tuple[list[Lease], int]: ...

    def lease_changes(self, since: int) -> LeaseChanges | None: ...

    def wait(self, revision: int, timeout: float) -> int: ...


class LeaseHolder(Protocol):
    """Who gets and keeps this node's lease: ipam.lease.LeaseManager over a lease store, or
    ipam.lease_kube.KubeLeaseManager (the Node's podCIDR)."""

    def acquire(self, attrs: LeaseAttrs, previous: IPv4Network | None = None) -> Lease: ...

    def renew(self, lease: Lease, attrs: LeaseAttrs | None = None) -> Lease: ...

    def needs_renewal(self, lease: Lease) -> bool: ...


class NoLease(RuntimeError):
    """The agent was asked for its lease before it acquired one (a bug, not an outage)."""


def expires(lease: Lease) -> int | None:
    """When a lease expires, for the log (None: never, as a Node's podCIDR)."""
    return round(lease.expiration) if math.isfinite(lease.expiration) else None


class FailureReport:
    """Log a failing reconcile pass once, not once per pass while it keeps failing.

    A failure the kernel layer explains (a TartanError) is one line; anything else is a bug
    and its traceback goes with that line. While the same failure repeats nothing more is
    logged (the metric counts every pass); the pass that succeeds again says how many failed.
    """

    def __init__(self, log: Log) -> None:
        self.log = log
        self.current = ""
        self.repeats = 0

    def failed(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        self.repeats += 1
        if text == self.current:
            return
        self.current = text
        where = None if isinstance(exc, TartanError) else "".join(
            traceback.format_exception(exc)).rstrip()
        self.log.error("reconcile.failed", error=text, traceback=where)

    def succeeded(self) -> None:
        if self.current:
            self.log.info("reconcile.recovered", failed_passes=self.repeats)
        self.current, self.repeats = "", 0


@dataclass
class Settings:
    subnet_file: Path
    ip_masq: bool
    reconcile_interval: float


class Agent:
    def __init__(self, store: LeaseReader, manager: LeaseHolder, net: NetworkConfig,
                 node: NodeInfo, backend: Backend, settings: Settings, log: Log,
                 metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.manager, self.net, self.node = store, manager, net, node
        self.backend, self.settings, self.log, self.metrics = backend, settings, log, metrics
        self.clock = clock
        self._lease: Lease | None = None  # None until acquire(); see `lease`
        self.peers: dict[IPv4Network, Lease] = {}
        self.peer_states: dict[str, PeerState] = {}  # by subnet
        self.next_full_pass = 0.0  # clock() at which the next full pass is due
        self.kernel_changed = threading.Event()  # set by the kernel monitor: a pass, now
        self.kernel_change = ""
        self.revision = 0  # the store's, as of start()
        self.ready = False
        self.heartbeat = clock()
        self.passes = 0
        self.outage_since: float | None = None
        self.backoff = 0.5
        self.next_store_try = 0.0
        self.failures = FailureReport(log)
        # more of /status, by key (the NetworkPolicy enforcer's state)
        self.status_parts: dict[str, Callable[[], dict[str, object]]] = {}
        self.kube: Any = None  # backends.kube.KubeMode with --kube-subnet-mgr

    # -- lease -------------------------------------------------------------------------

    @property
    def lease(self) -> Lease:
        """The lease this node holds: there from start() on, which acquires it first."""
        if self._lease is None:
            raise NoLease("tartand holds no lease yet")
        return self._lease

    @property
    def holds_lease(self) -> bool:
        return self._lease is not None

    def acquire(self) -> None:
        if self._lease is not None:
            previous: IPv4Network | None = self._lease.subnet
        else:
            previous = subnet_env.previous_subnet(self.settings.subnet_file)
        self._lease = self.manager.acquire(self.backend.lease_attrs(), previous)
        self.metrics.lease_acquisitions.inc()
        self.log.info("lease.acquired", subnet=self.lease.subnet, public_ip=self.node.public_ip,
                      backend=self.backend.name, expires=expires(self.lease))
        self.backend.setup(self.lease)
        self._publish_lease()
        self.next_full_pass = 0.0  # the datapath follows the (new) lease in full

    def _publish_lease(self) -> None:
        lease = self.lease
        content = subnet_env.SubnetEnv.for_lease(
            self.net.network, lease.subnet, self.backend.mtu(), self.settings.ip_masq,
            self.backend.pod_gso_max_size())
        if subnet_env.write(self.settings.subnet_file, content):
            self.log.info("subnet_file.written", path=self.settings.subnet_file,
                          subnet=lease.subnet, mtu=self.backend.mtu())
        self.metrics.lease.clear()
        self.metrics.lease.labels(str(lease.subnet), self.node.public_ip, self.backend.name).set(1)
        self.metrics.lease_expiry.set(lease.expiration)

    def _track_own_lease(self, mine: Lease | None) -> None:
        """Notice our lease deleted or taken over (`mine` is what the store holds for our
        subnet now), and take one back."""
        if mine is None or mine.attrs.public_ip != self.node.public_ip:
            self.log.warn("lease.lost", subnet=self.lease.subnet,
                          holder=mine.attrs.public_ip if mine else None)
            self.acquire()
            return
        self._lease = mine

    def _renew_if_due(self) -> None:
        if not self.manager.needs_renewal(self.lease):
            return
        try:
            self._lease = self.manager.renew(self.lease)
        except LeaseLost:
            self.log.warn("lease.renewal_refused", subnet=self.lease.subnet)
            self.acquire()
            return
        self.metrics.lease_renewals.inc()
        self.log.info("lease.renewed", subnet=self.lease.subnet,
                      expires=expires(self.lease))
        self._publish_lease()

    # -- datapath ----------------------------------------------------------------------

    def reconcile(self) -> Report:
        """The full pass (see the module's docstring)."""
        started = time.perf_counter()
        report = self.backend.reconcile(self.lease, list(self.peers.values()))
        report.corrections += masq.apply(self.net.network, self.lease.subnet,
                                         self.settings.ip_masq)
        self.metrics.duration.observe(time.perf_counter() - started)
        self.metrics.passes.inc()
        if self.passes and report.corrections:
            self.metrics.corrections.inc(report.corrections)
            self.log.info("reconcile.corrected", changes=report.corrections)
        states = {p.subnet: p for p in report.peers}
        self._log_peer_changes(self.peer_states, states)
        self.peer_states = states
        self._count_peers()
        self.passes += 1
        self.next_full_pass = self.clock() + self.settings.reconcile_interval
        return report

    def apply(self, changes: LeaseChanges) -> None:
        """A store change, incrementally: only the peers whose leases changed are written."""
        own = self.lease.subnet
        before: list[Lease] = []
        after: list[Lease] = []
        for lease in changes.changed:
            if lease.subnet == own:
                self._track_own_lease(lease)
                continue
            old = self.peers.get(lease.subnet)
            self.peers[lease.subnet] = lease
            if old is not None and old.attrs == lease.attrs:
                continue  # a renewal: nothing to program
            if old is not None:
                before.append(old)
            after.append(lease)
        gone = [subnet for subnet in changes.deleted if subnet in self.peers]
        for subnet in gone:
            before.append(self.peers.pop(subnet))
        if own in changes.deleted:
            self._track_own_lease(None)
        if not before and not after:
            return
        started = time.perf_counter()
        report = self.backend.program(self.lease, before, after)
        self.metrics.duration.observe(time.perf_counter() - started)
        states = dict(self.peer_states)
        for subnet in gone:
            states.pop(str(subnet), None)
        states.update({p.subnet: p for p in report.peers})
        self._log_peer_changes(self.peer_states, states)
        self.peer_states = states
        self._count_peers()

    def _count_peers(self) -> None:
        self.metrics.set_peers(Counter((p.backend, p.mode, p.state)
                                       for p in self.peer_states.values()))

    def _log_peer_changes(self, before: dict[str, PeerState],
                          after: dict[str, PeerState]) -> None:
        for subnet, peer in after.items():
            old = before.get(subnet)
            if old is None or (old.mode, old.state, old.public_ip) != (
                    peer.mode, peer.state, peer.public_ip):
                programmed = peer.state is PeerProgramming.PROGRAMMED
                level = self.log.info if programmed else self.log.warn
                level("peer.programmed" if programmed else "peer.skipped",
                      subnet=subnet, public_ip=peer.public_ip, mode=peer.mode,
                      reason=peer.reason or None)
        for subnet, peer in before.items():
            if subnet not in after:
                self.log.info("peer.removed", subnet=subnet, public_ip=peer.public_ip)

    # -- loop --------------------------------------------------------------------------

    def start(self) -> Report:
        """The lease, then the first full pass; its report."""
        self.acquire()
        leases, self.revision = self.store.list_leases()
        self.peers = {x.subnet: x for x in leases if x.subnet != self.lease.subnet}
        report = self.reconcile()
        self.ready = True
        self.metrics.ready.set(1)
        self.log.info("agent.ready", subnet=self.lease.subnet, peers=len(self.peers),
                      changes=report.corrections)
        return report

    def _refresh(self) -> int:
        leases, revision = self.store.list_leases()
        self._track_own_lease(next((x for x in leases if x.subnet == self.lease.subnet), None))
        self.peers = {x.subnet: x for x in leases if x.subnet != self.lease.subnet}
        self._store_recovered()
        return revision

    def _relist(self, revision: int) -> int:
        """The store's revision after a fresh listing, so that the loop's next wait starts past
        a change whose incremental write failed, instead of applying it (and failing) again at
        once, forever; `revision` while the store cannot be read."""
        try:
            return self._refresh()
        except StoreUnavailable as exc:
            self._store_failed(exc)
        except Exception as exc:  # a bug listing: the full pass reports what it finds
            self.failures.failed(exc)
        return revision

    def _store_recovered(self) -> None:
        if self.outage_since is not None:
            self.log.info("store.recovered",
                          outage_seconds=round(self.clock() - self.outage_since, 1))
            self.outage_since, self.backoff = None, 0.5

    def _store_failed(self, exc: Exception) -> None:
        """Back off from the store; the kernel keeps being reconciled meanwhile."""
        self.metrics.store_errors.inc()
        if self.outage_since is None:
            self.outage_since = self.clock()
        self.log.warn("store.unavailable", error=str(exc), retry_in=self.backoff)
        self.next_store_try = self.clock() + self.backoff
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)

    def step(self, revision: int) -> tuple[int, float]:
        """One pass, incremental when the store can say what changed since `revision` and no
        full pass is due; returns the revision seen and how long the store may keep us
        waiting."""
        delay = self.settings.reconcile_interval
        full = self.clock() >= self.next_full_pass
        if self.kernel_changed.is_set():
            self.kernel_changed.clear()
            self.log.info("datapath.changed", change=self.kernel_change,
                          note="a full pass puts it back")
            full = True
        try:
            if self.clock() >= self.next_store_try:
                changes = None if full else self.store.lease_changes(revision)
                if changes is None:
                    revision, full = self._refresh(), True
                else:
                    self._store_recovered()
                    self.apply(changes)
                    revision = changes.revision
                self._renew_if_due()
        except StoreUnavailable as exc:
            self._store_failed(exc)
        except LeaseError as exc:  # no subnet to be had right now: keep the datapath, retry
            self.log.error("lease.unavailable", error=str(exc), retry_in=delay)
        except Exception as exc:  # a bug in an incremental write: list afresh, a full pass
            self.metrics.reconcile_failures.inc()
            self.failures.failed(exc)
            revision, full = self._relist(revision), True
        if full or self.clock() >= self.next_full_pass:
            try:
                self.reconcile()
            except Exception as exc:  # one bad pass must not stop the agent; report, retry
                self.metrics.reconcile_failures.inc()
                self.failures.failed(exc)
            else:
                self.failures.succeeded()
        self.heartbeat = self.clock()
        return revision, max(0.0, self.next_full_pass - self.clock())

    def kernel_changed_by_hand(self, what: str) -> None:
        """The kernel monitor's call (from its thread): wake the loop for a full pass."""
        self.kernel_change = what
        self.kernel_changed.set()

    def run(self, stop: threading.Event) -> None:
        revision = self.revision
        while not stop.is_set():
            revision, delay = self.step(revision)
            if self.outage_since is not None:
                delay = min(delay, max(0.05, self.next_store_try - self.clock()))
            deadline = self.clock() + delay
            while not stop.is_set() and self.clock() < deadline:
                if self.kernel_changed.is_set():
                    break
                if self.outage_since is not None:
                    stop.wait(deadline - self.clock())
                    break
                try:
                    changed = self.store.wait(revision, min(WAKE, deadline - self.clock()))
                except StoreUnavailable:
                    break
                self.heartbeat = self.clock()
                if changed != revision:
                    break

    # -- reporting ---------------------------------------------------------------------

    def healthy(self) -> bool:
        return self.clock() - self.heartbeat < 3 * self.settings.reconcile_interval + 5

    def status(self) -> dict:
        lease = self._lease
        return {
            "node": {
                "publicIP": self.node.public_ip,
                "iface": self.node.iface,
                "subnet": str(lease.subnet) if lease else None,
                "backend": self.backend.name,
                **self.backend.status(),
                "leaseExpires": lease.expiration if lease and math.isfinite(lease.expiration)
                else None,
                **({"name": self.kube.node, "leaseSource": "podCIDR"} if self.kube else {}),
                "bigTCP": big_tcp(self.node, self.backend.pod_gso_max_size()),
                "ready": self.ready,
                "storeReachable": self.outage_since is None,
            },
            "peers": [p.to_json() for p in self.peer_states.values()],
            **{key: part() for key, part in self.status_parts.items()},
        }


def big_tcp(node: NodeInfo, pod_size: int) -> str:
    """What IPv4 BIG TCP does for this node's pods, in words for /status."""
    if not node.iface_gso_max:
        return "not supported by this kernel (IPv4 BIG TCP needs 6.3)"
    if pod_size:
        return f"on: pods send IPv4 packets of up to {pod_size} bytes"
    return (f"off: {node.iface} allows {node.iface_gso_max} bytes (host-gw pods follow a "
            "raised gso_ipv4_max_size; VXLAN keeps 64 KiB)")
