"""tartand's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:  # the enforcer loads only when network policy is on
    from tartan.netpol.enforcer import Stats


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
        self.netpol = NetpolCollector()
        r.register(self.netpol)

    def set_peers(self, counts: dict[tuple[str, str, str], int]) -> None:
        self.peers.clear()
        for (backend, mode, state), n in counts.items():
            self.peers.labels(backend, mode, state).set(n)


class NetpolCollector:
    """The enforcer's metrics, taken from it at every scrape (none while no enforcer runs).

    The denied totals are kept monotonic by the enforcer (netpol/counters.py), so they are
    exposed as counters even though they are read, not incremented, here.
    """

    def __init__(self) -> None:
        self.source: Callable[[], Stats] | None = None

    def attach(self, source: Callable[[], Stats]) -> None:
        self.source = source

    def describe(self) -> Iterator[Metric]:
        return iter(_netpol_families(None))

    def collect(self) -> Iterator[Metric]:
        return iter(_netpol_families(self.source()) if self.source else [])


def _netpol_families(stats: Stats | None) -> list[Metric]:
    packets = CounterMetricFamily(
        "tartan_netpol_denied_packets", "Packets dropped by NetworkPolicy, per policy and "
        "direction (a drop counts for every policy that isolates the pod)",
        labels=["policy", "direction"])
    octets = CounterMetricFamily("tartan_netpol_denied_bytes",
                                 "Bytes of the packets dropped by NetworkPolicy",
                                 labels=["policy", "direction"])
    pods = GaugeMetricFamily("tartan_netpol_isolated_pods",
                             "This node's pods that a policy isolates, per direction",
                             labels=["direction"])
    policies = GaugeMetricFamily("tartan_netpol_policies",
                                 "NetworkPolicies in the cluster at the last sync")
    seconds = GaugeMetricFamily("tartan_netpol_sync_seconds", "Duration of the last sync")
    syncs = CounterMetricFamily("tartan_netpol_syncs", "Enforcer syncs by outcome",
                                labels=["outcome"])
    families: list[Metric] = [packets, octets, pods, policies, seconds, syncs]
    if stats is None:
        return families
    for (policy, direction), denied in sorted(stats.denied.items()):
        packets.add_metric([policy, direction], denied.packets)
        octets.add_metric([policy, direction], denied.bytes)
    for direction, count in sorted(stats.isolated.items()):
        pods.add_metric([direction], count)
    for outcome, count in sorted(stats.syncs.items()):
        syncs.add_metric([outcome], count)
    if stats.last is not None:
        policies.add_metric([], stats.last.policies)
        seconds.add_metric([], stats.last.seconds)
    return families
