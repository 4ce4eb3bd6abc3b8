"""Denied packets counted on a real datapath: pods on a bridge in a throwaway node namespace
(as in test_netpol_datapath.py), the enforcer's counters read with iptables-save -c there, and
what /metrics would show."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tartan.backends.metrics import Metrics
from tartan.backends.policy import node_addresses
from tartan.kernel.iptables import Iptables
from tartan.kernel.netns import entered
from tartan.netpol.compiler import pod_chain
from tartan.netpol.counters import Denied
from tartan.netpol.enforcer import Enforcer, ensure_bridge_netfilter, kernel_apply, kernel_counters
from tartan.netpol.model import (
    Cluster,
    ContainerPort,
    Direction,
    Namespace,
    Peer,
    Pod,
    Protocol,
    Rule,
)

from netpol_kit import EGRESS, LISTENER, StaticSource, policy, sel

pytestmark = pytest.mark.kernel

FROM_B = policy("from-b", selector=sel(pod="a"),
                ingress=(Rule((Peer(pod_selector=sel(pod="b")),)),))
NOBODY = policy("nobody", selector=sel(pod="a"),
                ingress=(Rule((Peer(pod_selector=sel(pod="zz")),)),))
C_OUT = policy("c-out", selector=sel(pod="c"), types=EGRESS)



@pytest.fixture
def node(bridge_net):
    """Pods a, b, c in namespace x on one bridge; a listens on TCP 80; br_netfilter on."""
    servers: list[subprocess.Popen] = []
    try:
        pods = dict(zip("abc", [bridge_net.add() for _ in range(3)], strict=True))
        with entered(bridge_net.host.path):
            ensure_bridge_netfilter()
        servers.append(subprocess.Popen(
            ["ip", "netns", "exec", pods["a"].ns.name, sys.executable, "-c", LISTENER],
            stdout=subprocess.PIPE, text=True))
        assert servers[0].stdout is not None and servers[0].stdout.readline() == "ready\n"
        yield bridge_net, pods
    finally:
        for server in servers:
            server.kill()
            server.wait()


def cluster_of(pods, *policies) -> Cluster:
    model = tuple(Pod("x", name, {"pod": name}, (ipaddress.ip_address(p.address),), "node1",
                      (ContainerPort(80, Protocol.TCP, "http"),))
                  for name, p in pods.items())
    return Cluster((Namespace("x"),), model, tuple(policies))


def in_node(net, call):
    def run(*args):
        with entered(net.host.path):
            return call(*args)
    return run


def enforcer_in(net, source) -> Enforcer:
    return Enforcer(source, "node1", in_node(net, node_addresses), lambda *_: None,
                    apply=in_node(net, kernel_apply()), prepare=lambda: None,
                    counters=in_node(net, kernel_counters()))


def connects(src, dst_address: str, port: int = 80) -> bool:
    code = (f"import socket\ntry:\n socket.create_connection(('{dst_address}', {port}), 0.5)\n"
            "except OSError:\n raise SystemExit(1)\n")
    return subprocess.run(["ip", "netns", "exec", src.ns.name, sys.executable, "-c", code],
                          capture_output=True, check=False).returncode == 0


def denied(enforcer: Enforcer) -> dict[tuple[str, str], Denied]:
    enforcer.count_denied()
    return dict(enforcer.denied.totals)


def test_denied_packets_count_per_policy_and_direction_and_survive_a_rewrite(node):
    net, pods = node
    a, b, c = pods["a"], pods["b"], pods["c"]
    source = StaticSource(cluster_of(pods, FROM_B))
    enforcer = enforcer_in(net, source)
    enforcer.sync()
    assert connects(b, a.address) and connects(b, a.address)
    assert denied(enforcer) == {}  # an allowed flow adds nothing
    for _ in range(3):
        assert not connects(c, a.address)
    first = denied(enforcer)
    assert set(first) == {("x/from-b", "ingress")} and first[("x/from-b", "ingress")].packets >= 3
    assert connects(b, a.address) and denied(enforcer) == first

    # a second policy on a rewrites a's chain, whose counters start again at zero in the
    # kernel; the totals go on, and a drop now counts for both policies
    source.cluster, source.revision = cluster_of(pods, FROM_B, NOBODY), 2
    assert enforcer.sync().changes
    chain = pod_chain(cluster_of(pods).pods[0], Direction.INGRESS)
    with entered(net.host.path):
        assert Iptables(4).counters("filter", chain)[chain][-1].packets == 0
    assert denied(enforcer) == first
    assert not connects(c, a.address)
    second = denied(enforcer)
    more = second[("x/from-b", "ingress")].packets - first[("x/from-b", "ingress")].packets
    assert more > 0 and second[("x/nobody", "ingress")].packets == more

    # c isolated for egress: its attempts stop in its own chain, before a's
    source.cluster, source.revision = cluster_of(pods, FROM_B, NOBODY, C_OUT), 3
    enforcer.sync()
    assert not connects(c, a.address)
    third = denied(enforcer)
    assert third[("x/c-out", "egress")].packets > 0
    assert third[("x/from-b", "ingress")] == second[("x/from-b", "ingress")]

    metrics = Metrics()
    metrics.netpol.attach(enforcer.stats)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
               for s in f.samples}
    key = ("tartan_netpol_denied_packets_total", (("direction", "egress"), ("policy", "x/c-out")))
    assert samples[key] == third[("x/c-out", "egress")].packets
    assert samples[("tartan_netpol_isolated_pods", (("direction", "ingress"),))] == 1
    assert samples[("tartan_netpol_syncs_total", (("outcome", "ok"),))] == 3
