"""The enforcer: keep this node's Tartan chains and sets equal to what the policies say.

Every sync takes the cluster from the source (which follows the store's changes), compiles
this node's part and applies it (sets, then one iptables-restore, then the sets no rule uses
any more). A change is synced at once (a burst of writes is coalesced: see `debounce`), and
applies only what differs from the last applied state, without reading the kernel. Level-
triggered repair stays: at start, at least every `interval`, and after any failure, a full
sync reads the kernel's chains and sets and repairs whatever differs. At start it finds the
chains a previous run left and changes only what differs: nothing is flushed on restart.
The enforcer never stops the agent: a failing sync is reported once and retried.

Denied packets are counted from the pod chains' final drops (netpol/counters.py says how):
the counters are read just before every restore (so what a chain counted is attributed to
the policies it had, before the restore resets or deletes it) and just after it, and on
demand (`count_denied`, which /metrics calls at most once a second). A reading that fails is
reported once and never fails a sync.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from tartan.ipam.lease import LeaseError
from tartan.kernel import sysctl
from tartan.kernel.errors import KernelFailure, TartanError
from tartan.kernel.ipset import Ipsets, apply_with_rules
from tartan.kernel.iptables import Iptables, RuleCounters, applied_live
from tartan.netpol.compiler import SET_PREFIX, Compiled, Options, Reuse, compile_node
from tartan.netpol.counters import POD_CHAIN_PREFIXES, Denied, DeniedTotals, Key, isolated_pods
from tartan.netpol.defaults import RESYNC_INTERVAL
from tartan.netpol.source import PolicySource, Snapshot

Apply = Callable[[Compiled, "Compiled | None"], int]  # (wanted, the last applied or None)
Report = Callable[[str, dict[str, object]], None]  # event, fields (the agent's logfmt log)
# pod chain -> its rules' counters, of every pod chain or (given) of those chains only
ReadCounters = Callable[["Collection[str] | None"], Mapping[str, Sequence[RuleCounters]]]
BRIDGE_SYSCTL = "net.bridge.bridge-nf-call-iptables"
FEW_CHAINS = 4  # up to this many chains' counters are listed one by one, not with a save


@dataclass
class SyncResult:
    revision: int
    changes: int
    pods: int  # local pods with a chain
    policies: int
    problems: int
    seconds: float
    full: bool = True  # the kernel was read and repaired (False: only changes applied)


@dataclass(frozen=True)
class Stats:
    """What the enforcer has done, for /metrics."""

    denied: dict[Key, Denied]
    isolated: dict[str, int]  # direction -> local pods with a chain
    syncs: dict[str, int] = field(default_factory=dict)  # outcome ("ok", "failed") -> syncs
    last: SyncResult | None = None


def kernel_apply(family: int = 4) -> Apply:
    """Apply to this namespace's kernel: sets, one restore of the filter table, prune.

    With `previous` (what the last apply made, still in the kernel as far as the enforcer
    knows), nothing is read: only the sets and chains that differ from it are restored, so
    one change costs one or two restores whatever the size of the rest. Without it, the
    kernel is read and everything that differs from `compiled` is repaired."""
    ipsets, iptables = Ipsets(prefix=SET_PREFIX), Iptables(family)

    def apply(compiled: Compiled, previous: Compiled | None = None) -> int:
        if previous is None:
            return apply_with_rules(ipsets, compiled.sets,
                                    lambda: int(iptables.apply_with("filter", compiled.table)))
        live = applied_live(previous.table())
        return apply_with_rules(ipsets, compiled.sets,
                                lambda: int(iptables.apply(compiled.table(live), live)),
                                applied=previous.sets)

    return apply


def kernel_counters(family: int = 4) -> ReadCounters:
    """Read the pod chains' rule counters in this namespace's filter table (the backend is
    found at the first reading, so a host without iptables fails that reading only)."""
    def read(chains: Collection[str] | None = None) -> Mapping[str, Sequence[RuleCounters]]:
        iptables = Iptables(family)
        if chains is not None and len(chains) <= FEW_CHAINS:
            return iptables.chain_counters("filter", chains)
        return iptables.counters("filter", POD_CHAIN_PREFIXES, chains)

    return read


def _rewritten(previous: Compiled, compiled: Compiled) -> set[str]:
    """The chains of `previous` that applying `compiled` on top of it rewrites or deletes."""
    after = {chain.name: chain.rules for chain in compiled.chains}
    return {chain.name for chain in previous.chains if after.get(chain.name) != chain.rules}


def ensure_bridge_netfilter() -> None:
    """Bridged pod-to-pod traffic must pass iptables, or same-node policy does not hold."""
    if not os.path.exists("/proc/sys/net/bridge"):
        with contextlib.suppress(OSError):  # no modprobe: the check below says what to do
            subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False)
    if not os.path.exists("/proc/sys/net/bridge"):
        raise KernelFailure("br_netfilter is not loaded, so traffic between pods of one node "
                            "would bypass NetworkPolicy: modprobe br_netfilter")
    sysctl.write(BRIDGE_SYSCTL, "1")


class Enforcer:
    def __init__(self, source: PolicySource, node: str, addresses: Callable[[], list[str]],
                 report: Report, *, apply: Apply | None = None, options: Options | None = None,
                 interval: float = RESYNC_INTERVAL, debounce: float = 0.1,
                 prepare: Callable[[], None] = ensure_bridge_netfilter,
                 counters: ReadCounters | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`counters` reads the pod chains' counters (None: denied packets are not counted)."""
        self.source, self.node, self.addresses, self.report = source, node, addresses, report
        self.options = options or Options()
        self.apply = apply or kernel_apply(self.options.family)
        self.interval, self.debounce = interval, debounce
        self.prepare, self.read_counters, self.clock = prepare, counters, clock
        self.last: SyncResult | None = None
        self.compiled: Compiled | None = None  # the last one applied
        self._trusted = False  # the kernel holds `compiled`, as far as this enforcer knows
        self._reuse = Reuse()  # what the next compile may take from the last one
        self._synced_at = -float("inf")  # when the last sync began (monotonic)
        self.failure = ""
        self.denied = DeniedTotals()
        self.syncs = {"ok": 0, "failed": 0}
        self._problems: set[str] = set()
        self._counting = threading.Lock()  # one reading at a time, none during a restore
        self._counted_at = -float("inf")
        self._counters_failure = ""

    def sync(self, full: bool = True) -> SyncResult:
        """One sync; `full` reads the kernel and repairs whatever differs, otherwise only
        what changed since the last applied state is restored (when that state is known to
        be in the kernel: after a failure every sync is full until one succeeds)."""
        try:
            result = self._sync(full)
        except Exception:
            self.syncs["failed"] += 1
            raise
        self.syncs["ok"] += 1
        return result

    def _sync(self, full: bool) -> SyncResult:
        started = time.perf_counter()
        self._synced_at = time.monotonic()
        snapshot = self.source.snapshot()
        self._report_problems(snapshot)
        compiled = compile_node(snapshot.cluster, self.node, self.addresses(), self.options,
                                self._reuse)
        previous = self.compiled if self._trusted and not full else None
        with self._counting:
            # what the chains counted under the policies they had until now: all of them,
            # or after a change only those the restore is about to rewrite or delete
            rewritten = _rewritten(previous, compiled) if previous is not None else None
            if rewritten is None or not self.denied.has_baseline:
                self._count()
            elif rewritten:
                self._count(rewritten)
            self._trusted = False
            try:
                changes = self.apply(compiled, previous)
            except Exception as exc:
                if previous is None:
                    raise
                # the kernel is not as the last apply left it: read it and repair it all
                self.report("netpol.repairing", {"error": f"{type(exc).__name__}: {exc}"})
                previous, rewritten = None, None
                changes = self.apply(compiled, None)
            self.compiled, self._trusted = compiled, True
            if rewritten is None or not self.denied.has_baseline:
                self._count()
            else:
                self.denied.restored({c.name: c.rules for c in compiled.chains}, rewritten)
        result = SyncResult(snapshot.revision, changes, len(compiled.isolated),
                            len(snapshot.cluster.policies), len(snapshot.problems),
                            time.perf_counter() - started, full=previous is None)
        self.last = result
        return result

    def count_denied(self, max_age: float = 0.0) -> None:
        """Read the drop counters now, unless the last reading is younger than `max_age`
        seconds or a sync is applying (it reads them itself, just after)."""
        if not self._counting.acquire(blocking=False):
            return
        try:
            if self.clock() - self._counted_at >= max_age:
                self._count()
        finally:
            self._counting.release()

    def stats(self) -> Stats:
        compiled = self.compiled
        return Stats(dict(self.denied.totals), isolated_pods(compiled.isolated if compiled else {}),
                     dict(self.syncs), self.last)

    def _count(self, chains: Collection[str] | None = None) -> None:
        """One reading of the counters (of `chains` only, if given; the caller holds
        `_counting`); a failure is reported once, while it lasts, and changes nothing."""
        if self.read_counters is None:
            return
        try:
            reading = self.read_counters(chains)
        except Exception as exc:  # counting never stops a sync, nor the agent
            text = f"{type(exc).__name__}: {exc}"
            if text != self._counters_failure:
                self._counters_failure = text
                self.report("netpol.counters_unread", {"error": text})
            return
        self.denied.add(reading, self.compiled.isolated if self.compiled else {},
                        partial=chains is not None)
        self._counted_at = self.clock()
        self._counters_failure = ""

    def run(self, stop: threading.Event) -> None:
        """Sync now (full), then on every change (only what changed) and every interval
        (full again: the kernel is read and repaired), until `stop`."""
        self._guarded(self.prepare)
        revision, full = -1, True
        while not stop.is_set():
            result = self._guarded(functools.partial(self.sync, full))
            if result is not None:
                revision = result.revision
                if result.changes:
                    self.report("netpol.synced", {
                        "changes": result.changes, "pods": result.pods,
                        "policies": result.policies, "full": result.full,
                        "ms": round(result.seconds * 1000, 1)})
            full = not self._wait_for_change(revision, stop)

    def _wait_for_change(self, revision: int, stop: threading.Event) -> bool:
        """Until the source moves on from `revision` (True) or the interval ends (False).
        A change right after a sync waits out the rest of `debounce` since that sync
        began, so a burst of writes is one or two syncs; a lone change is synced at once."""
        deadline = time.monotonic() + self.interval
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                current = self.source.wait(revision, min(left, 1.0))
            except Exception as exc:  # the store's own errors (StoreUnavailable, ...)
                self._failed(exc)
                stop.wait(min(left, 1.0))
                continue
            if current != revision:
                stop.wait(max(0.0, self._synced_at + self.debounce - time.monotonic()))
                return True
        return False

    def _guarded(self, step: Callable[[], SyncResult | None]) -> SyncResult | None:
        try:
            result = step()
        except Exception as exc:  # the enforcer never takes the agent down
            self._failed(exc)
            return None
        if self.failure:
            self.report("netpol.recovered", {})
            self.failure = ""
        return result

    def _failed(self, exc: Exception) -> None:
        """Once while the same failure lasts; a bug (no TartanError) with its traceback."""
        text = f"{type(exc).__name__}: {exc}"
        if text != self.failure:
            self.failure = text
            fields: dict[str, object] = {"error": text}
            if not isinstance(exc, (TartanError, LeaseError)):  # neither kernel nor store
                fields["traceback"] = "".join(traceback.format_exception(exc)).rstrip()
            self.report("netpol.failed", fields)

    def _report_problems(self, snapshot: Snapshot) -> None:
        """Each invalid object once (while it stays invalid), with the line naming it."""
        now = {problem.message for problem in snapshot.problems}
        for message in sorted(now - self._problems):
            self.report("netpol.invalid_object", {"error": message})
        self._problems = now
