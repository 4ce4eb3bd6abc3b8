"""The enforcer on a real datapath: pods on a bridge in a throwaway node namespace.

Three pods made by the real tartan-bridge; policies go through the enforcer (compile, then
ipsets and iptables in the node namespace); traffic is real TCP and ICMP between the pods'
namespaces, with br_netfilter on, as on a node.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import threading

import pytest

from tartan.backends.policy import node_addresses
from tartan.kernel.netns import entered
from tartan.netpol.compiler import Compiled
from tartan.netpol.enforcer import Enforcer, ensure_bridge_netfilter, kernel_apply
from tartan.netpol.model import (
    Cluster,
    ContainerPort,
    IPBlock,
    Namespace,
    Peer,
    Pod,
    PolicyPort,
    Protocol,
    Rule,
)

from harness import eventually
from netpol_kit import EGRESS, LISTENER, StaticSource, policy, sel

pytestmark = pytest.mark.kernel




@pytest.fixture
def node(bridge_net):
    """Three pods a, b, c in namespace x, each listening on TCP 80; br_netfilter on."""
    pods = [bridge_net.add() for _ in range(3)]
    with entered(bridge_net.host.path):
        ensure_bridge_netfilter()
    servers = [subprocess.Popen(["ip", "netns", "exec", p.ns.name, sys.executable, "-c", LISTENER],
                                stdout=subprocess.PIPE, text=True) for p in pods]
    try:
        for server in servers:
            assert server.stdout is not None and server.stdout.readline() == "ready\n"
        yield bridge_net, dict(zip("abc", pods, strict=True))
    finally:
        for server in servers:
            server.kill()
            server.wait()


def cluster_of(pods, *policies, labels=None) -> Cluster:
    model = tuple(
        Pod("x", name, (labels or {}).get(name, {"pod": name}),
            (ipaddress.ip_address(p.address),), "node1",
            (ContainerPort(80, Protocol.TCP, "http"),))
        for name, p in pods.items())
    return Cluster((Namespace("x"),), model, tuple(policies))


def enforcer_in(net, source) -> Enforcer:
    apply = kernel_apply()

    def in_node(compiled: Compiled, previous: Compiled | None = None) -> int:
        with entered(net.host.path):
            return apply(compiled, previous)

    def addresses() -> list[str]:
        with entered(net.host.path):
            return node_addresses()

    return Enforcer(source, "node1", addresses, lambda *_: None, apply=in_node,
                    prepare=lambda: None)


def connects(src, dst_address: str, port: int = 80) -> bool:
    code = (f"import socket\ntry:\n socket.create_connection(('{dst_address}', {port}), 1)\n"
            "except OSError:\n raise SystemExit(1)\n")
    return subprocess.run(["ip", "netns", "exec", src.ns.name, sys.executable, "-c", code],
                          capture_output=True, check=False).returncode == 0


def test_isolation_allows_only_what_a_rule_allows_and_the_node_always(node):
    net, pods = node
    allow_b = policy("from-b", selector=sel(pod="a"),
                     ingress=(Rule((Peer(pod_selector=sel(pod="b")),)),))
    enforcer_in(net, StaticSource(cluster_of(pods, allow_b))).sync()
    a, b, c = pods["a"], pods["b"], pods["c"]
    assert connects(b, a.address)
    assert not connects(c, a.address)  # same node, same bridge: FORWARD via br_netfilter
    assert connects(a, c.address) and connects(c, b.address)  # not isolated
    assert net.host.run("ping", "-c", "1", "-W", "1", a.address, check=False).returncode == 0
    assert net.host.run("ping", "-c", "1", "-W", "1", c.address, check=False).returncode == 0


def test_a_named_port_is_resolved_on_the_pod_and_protocols_count(node):
    net, pods = node
    http = policy("http", ingress=(Rule(ports=(PolicyPort(Protocol.TCP, "http"),)),))
    enforcer_in(net, StaticSource(cluster_of(pods, http))).sync()
    a, b = pods["a"], pods["b"]
    assert connects(b, a.address, 80)
    ping = subprocess.run(["ip", "netns", "exec", b.ns.name, "ping", "-c", "1", "-W", "1",
                           a.address], capture_output=True, check=False)
    assert ping.returncode != 0  # ICMP is not TCP 80


@pytest.mark.parametrize("full", [True, False], ids=["full", "changes-only"])
def test_resyncs_under_traffic_never_drop_an_allowed_flow_or_pass_a_denied_one(node, full):
    net, pods = node
    a, b, c = pods["a"], pods["b"], pods["c"]
    allow_b = policy("from-b", selector=sel(pod="a"),
                     ingress=(Rule((Peer(pod_selector=sel(pod="b")),)),))
    source = StaticSource(cluster_of(pods, allow_b))
    enforcer = enforcer_in(net, source)
    enforcer.sync()
    flows = {name: subprocess.Popen(
        ["ip", "netns", "exec", src.ns.name, "ping", "-n", "-q", "-i", "0.01", "-W", "1",
         a.address], stdout=subprocess.PIPE, text=True) for name, src in (("b", b), ("c", c))}
    changes = 0
    try:
        for i in range(100):
            # each resync rewrites a's chain and refills the allowing rule's set: a pod with
            # no sandbox joins and leaves the set (b stays), and a second policy that allows
            # nobody more comes and goes on a
            ghost = Pod("x", "ghost", {"pod": "b"}, (ipaddress.ip_address(f"10.250.0.{150 + i}"),),
                        "node2")
            extra = (policy("more", selector=sel(pod="a"),
                            ingress=(Rule((Peer(pod_selector=sel(pod="zz")),)),)),) if i % 2 else ()
            base = cluster_of(pods, allow_b, *extra)
            source.cluster = Cluster(base.namespaces, (*base.pods, ghost), base.policies)
            source.revision += 1
            changes += enforcer.sync(full=full).changes
    finally:
        for flow in flows.values():
            flow.send_signal(2)
        out = {name: flow.communicate(timeout=10)[0] for name, flow in flows.items()}
    assert changes >= 100, "the resyncs changed nothing: the premise is not there"
    allowed, denied = (_counts(out["b"]), _counts(out["c"]))
    assert allowed[0] > 100 and allowed[1] >= allowed[0] - 1, out["b"]
    assert denied[0] > 100 and denied[1] == 0, out["c"]


def _counts(ping_output: str) -> tuple[int, int]:
    line = next(line for line in ping_output.splitlines() if "transmitted" in line)
    words = line.split()
    return int(words[0]), int(words[3])


def test_other_components_rules_and_sets_survive_and_a_restart_changes_nothing(node):
    net, pods = node
    net.host.run("ipset", "create", "KUBE-OTHER", "hash:ip")
    net.host.run("iptables", "-A", "FORWARD", "-m", "comment", "--comment", "kube-router",
                 "-j", "ACCEPT")
    deny = policy("deny")
    enforcer_in(net, StaticSource(cluster_of(pods, deny))).sync()
    enforcer_in(net, StaticSource(cluster_of(pods))).sync()  # policies gone: sets pruned
    again = enforcer_in(net, StaticSource(cluster_of(pods, deny)))
    assert again.sync().changes > 0
    fresh = enforcer_in(net, StaticSource(cluster_of(pods, deny)))  # a restarted agent
    assert fresh.sync().changes == 0
    saved = net.host.iptables_save("filter")
    assert "kube-router" in saved
    assert "KUBE-OTHER" in net.host.run("ipset", "list", "-n").stdout
    assert not connects(pods["b"], pods["a"].address)


def test_changes_applied_on_the_last_state_leave_what_a_full_sync_would(node):
    """A run of changes-only syncs (pods in and out of sets, chains made and deleted, sets
    made and pruned): a full sync after them finds nothing to change."""
    net, pods = node
    from_b = policy("from-b", selector=sel(pod="a"),
                    ingress=(Rule((Peer(pod_selector=sel(pod="b")),)),))
    to_c = policy("to-c", selector=sel(pod="b"), ingress=(Rule((), (PolicyPort(port=80),)),))
    steps = [(), (from_b,), (from_b, to_c), (to_c,), (policy("deny"),), ()]
    source = StaticSource(cluster_of(pods))
    enforcer = enforcer_in(net, source)
    enforcer.sync()
    for index, policies in enumerate(steps):
        source.cluster, source.revision = cluster_of(pods, *policies), index + 2
        result = enforcer.sync(full=False)
        assert not result.full
        assert enforcer_in(net, source).sync(full=True).changes == 0, policies
    assert connects(pods["b"], pods["a"].address)


def test_the_enforcer_thread_applies_a_change_soon_after_it_is_written(node):
    net, pods = node
    source = StaticSource(cluster_of(pods))
    changed = threading.Event()

    def wait(revision: int, timeout: float) -> int:
        changed.wait(timeout)
        return source.revision

    source.wait = wait  # type: ignore[method-assign]
    enforcer = enforcer_in(net, source)
    stop = threading.Event()
    thread = threading.Thread(target=enforcer.run, args=(stop,))
    thread.start()
    try:
        eventually(lambda: enforcer.last is not None, what="the first sync")
        assert connects(pods["b"], pods["a"].address)
        source.cluster, source.revision = cluster_of(pods, policy("deny")), 2
        changed.set()
        eventually(lambda: not connects(pods["b"], pods["a"].address), timeout=10,
                   what="the deny to be enforced")
    finally:
        stop.set()
        thread.join(30)


SERVICE_IP = "10.96.0.10"  # a ClusterIP, DNATed on the node as kube-proxy does


def test_policy_holds_after_a_service_dnat_on_the_node(node):
    """b and c reach a through a Service address that the node DNATs to a; a admits c only,
    so b is denied after the DNAT as it is without it. The node reaches a through it too."""
    net, pods = node
    a, b, c = pods["a"], pods["b"], pods["c"]
    dnat = ("-d", f"{SERVICE_IP}/32", "-p", "tcp", "--dport", "80", "-m", "comment",
            "--comment", "kube-proxy", "-j", "DNAT", "--to-destination", f"{a.address}:80")
    net.host.run("iptables", "-t", "nat", "-A", "PREROUTING", *dnat)
    net.host.run("iptables", "-t", "nat", "-A", "OUTPUT", *dnat)
    from_c = policy("from-c", selector=sel(pod="a"),
                    ingress=(Rule((Peer(pod_selector=sel(pod="c")),)),))
    for pod in (b, c):  # Services are reached through the pod's gateway, the node
        subprocess.run(["ip", "netns", "exec", pod.ns.name, "ip", "route", "add",
                        "10.96.0.0/12", "via", "10.250.0.1"], check=True)
    net.host.run("ip", "route", "add", "10.96.0.0/12", "dev", "cni0")  # a node's default route
    assert connects(b, SERVICE_IP), "the Service does not work without policies"
    enforcer_in(net, StaticSource(cluster_of(pods, from_c))).sync()
    assert connects(c, SERVICE_IP) and connects(c, a.address)
    assert not connects(b, SERVICE_IP) and not connects(b, a.address)
    node_to_a = net.host.run(sys.executable, "-c", f"import socket; socket.create_connection("
                             f"('{SERVICE_IP}', 80), 1)", check=False)
    assert node_to_a.returncode == 0, node_to_a.stderr


def test_a_pods_traffic_to_its_node_is_egress(node):
    """Pod to node is hooked in INPUT: an egress-isolated pod reaches the node's address only
    where an egress rule allows it; a pod not isolated reaches it anyway."""
    net, pods = node
    a, b = pods["a"], pods["b"]
    server = subprocess.Popen(["ip", "netns", "exec", net.host.name, sys.executable, "-c",
                               LISTENER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        with entered(net.host.path):
            gateway = next(address for address in node_addresses()
                           if ipaddress.ip_address(address) in ipaddress.ip_network(
                               f"{a.address}/24", strict=False))
        egress_none = policy("no-egress", selector=sel(pod="b"), types=EGRESS)
        source = StaticSource(cluster_of(pods, egress_none))
        enforcer = enforcer_in(net, source)
        enforcer.sync()
        assert connects(a, gateway) and not connects(b, gateway)
        to_node = policy("to-node", selector=sel(pod="b"), types=EGRESS, egress=(
            Rule((Peer(ip_block=IPBlock(ipaddress.ip_network(f"{gateway}/32"))),),
                 (PolicyPort(port=80),)),))
        source.cluster, source.revision = cluster_of(pods, egress_none, to_node), 2
        enforcer.sync(full=False)
        assert connects(b, gateway)
        assert not connects(b, a.address)  # that rule allows the node only
    finally:
        server.kill()
        server.wait()
