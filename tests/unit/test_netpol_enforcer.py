"""The enforcer's loop without a kernel: a source in memory, and an apply that records."""

from __future__ import annotations

import threading
import time

from tartan.ipam.lease import StoreUnavailable
from tartan.netpol.compiler import Compiled
from tartan.netpol.enforcer import Enforcer
from tartan.netpol.manifest import ManifestError
from tartan.netpol.model import Cluster
from tartan.netpol.source import Snapshot

from harness import completes, eventually
from netpol_kit import NAMESPACES, PODS, policy


class Source:
    def __init__(self, *policies) -> None:
        self.cond = threading.Condition()
        self.revision = 1
        self.policies = tuple(policies)
        self.problems: tuple[ManifestError, ...] = ()
        self.fail: Exception | None = None

    def snapshot(self) -> Snapshot:
        if self.fail:
            raise self.fail
        return Snapshot(Cluster(NAMESPACES, PODS, self.policies), self.revision, self.problems)

    def wait(self, revision: int, timeout: float) -> int:
        with self.cond:
            self.cond.wait_for(lambda: self.revision != revision, timeout)
            return self.revision

    def change(self, *policies) -> None:
        with self.cond:
            self.policies = tuple(policies)
            self.revision += 1
            self.cond.notify_all()


class Recorder:
    def __init__(self) -> None:
        self.applied: list[Compiled] = []
        self.previous: list[Compiled | None] = []  # what each apply was told the kernel holds

    def __call__(self, compiled: Compiled, previous: Compiled | None = None) -> int:
        self.applied.append(compiled)
        self.previous.append(previous)
        return 1


def enforcer(source, events, apply=None, **kw) -> Enforcer:
    return Enforcer(source, "node1", lambda: ["198.18.1.11"],
                    lambda event, fields: events.append((event, fields)),
                    apply=apply or Recorder(), prepare=lambda: None, **kw)


def isolated(compiled: Compiled) -> set[str]:
    return {key for keys in compiled.isolated.values() for key in keys}


def test_a_sync_compiles_this_nodes_part_and_applies_it():
    events: list = []
    apply = Recorder()
    result = enforcer(Source(policy("deny")), events, apply).sync()
    assert (result.revision, result.changes, result.pods, result.policies) == (1, 1, 2, 1)
    assert isolated(apply.applied[0]) == {"x/deny"}  # x/a and x/b are node1's


def test_the_loop_syncs_on_a_change_after_the_debounce_and_stops():
    events: list = []
    apply, source, stop = Recorder(), Source(), threading.Event()
    thread = threading.Thread(target=enforcer(source, events, apply, interval=3600).run,
                              args=(stop,))
    thread.start()
    try:
        eventually(lambda: len(apply.applied) == 1, what="the first sync")
        source.change(policy("deny"))
        eventually(lambda: len(apply.applied) == 2, what="a sync after the change")
        assert isolated(apply.applied[-1]) == {"x/deny"}
        # the first sync reads the kernel; the change applies on top of what it made
        assert apply.previous == [None, apply.applied[0]]
    finally:
        stop.set()
        completes(lambda: thread.join(30) or True)
    assert not thread.is_alive()


def test_a_failing_sync_is_reported_once_and_its_recovery_too():
    events: list = []
    source = Source()
    source.fail = StoreUnavailable("store: etcd request timed out")
    enf = enforcer(source, events)
    for _ in range(3):
        assert enf._guarded(enf.sync) is None
    source.fail = None
    assert enf._guarded(enf.sync) is not None
    assert [e for e, _ in events] == ["netpol.failed", "netpol.recovered"]
    assert events[0][1] == {"error": "StoreUnavailable: store: etcd request timed out"}


def test_a_bug_in_a_sync_is_reported_once_with_its_traceback():
    events: list = []
    source = Source()
    source.fail = KeyError("spec")
    enf = enforcer(source, events)
    for _ in range(3):
        assert enf._guarded(enf.sync) is None
    assert [e for e, _ in events] == ["netpol.failed"]
    assert events[0][1]["error"] == "KeyError: 'spec'"
    assert "Traceback" in events[0][1]["traceback"] and "KeyError" in events[0][1]["traceback"]


def test_an_invalid_object_is_reported_once_while_the_rest_is_enforced():
    events: list = []
    source = Source(policy("deny"))
    source.problems = (ManifestError("store", "NetworkPolicy x/bad", "spec.podSelector",
                                     "is missing"),)
    apply = Recorder()
    enf = enforcer(source, events, apply)
    enf.sync()
    enf.sync()
    assert [e for e, _ in events] == ["netpol.invalid_object"]
    assert "NetworkPolicy x/bad" in str(events[0][1]["error"])
    assert all(isolated(c) == {"x/deny"} for c in apply.applied)


def test_only_a_change_is_applied_on_top_of_the_last_state_a_full_sync_repairs():
    events: list = []
    apply, source = Recorder(), Source()
    enf = enforcer(source, events, apply)
    first = enf.sync(full=True)
    source.change(policy("deny"))
    second = enf.sync(full=False)
    enf.sync(full=True)  # the interval's: read and repair
    assert apply.previous == [None, apply.applied[0], None]
    assert (first.full, second.full) == (True, False)


def test_a_failed_apply_of_changes_repairs_at_once_and_a_failed_sync_makes_the_next_full():
    events: list = []
    calls: list = []
    full_fails = threading.Event()

    def apply(compiled, previous):
        calls.append(previous)
        if previous is not None or full_fails.is_set():
            raise RuntimeError("iptables-restore: chain TARTAN-NPI-x does not exist")
        return 1

    source = Source()
    enf = enforcer(source, events, apply)
    enf.sync()
    first = enf.compiled
    source.change(policy("deny"))
    assert enf.sync(full=False).full  # the kernel was not as left: read and repaired
    assert calls == [None, first, None]
    assert [e for e, _ in events] == ["netpol.repairing"]
    repaired = enf.compiled
    full_fails.set()
    source.change()
    assert enf._guarded(lambda: enf.sync(full=False)) is None
    full_fails.clear()
    source.change(policy("deny"))
    assert enf.sync(full=False).full  # after a failure nothing is taken for applied
    assert calls[3:] == [repaired, None, None]  # changes, their repair, then full


def test_a_lone_change_is_synced_at_once_a_burst_within_the_debounce_waits():
    source, stop = Source(), threading.Event()
    enf = enforcer(source, [], debounce=3600)
    source.change(policy("deny"))
    assert completes(lambda: enf._wait_for_change(1, stop)) is True  # no sync for an hour
    enf._synced_at = time.monotonic()  # as if a sync had just begun: the rest of the debounce
    waited = threading.Thread(target=enf._wait_for_change, args=(1, stop))
    waited.start()
    waited.join(0.2)
    assert waited.is_alive()
    stop.set()
    waited.join(30)
    assert not waited.is_alive()
