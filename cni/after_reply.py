"""Work that may finish after the runtime has its answer.

Deleting a veth pair costs 20-40 ms of waiting in the kernel (the unregister waits out an
RCU grace period) while the pod is already off the network once its interface is down. In
the agent, a handler hands such work to `later`; the CNI server sends the reply first and
then runs it, still holding the container's lock, so a request that follows for the same
container waits for it. A plugin process has no one to answer early: `later` runs the work
at once, and the process exits only after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Work = Callable[[], None]

_pending: ContextVar[list[Work] | None] = ContextVar("tartan_after_reply", default=None)


def later(work: Work) -> None:
    """Run `work` after the reply when a server collects it, else now."""
    pending = _pending.get()
    if pending is None:
        work()
    else:
        pending.append(work)


@contextmanager
def collecting() -> Iterator[list[Work]]:
    """Collect what handlers defer in this context (the server's request thread)."""
    pending: list[Work] = []
    token = _pending.set(pending)
    try:
        yield pending
    finally:
        _pending.reset(token)


def run(pending: list[Work]) -> list[Exception]:
    """Run every deferred piece of work; one that fails does not stop the others."""
    failures: list[Exception] = []
    while pending:
        try:
            pending.pop(0)()
        except Exception as exc:  # reported by the caller, never raised
            failures.append(exc)
    return failures
