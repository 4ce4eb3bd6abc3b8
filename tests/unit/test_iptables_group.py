"""Group commit in the iptables applier: concurrent callers of one table share a read and a
restore; plans that collide run alone; a failed merged restore gives each caller its own
answer."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tartan.cni import errors
from tartan.kernel import iptables
from tartan.kernel.iptables import Chain, Iptables, Rule, Table

from fake_iptables import FakeIptables


class HeldFirstSave:
    """FakeIptables whose first iptables-save waits until released, so that the callers
    arriving meanwhile queue up behind the first one."""

    def __init__(self) -> None:
        self.fake = FakeIptables()
        self.release = threading.Event()
        self.entered = threading.Event()
        self.first = True

    def __call__(self, argv, stdin):
        if argv[0].endswith("-save") and self.first:
            self.first = False
            self.entered.set()
            assert self.release.wait(10)
        return self.fake(argv, stdin)

    def saves(self) -> int:
        return sum(argv[0].endswith("-save") for argv in self.fake.calls)


def wait_queued(count: int) -> None:
    """Until `count` callers wait in a queue behind the held batch."""
    for _ in range(1000):
        if sum(len(group.queue) for group in list(iptables._groups.values())) >= count:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{count} callers never queued")


def pod_table(i: int, chain: str | None = None) -> Table:
    name = chain or f"TARTAN-POD{i}"
    return Table("nat", chains=[Chain(name, [("-j", "MASQUERADE")])],
                 rules=[Rule("POSTROUTING", ("-s", f"10.1.0.{i}/32", "-j", name))])


def queued(runner: HeldFirstSave, tables: list[Table]) -> list:
    """Apply tables[0] first (its read is held), then the rest while it waits; each
    caller's result, or the error it got."""
    def apply(table: Table):
        try:
            return Iptables(4, backend="nft", runner=runner, verify=True).apply(table)
        except errors.CniError as exc:
            return exc

    with ThreadPoolExecutor(len(tables)) as pool:
        first = pool.submit(apply, tables[0])
        assert runner.entered.wait(10)
        rest = []
        for table in tables[1:]:  # one by one, so that the queue keeps this order
            rest.append(pool.submit(apply, table))
            wait_queued(len(rest))
        runner.release.set()
        return [first.result(), *(f.result() for f in rest)]


def test_callers_queued_behind_a_restore_share_one_read_and_one_restore():
    runner = HeldFirstSave()
    results = queued(runner, [pod_table(i) for i in range(1, 10)])
    assert results == [True] * 9
    assert len(runner.fake.restores) == 2 and runner.saves() == 2 + 9  # + a verify read each
    nat = runner.fake.chains(4, "nat")
    assert all(f"TARTAN-POD{i}" in nat for i in range(1, 10))
    assert len(nat["POSTROUTING"]) == 9


def test_without_verify_the_batch_is_one_save_and_one_restore():
    runner = HeldFirstSave()

    def apply(table: Table) -> bool:
        return Iptables(4, backend="nft", runner=runner).apply(table)

    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(apply, pod_table(1))
        assert runner.entered.wait(10)
        rest = [pool.submit(apply, pod_table(i)) for i in range(2, 7)]
        wait_queued(5)
        runner.release.set()
        assert first.result() and all(f.result() for f in rest)
    assert len(runner.fake.restores) == 2 and runner.saves() == 2


def test_plans_that_touch_the_same_chain_run_alone_after_the_batch():
    runner = HeldFirstSave()
    same = pod_table(2, chain="TARTAN-SHARED")
    results = queued(runner, [pod_table(1), same, same, pod_table(3)])
    assert results == [True, True, False, True]  # the second copy finds it done
    assert runner.fake.chains(4, "nat")["TARTAN-SHARED"] == [("-j", "MASQUERADE")]


def test_a_failing_merged_restore_gives_each_caller_its_own_answer():
    runner = HeldFirstSave()
    broken = Table("nat", rules=[Rule("POSTROUTING", ("-s", "10.1.0.9/32", "-j", "NOWHERE"))])
    results = queued(runner, [pod_table(1), pod_table(2), broken, pod_table(3)])
    assert results[:2] == [True, True] and results[3] is True
    assert isinstance(results[2], errors.IptablesFailure) and "NOWHERE" in results[2].msg
    nat = runner.fake.chains(4, "nat")
    assert {"TARTAN-POD2", "TARTAN-POD3"} <= nat.keys()


@pytest.mark.parametrize(("failure", "reported"), [
    (errors.IptablesFailure("cannot decide"), "cannot decide"),
    (KeyError("oops"), "KeyError"),  # a bug in one caller is that caller's error only
])
def test_a_failing_build_reaches_only_its_caller(failure, reported):
    runner = HeldFirstSave()

    def bad_build(live):
        raise failure

    with ThreadPoolExecutor(3) as pool:
        ipt = Iptables(4, backend="nft", runner=runner)
        first = pool.submit(ipt.apply, pod_table(1))
        assert runner.entered.wait(10)
        bad = pool.submit(ipt.apply_with, "nat", bad_build)
        good = pool.submit(ipt.apply, pod_table(2))
        wait_queued(2)
        runner.release.set()
        assert first.result() and good.result()
        with pytest.raises(errors.IptablesFailure, match=reported):
            bad.result()


def test_a_plan_using_a_chain_another_plan_deletes_runs_after_it():
    runner = HeldFirstSave()
    runner.fake.chains(4, "nat")["TARTAN-X"] = []
    delete_x = Table("nat", delete_chains=["TARTAN-X"])
    into_x = Table("nat", rules=[Rule("TARTAN-X", ("-j", "RETURN"))])
    results = queued(runner, [pod_table(1), delete_x, into_x])
    assert results[:2] == [True, True]
    # it runs after the deletion, as if it had come second, and gets its own answer
    assert isinstance(results[2], errors.IptablesFailure)
    assert "TARTAN-X" not in runner.fake.chains(4, "nat")


def test_callers_with_another_runner_are_not_held_by_this_batch():
    held, other = HeldFirstSave(), FakeIptables()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(Iptables(4, backend="nft", runner=held).apply, pod_table(1))
        assert held.entered.wait(10)
        elsewhere = pool.submit(Iptables(4, backend="nft", runner=other).apply, pod_table(2))
        assert elsewhere.result(timeout=10) is True  # done while the first is still held
        held.release.set()
        assert first.result() is True
    assert "TARTAN-POD2" in other.chains(4, "nat") and "TARTAN-POD2" not in held.fake.chains(
        4, "nat")
