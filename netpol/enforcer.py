"""The enforcer: keep this node's Tartan chains and sets equal to what the policies say.

Level-triggered, like the agent's routing loop: every sync reads the whole cluster from the
source, compiles this node's part and applies it (sets, then one iptables-restore, then the
sets no rule uses any more). A sync runs when the source changes (after a short debounce, so
a burst of writes is one sync), at least every `interval`, and at start, where it finds the
chains a previous run left and changes only what differs: nothing is flushed on restart.
The enforcer never stops the agent: a failing sync is reported once and retried.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tartan.kernel import sysctl
from tartan.kernel.errors import KernelFailure
from tartan.kernel.ipset import Ipsets, apply_with_rules
from tartan.kernel.iptables import Iptables
from tartan.netpol.compiler import SET_PREFIX, Compiled, Options, compile_node
from tartan.netpol.source import PolicySource, Snapshot

Apply = Callable[[Compiled], int]
Report = Callable[[str, dict[str, object]], None]  # event, fields (the agent's logfmt log)
BRIDGE_SYSCTL = "net.bridge.bridge-nf-call-iptables"


@dataclass
class SyncResult:
    revision: int
    changes: int
    pods: int  # local pods with a chain
    policies: int
    problems: int
    seconds: float


def kernel_apply(family: int = 4) -> Apply:
    """Apply to this namespace's kernel: sets, one restore of the filter table, prune."""
    ipsets, iptables = Ipsets(prefix=SET_PREFIX), Iptables(family)

    def apply(compiled: Compiled) -> int:
        return apply_with_rules(ipsets, compiled.sets,
                                lambda: int(iptables.apply_with("filter", compiled.table)))

    return apply


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
                 interval: float = 30.0, debounce: float = 0.1,
                 prepare: Callable[[], None] = ensure_bridge_netfilter) -> None:
        self.source, self.node, self.addresses, self.report = source, node, addresses, report
        self.options = options or Options()
        self.apply = apply or kernel_apply(self.options.family)
        self.interval, self.debounce = interval, debounce
        self.prepare = prepare
        self.last: SyncResult | None = None
        self.failure = ""
        self._problems: set[str] = set()

    def sync(self) -> SyncResult:
        started = time.perf_counter()
        snapshot = self.source.snapshot()
        self._report_problems(snapshot)
        compiled = compile_node(snapshot.cluster, self.node, self.addresses(), self.options)
        changes = self.apply(compiled)
        result = SyncResult(snapshot.revision, changes, len(compiled.isolated),
                            len(snapshot.cluster.policies), len(snapshot.problems),
                            time.perf_counter() - started)
        self.last = result
        return result

    def run(self, stop: threading.Event) -> None:
        """Sync now, then on every change and every interval, until `stop`."""
        self._guarded(self.prepare)
        revision = -1
        while not stop.is_set():
            result = self._guarded(self.sync)
            if result is not None:
                revision = result.revision
                if result.changes:
                    self.report("netpol.synced", {
                        "changes": result.changes, "pods": result.pods,
                        "policies": result.policies, "ms": round(result.seconds * 1000, 1)})
            self._wait_for_change(revision, stop)

    def _wait_for_change(self, revision: int, stop: threading.Event) -> None:
        deadline = time.monotonic() + self.interval
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                current = self.source.wait(revision, min(left, 1.0))
            except Exception as exc:  # the store's own errors (StoreUnavailable, ...)
                self._failed(exc)
                stop.wait(min(left, 1.0))
                continue
            if current != revision:
                stop.wait(self.debounce)  # let a burst of writes land: one sync for all
                return

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
        text = f"{type(exc).__name__}: {exc}"
        if text != self.failure:
            self.failure = text
            self.report("netpol.failed", {"error": text})

    def _report_problems(self, snapshot: Snapshot) -> None:
        """Each invalid object once (while it stays invalid), with the line naming it."""
        now = {problem.message for problem in snapshot.problems}
        for message in sorted(now - self._problems):
            self.report("netpol.invalid_object", {"error": message})
        self._problems = now
