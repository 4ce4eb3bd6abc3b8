"""NetworkPolicy in tartand: the pod recorder on the CNI socket, and the enforcer's thread.

Both use the agent's store (the lease store holds the objects too). The enforcer runs beside
the routing loop and never stops it; on a plain stop its rules stay, like the routes. With the
Kubernetes API as the source there is no recorder (the API has the pods' addresses): what the
plugins leave in the CNI journal is still taken out, and discarded, as often.

Its metrics (`tartan_netpol_*`) are taken from it when /metrics is scraped. The denied-packet
counters are read from the kernel by every sync, and again by a scrape when the last reading
is more than `SCRAPE_REFRESH` seconds old: no timer, and a scraper that polls faster than
that does not cost an iptables-save each time.
"""

from __future__ import annotations

import threading

from pyroute2 import IPRoute

from tartan.backends.log import Log
from tartan.backends.metrics import Metrics
from tartan.backends.pod_records import PodRecorder
from tartan.cni import journal
from tartan.ipam.objects import ObjectStore
from tartan.kernel import addr
from tartan.netpol.compiler import Options
from tartan.netpol.enforcer import Enforcer, Stats, kernel_counters
from tartan.netpol.source import PolicySource, StoreSource

SCRAPE_REFRESH = 1.0  # seconds: the youngest counter reading a scrape reuses
DRAIN_INTERVAL = 2.0  # seconds between looks into the CNI journal (a scandir when empty)
WARNINGS = frozenset({"netpol.failed", "netpol.invalid_object", "netpol.counters_unread",
                      "netpol.repairing"})


def node_addresses() -> list[str]:
    """Every address of this node's namespace but loopback: what "the node" sends from."""
    with IPRoute() as ipr:
        found = [a.ip for link in ipr.get_links() for a in addr.list_(ipr, link["index"])]
    return sorted({str(ip) for ip in found if not ip.is_loopback and not ip.is_link_local})


class PolicyHost:
    def __init__(self, store: ObjectStore | None, node: str, log: Log, *, interval: float,
                 log_denied: bool, metrics: Metrics | None = None,
                 journal_dir: str = journal.DEFAULT_DIR,
                 source: PolicySource | None = None) -> None:
        """`source` None: the store's objects (StoreSource); the pods this node serves are
        recorded in `store` (none recorded without one: the Kubernetes API has them, and
        the journal in `journal_dir` is emptied)."""
        self.log, self.journal_dir = log, journal_dir
        self.recorder = PodRecorder(store, node, log, journal_dir) if store is not None \
            else None
        if source is None:
            assert store is not None, "a policy source or a store to read it from"
            source = StoreSource(store)
        self.source = source
        self.enforcer = Enforcer(source, node, node_addresses, self._report,
                                 options=Options(log=log_denied), interval=interval,
                                 counters=kernel_counters())
        self.thread: threading.Thread | None = None
        if metrics is not None:
            metrics.netpol.attach(self.stats)

    def _report(self, event: str, fields: dict[str, object]) -> None:
        level = self.log.warn if event in WARNINGS else self.log.info
        level(event, **fields)

    def stats(self) -> Stats:
        """What /metrics shows, with counters at most `SCRAPE_REFRESH` seconds old."""
        self.enforcer.count_denied(max_age=SCRAPE_REFRESH)
        return self.enforcer.stats()

    def start(self, stop: threading.Event) -> None:
        """Load this node's records and record what the journal holds (before the CNI
        socket serves: so the journal's requests come first), then run the enforcer and a
        drain of the journal every `DRAIN_INTERVAL` seconds (without a recorder, the drain
        discards)."""
        start = getattr(self.source, "start", None)
        if start is not None:  # a source that follows the Kubernetes API
            start()
        self.thread = threading.Thread(target=self.enforcer.run, args=(stop,),
                                       name="netpol", daemon=True)
        if self.recorder is not None:
            try:
                self.recorder.load()
            except Exception as exc:  # the store will be read again by every sync
                self.log.warn("pod.records_unread", error=f"{type(exc).__name__}: {exc}")
        self._drain()
        self.thread.start()
        threading.Thread(target=self._drain_every, args=(stop,), name="pod-journal",
                         daemon=True).start()

    def _drain(self) -> None:
        try:
            if self.recorder is None:
                if discarded := self._discard():
                    self.log.info("pod.journal_discarded", requests=discarded,
                                  note="NetworkPolicy reads the pods from the Kubernetes API")
            elif recorded := self.recorder.drain():
                self.log.info("pod.journal_recorded", requests=recorded)
        except Exception as exc:  # never the agent's end
            self.log.warn("pod.journal_unread", error=f"{type(exc).__name__}: {exc}")

    def _discard(self) -> int:
        """Empty the journal (nothing records it: the API has the pods); how many went."""
        found = journal.entries(self.journal_dir)
        for entry in found:
            journal.remove(entry.path)
        return len(found)

    def _drain_every(self, stop: threading.Event) -> None:
        while not stop.wait(DRAIN_INTERVAL):
            self._drain()

    def status(self) -> dict[str, object]:
        last = self.enforcer.last
        extra = {"source": "store" if isinstance(self.source, StoreSource) else "kube"}
        if last is None:
            return {"synced": False, "error": self.enforcer.failure or None, **extra}
        return {"synced": True, **extra, "revision": last.revision, "pods": last.pods,
                "policies": last.policies, "invalidObjects": last.problems,
                "lastSyncMs": round(last.seconds * 1000, 1), "lastSyncFull": last.full,
                "error": self.enforcer.failure or None}
