"""after_reply: deferred work runs after the reply in the server, at once in a plugin."""

from __future__ import annotations

from tartan.cni import after_reply


def test_without_a_collector_work_runs_at_once():
    done = []
    after_reply.later(lambda: done.append(1))
    assert done == [1]


def test_a_collector_holds_work_until_it_is_run_and_then_lets_go():
    done = []
    with after_reply.collecting() as pending:
        after_reply.later(lambda: done.append("a"))
        after_reply.later(lambda: done.append("b"))
        assert done == [] and len(pending) == 2
    assert after_reply.run(pending) == [] and done == ["a", "b"] and pending == []
    after_reply.later(lambda: done.append("c"))  # outside: at once again
    assert done == ["a", "b", "c"]


def test_one_failing_piece_does_not_stop_the_rest():
    done = []

    def broken() -> None:
        raise RuntimeError("link gone")

    failures = after_reply.run([broken, lambda: done.append("after")])
    assert [str(f) for f in failures] == ["link gone"] and done == ["after"]
