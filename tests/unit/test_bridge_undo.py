"""ADD's undo steps (bridge_ops.on_failure): run in reverse on failure, never lost."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from tartan.cni.errors import IptablesFailure, KernelFailure
from tartan.cni.plugins.bridge_ops import on_failure


def failing(msg: str):
    def step() -> None:
        raise KernelFailure(msg)

    return step


def test_a_failed_undo_is_reported_in_the_details_of_the_error_that_triggered_it():
    with pytest.raises(IptablesFailure) as info, ExitStack() as undo:
        on_failure(undo, "host veth veth1234", failing("cannot delete link veth1234: busy"))
        raise IptablesFailure("applying table nat failed", details="line 3: -A X")
    assert info.value.msg == "applying table nat failed"
    assert info.value.details == (
        "line 3: -A X\nundoing host veth veth1234 failed, it may be left behind: "
        "cannot delete link veth1234: busy")


def test_every_undo_runs_in_reverse_even_after_one_fails():
    ran: list[str] = []
    with pytest.raises(KernelFailure) as info, ExitStack() as undo:
        on_failure(undo, "first", ran.append, "first")
        on_failure(undo, "second", failing("no"))
        on_failure(undo, "third", ran.append, "third")
        raise KernelFailure("route failed")
    assert ran == ["third", "first"]
    assert info.value.details == "undoing second failed, it may be left behind: no"


def test_an_error_that_is_not_tartans_gets_the_failure_as_a_note():
    with pytest.raises(ValueError) as info, ExitStack() as undo:
        on_failure(undo, "the masquerade rules", failing("iptables gone"))
        raise ValueError("bug")
    assert info.value.__notes__ == [
        "undoing the masquerade rules failed, it may be left behind: iptables gone"]


def test_nothing_is_undone_when_add_succeeds():
    ran: list[str] = []
    with ExitStack() as undo:
        on_failure(undo, "step", ran.append, "step")
        undo.pop_all()
    assert ran == []
