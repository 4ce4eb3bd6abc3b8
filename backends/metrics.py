"""tartand's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.lease = Gauge("tartan_lease_info", "This node's subnet lease (1 while held)",
                           ["subnet", "public_ip", "backend"], registry=r)
        self.lease_expiry = Gauge("tartan_lease_expiry_timestamp_seconds",
                                  "When this node's lease expires unless renewed", registry=r)
        self.lease_acquisitions = Counter("tartan_lease_acquisitions_total",
                                          "Leases acquired (first start and after a loss)",
                                          registry=r)
        self.lease_renewals = Counter("tartan_lease_renewals_total", "Lease renewals",
                                      registry=r)
        self.peers = Gauge("tartan_peers", "Peers by how they are reached",
                           ["backend", "mode", "state"], registry=r)
        self.passes = Counter("tartan_reconcile_passes_total", "Reconcile passes", registry=r)
        self.corrections = Counter("tartan_reconcile_corrections_total",
                                   "Kernel changes made by reconcile passes after the first",
                                   registry=r)
        self.duration = Histogram("tartan_reconcile_duration_seconds",
                                  "Duration of one reconcile pass", registry=r,
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                           0.5, 1, 2.5))
        self.reconcile_failures = Counter("tartan_reconcile_failures_total",
                                          "Reconcile passes that failed", registry=r)
        self.store_errors = Counter("tartan_store_errors_total",
                                    "Failed calls to the lease store", registry=r)
        self.cni_requests = Histogram(
            "tartan_cni_request_duration_seconds", "CNI requests served on the agent's socket",
            ["command", "outcome"], registry=r,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5))
        self.ready = Gauge("tartan_ready", "1 once lease, subnet file and datapath are in place",
                           registry=r)

    def set_peers(self, counts: dict[tuple[str, str, str], int]) -> None:
        self.peers.clear()
        for (backend, mode, state), n in counts.items():
            self.peers.labels(backend, mode, state).set(n)
