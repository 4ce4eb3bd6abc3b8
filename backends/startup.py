"""tartand before it runs: what it waits for (the network config, the store, the Kubernetes
API, its Node's podCIDR), retried with backoff, logged once per change and shown in /status
(and so by `tartanctl status`) from the first second, since the HTTP endpoints answer before
the agent exists.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from tartan.backends.log import Log

if TYPE_CHECKING:
    from tartan.backends.daemon import Agent
    from tartan.backends.metrics import Metrics

T = TypeVar("T")
MAX_STARTUP_DELAY = 10.0  # seconds between tries while tartand waits to start


class NoNetConfig(Exception):
    """The store holds no network config and no --net-config names one: wait for one."""


class Startup:
    """What tartand waits for before it runs (shown in /status and logged), and the agent
    once there is one: the HTTP endpoints answer from the start."""

    def __init__(self, log: Log, metrics: Metrics, node_name: str) -> None:
        self.log, self.metrics, self.node_name = log, metrics, node_name
        self.agent: Agent | None = None
        self.waiting: dict[str, object] | None = None
        self.parts: dict[str, Callable[[], dict[str, object]]] = {}

    def healthy(self) -> bool:
        return self.agent.healthy() if self.agent is not None else True

    def ready(self) -> bool:
        return self.agent is not None and self.agent.ready

    def status(self) -> dict:
        if self.agent is not None:
            doc = self.agent.status()
        else:
            doc = {"node": {"name": self.node_name, "ready": False}, "peers": [],
                   **{key: part() for key, part in self.parts.items()}}
        if self.waiting is not None and not (self.agent is not None and self.agent.ready):
            doc["node"]["waitingFor"] = self.waiting
        return doc

    def wait(self, what: str, message: str, retry_in: float) -> None:
        previous = self.waiting
        self.waiting = {"what": what, "message": message, "retryIn": retry_in,
                        "since": previous["since"] if previous and previous["what"] == what
                        else round(time.time(), 3)}
        if previous is None or previous["message"] != message:
            self.log.warn("agent.waiting", waiting_for=what, message=message, retry_in=retry_in)

    def done(self) -> None:
        if self.waiting is not None:
            self.log.info("agent.wait_over", waited_for=self.waiting["what"])
        self.waiting = None


def waited_for(exc: Exception) -> str | None:
    """What a startup step that raised `exc` is waiting for (None: not something to wait
    for, the error stops the agent)."""
    from tartan.ipam.lease import LeaseContention, StoreUnavailable
    from tartan.ipam.lease_kube import KubeUnavailable, NodeNotReady

    if isinstance(exc, NoNetConfig):
        return "netConfig"
    if isinstance(exc, KubeUnavailable):
        return "kubeApi"
    if isinstance(exc, StoreUnavailable):
        return "store"
    if isinstance(exc, NodeNotReady):
        return exc.what
    if isinstance(exc, LeaseContention):
        return "lease"
    return None


def waiting_message(what: str, exc: Exception, args: argparse.Namespace) -> str:
    if what == "store":
        where = (f"etcd {args.etcd_endpoints}" if args.store == "etcd" else args.store)
        return f"the lease store {where} is unreachable: {exc}"
    return str(exc)


def retrying(step: Callable[[], T], stop: threading.Event, startup: Startup,
             args: argparse.Namespace) -> T | None:
    """Run `step` until what it waits for is there (an agent may start before etcd or the
    Kubernetes API does, or before its Node has a podCIDR); /status says what it is."""
    delay = 0.5
    while not stop.is_set():
        try:
            result = step()
        except Exception as exc:
            what = waited_for(exc)
            if what is None:
                raise
            startup.wait(what, waiting_message(what, exc, args), delay)
            stop.wait(delay)
            delay = min(delay * 2, MAX_STARTUP_DELAY)
            continue
        startup.done()
        return result
    return None
