"""The policy compiler, by what its output does: which packets the compiled rules accept.

Packets go through tests/netpol_sim.py, an interpreter of the rules the compiler writes.
Two nodes: a packet between them passes the source node's FORWARD (egress of its pod) and
then the destination node's (ingress of its pod); on one node, one FORWARD does both.
"""

from __future__ import annotations

import ipaddress

import pytest

from tartan.netpol.compiler import HOOKS, SET_PREFIX, Options
from tartan.netpol.model import (
    ContainerPort,
    IPBlock,
    LabelSelector,
    Operator,
    Peer,
    Pod,
    PolicyPort,
    Protocol,
    Requirement,
    Rule,
)

from netpol_kit import (
    ALL,
    BOTH,
    EGRESS,
    PODS,
    allowed,
    compiled,
    in_ns,
    policy,
    reachable_from,
    sel,
)
from netpol_sim import Packet, Unsupported, Walk, verdict

# -- nothing isolated ---------------------------------------------------------------


def test_without_policies_everything_is_allowed_and_no_pod_has_a_chain():
    nodes = compiled()
    assert reachable_from(nodes, "x/a") == ALL
    for out in nodes.values():
        assert sorted(c.name for c in out.chains) == sorted(HOOKS.values())
        assert [r.chain for r in out.hooks] == list(HOOKS)
        assert all(r.insert for r in out.hooks)


# -- ingress ------------------------------------------------------------------------


def test_default_deny_ingress_isolates_only_the_namespace_it_is_in():
    nodes = compiled(policy("deny"))
    for src in ALL:
        assert reachable_from(nodes, src) == ALL - in_ns("x")
    assert not allowed(nodes, "x/a", "x/b")  # same node, same namespace


def test_replies_of_allowed_connections_pass_even_into_an_isolated_pod():
    nodes = compiled(policy("deny"))
    reply = Packet("10.244.2.2", "10.244.1.2", "tcp", 40000, established=True)
    assert verdict(nodes["node1"], "FORWARD", reply) == "ACCEPT"


def test_allow_all_ingress_with_an_empty_rule():
    nodes = compiled(policy("deny"), policy("all", ingress=(Rule(),)))
    assert reachable_from(nodes, "z/c") == ALL


def test_same_namespace_only():
    nodes = compiled(policy("same", ingress=(Rule((Peer(pod_selector=LabelSelector()),)),)))
    assert reachable_from(nodes, "x/c") == ALL
    assert reachable_from(nodes, "y/a") == ALL - in_ns("x")


def test_namespace_by_label_and_by_expression():
    by_label = compiled(policy("y", ingress=(Rule((Peer(namespace_selector=sel(ns="y")),)),)))
    assert {s for s in ALL if allowed(by_label, s, "x/a")} == in_ns("y")
    not_y = LabelSelector((), (Requirement("ns", Operator.NOT_IN, frozenset({"y"})),))
    by_expr = compiled(policy("not-y", ingress=(Rule((Peer(namespace_selector=not_y),)),)))
    assert {s for s in ALL if allowed(by_expr, s, "x/a")} == in_ns("x", "z")


def test_pod_and_namespace_in_one_peer_is_and_in_two_peers_is_or():
    one = compiled(policy("and", ingress=(Rule((
        Peer(pod_selector=sel(pod="b"), namespace_selector=sel(ns="y")),)),)))
    assert {s for s in ALL if allowed(one, s, "x/a")} == {"y/b"}
    two = compiled(policy("or", ingress=(Rule((
        Peer(pod_selector=sel(pod="b")), Peer(namespace_selector=sel(ns="y")))),)))
    assert {s for s in ALL if allowed(two, s, "x/a")} == {"x/b"} | in_ns("y")


def test_one_port_and_its_protocol():
    nodes = compiled(policy("80", ingress=(Rule(ports=(PolicyPort(Protocol.TCP, 80),)),)))
    assert allowed(nodes, "y/a", "x/a", 80)
    assert not allowed(nodes, "y/a", "x/a", 81)
    assert not allowed(nodes, "y/a", "x/a", 80, "udp")


def test_end_port_ranges():
    nodes = compiled(policy("range", ingress=(Rule(ports=(
        PolicyPort(Protocol.TCP, 53, 80),)),)))
    assert [allowed(nodes, "y/a", "x/a", p) for p in (52, 53, 80, 81)] == [
        False, True, True, False]


def test_a_named_port_is_resolved_on_each_destination_pod():
    renamed = tuple(
        Pod(p.namespace, p.name, p.labels, p.ips, p.node,
            (ContainerPort(81, Protocol.TCP, "serve-80-tcp"),)) if p.key == "x/b" else p
        for p in PODS)
    nodes = compiled(policy("named", ingress=(Rule(ports=(
        PolicyPort(Protocol.TCP, "serve-80-tcp"),)),)), pods=renamed)
    assert allowed(nodes, "y/a", "x/a", 80, pods=renamed)
    assert not allowed(nodes, "y/a", "x/a", 81, pods=renamed)
    assert allowed(nodes, "y/a", "x/b", 81, pods=renamed)  # x/b calls 81 serve-80-tcp
    assert not allowed(nodes, "y/a", "x/b", 80, pods=renamed)


def test_sctp_rules_are_written_with_the_sctp_match():
    nodes = compiled(policy("sctp", ingress=(Rule(ports=(PolicyPort(Protocol.SCTP, 80),)),)))
    assert allowed(nodes, "y/a", "x/a", 80, "sctp")
    assert not allowed(nodes, "y/a", "x/a", 80, "tcp")
    args = [r for c in nodes["node1"].chains for r in c.rules if "sctp" in r]
    assert args and all(r[:4] == ("-p", "sctp", "-m", "sctp") for r in args)


def test_the_node_always_reaches_its_own_pods():
    nodes = compiled(policy("deny"))
    from_node = Packet("198.18.1.11", "10.244.1.2", "tcp", 80)
    assert verdict(nodes["node1"], "OUTPUT", from_node) == "ACCEPT"
    assert verdict(nodes["node1"], "FORWARD", from_node) == "ACCEPT"
    other_node = Packet("198.18.1.12", "10.244.1.2", "tcp", 80)
    assert verdict(nodes["node1"], "FORWARD", other_node) == "DROP"


def test_host_network_pods_are_never_selected():
    host = Pod("x", "h", {"pod": "a"}, (ipaddress.ip_address("198.18.1.11"),), "node1",
               host_network=True)
    nodes = compiled(policy("deny", selector=sel(pod="a")), pods=(*PODS, host))
    chains = [c.name for c in nodes["node1"].chains]
    assert len([c for c in chains if c.startswith("TARTAN-NPI-")]) == 1  # x/a only


# -- egress -------------------------------------------------------------------------


def test_default_deny_egress_and_the_pods_traffic_to_its_node_is_egress():
    nodes = compiled(policy("deny-out", types=EGRESS))
    assert reachable_from(nodes, "x/a") == set()
    assert reachable_from(nodes, "y/a") == ALL
    to_node = Packet("10.244.1.2", "198.18.1.11", "tcp", 10250)
    assert verdict(nodes["node1"], "INPUT", to_node) == "DROP"
    assert verdict(nodes["node1"], "INPUT", Packet("10.244.2.2", "198.18.1.11")) == "ACCEPT"


def test_egress_to_a_cidr_with_an_except():
    block = IPBlock(ipaddress.ip_network("10.244.0.0/16"),
                    (ipaddress.ip_network("10.244.2.0/24"),))
    nodes = compiled(policy("cidr", egress=(Rule((Peer(ip_block=block),)),), types=EGRESS))
    assert reachable_from(nodes, "x/a") == ALL - in_ns("y")


def test_egress_to_everything_but_a_cidr_needs_no_slash_zero_set():
    block = IPBlock(ipaddress.ip_network("0.0.0.0/0"), (ipaddress.ip_network("10.244.3.0/24"),))
    nodes = compiled(policy("any", egress=(Rule((Peer(ip_block=block),)),), types=EGRESS))
    assert reachable_from(nodes, "x/a") == ALL - in_ns("z")
    assert all("0.0.0.0/0" not in s.members for s in nodes["node1"].sets)


def test_egress_named_ports_use_address_port_sets_of_the_destinations():
    nodes = compiled(policy("named-out", egress=(Rule(
        (Peer(namespace_selector=sel(ns="y")),),
        (PolicyPort(Protocol.TCP, "serve-81-tcp"),)),), types=EGRESS))
    assert allowed(nodes, "x/a", "y/b", 81)
    assert not allowed(nodes, "x/a", "y/b", 80)
    assert not allowed(nodes, "x/a", "z/b", 81)
    (named,) = [s for s in nodes["node1"].sets if s.type == "hash:ip,port"]
    assert named.members == {"10.244.2.2,tcp:81", "10.244.2.3,tcp:81", "10.244.2.4,tcp:81"}


def test_ingress_and_egress_together_and_policies_add_up():
    nodes = compiled(
        policy("in", selector=sel(pod="a"), types=BOTH,
               ingress=(Rule((Peer(pod_selector=sel(pod="b")),)),),
               egress=(Rule((Peer(namespace_selector=sel(ns="z")),)),)),
        policy("more-out", selector=sel(pod="a"), types=EGRESS,
               egress=(Rule((Peer(pod_selector=sel(pod="c")),)),)))
    assert {s for s in ALL if allowed(nodes, s, "x/a")} == {"x/b"}
    assert reachable_from(nodes, "x/a") == in_ns("z") | {"x/c"}


def test_same_node_traffic_meets_the_egress_chain_and_then_the_ingress_chain():
    nodes = compiled(policy("out-ok", ns="y", types=EGRESS, egress=(Rule(),)),
                     policy("deny"))
    walk = Walk(nodes["node1"], Packet("10.244.2.2", "10.244.1.3", "tcp", 80))
    assert walk.hook("FORWARD") == "DROP"
    assert walk.comments == ["y/out-ok egress rule 0",
                             "x/b ingress denied, isolated by x/deny"]


# -- what is written ----------------------------------------------------------------


def test_the_final_drop_is_logged_with_a_prefix_naming_the_policy():
    nodes = compiled(policy("deny"), policy("also"), options=Options(log=True))
    walk = Walk(nodes["node1"], Packet("10.244.2.2", "10.244.1.2", "tcp", 80))
    assert walk.hook("FORWARD") == "DROP"
    assert walk.logged == ["tartan-np ingress x/also +1"]
    chain = next(c for c in nodes["node1"].chains if c.name.startswith("TARTAN-NPI-"))
    assert [r[-1] for r in chain.rules][-2:] == ["100", "DROP"]  # NFLOG only at the end


def test_every_rule_names_its_policy_and_rule_index():
    nodes = compiled(policy("two", ingress=(Rule(ports=(PolicyPort(Protocol.TCP, 80),)),
                                            Rule(ports=(PolicyPort(Protocol.UDP, 81),)))))
    chain = next(c for c in nodes["node1"].chains if c.name.startswith("TARTAN-NPI-"))
    notes = [r[r.index("--comment") + 1] for r in chain.rules]
    assert notes[1:3] == ["x/two ingress rule 0", "x/two ingress rule 1"]


def test_equal_peers_of_different_policies_share_one_set_with_a_stable_name():
    expr = LabelSelector((), (Requirement("pod", Operator.IN, frozenset({"a", "b", "c"})),))
    peer = Peer(pod_selector=expr)
    first = compiled(policy("p1", ingress=(Rule((peer,)),)),
                     policy("p2", ingress=(Rule((peer,)),)))["node1"]
    pod_sets = [s for s in first.sets if s.name.startswith(f"{SET_PREFIX}P")]
    assert len(pod_sets) == 1
    again = compiled(policy("p2", ingress=(Rule((peer,)),)))["node1"]
    assert again.set_names() == first.set_names()
    assert all(len(s.name) <= 31 for s in first.sets)


def test_a_pods_chain_does_not_grow_with_other_pods_or_policies():
    one = compiled(policy("deny"))["node1"]
    many = compiled(policy("deny"), *(policy(f"p{i}", ns="z", ingress=(Rule(),))
                                      for i in range(50)))["node1"]
    chain = next(c for c in one.chains if c.name.startswith("TARTAN-NPI-"))
    same = next(c for c in many.chains if c.name == chain.name)
    assert same.rules == chain.rules


def test_stale_tartan_chains_are_deleted_and_others_left_alone():
    from tartan.kernel.iptables import LiveTable

    live = LiveTable("filter", {"FORWARD": [], "TARTAN-NPI-0123456789abcdef": [],
                                "KUBE-FORWARD": [], "TARTAN-NP-FWD": []})
    table = compiled()["node1"].table(live)
    assert table.delete_chains == ("TARTAN-NPI-0123456789abcdef",)


def test_the_interpreter_refuses_what_it_does_not_know():
    nodes = compiled(policy("deny"))
    nodes["node1"].hooks[0] = type(nodes["node1"].hooks[0])(
        "FORWARD", ("-m", "physdev", "--physdev-in", "veth0", "-j", "DROP"))
    with pytest.raises(Unsupported):
        verdict(nodes["node1"], "FORWARD", Packet("10.244.2.2", "10.244.1.2"))


def test_a_compile_that_reuses_the_last_ones_sets_gives_what_a_fresh_one_gives():
    from tartan.netpol.compiler import Reuse, compile_node
    from tartan.netpol.model import Cluster

    from netpol_kit import NAMESPACES, PODS

    from_b = policy("from-b", selector=sel(pod="a"),
                    ingress=(Rule((Peer(pod_selector=sel(pod="b")),)),))
    from_y = policy("from-y", selector=sel(pod="a"), ingress=(Rule((Peer(
        namespace_selector=sel(ns="y")),), (PolicyPort(port="serve-80-tcp"),)),))
    reuse = Reuse()
    steps = [Cluster(NAMESPACES, PODS, (from_b,)), Cluster(NAMESPACES, PODS, (from_b, from_y))]
    steps.append(Cluster(NAMESPACES, PODS, steps[1].policies))
    fewer = PODS[1:]
    steps.append(Cluster(NAMESPACES, fewer, steps[1].policies))  # other pods: found again
    results = [compile_node(cluster, "node1", ["198.18.1.11"], reuse=reuse) for cluster in steps]
    for cluster, result in zip(steps, results, strict=True):
        fresh = compile_node(cluster, "node1", ["198.18.1.11"])
        assert (result.sets, result.chains, result.hooks) == (fresh.sets, fresh.chains,
                                                              fresh.hooks)
    peers = (f"{SET_PREFIX}P", f"{SET_PREFIX}Q")  # the sets whose members are found
    shared = {name for name in results[0].set_names() & results[1].set_names()
              if name.startswith(peers)}
    assert shared, "the premise: a set both compiles have"
    first = {s.name: s for s in results[0].sets}
    assert all(s is first[s.name] for s in results[1].sets if s.name in shared)  # reused
    assert reuse.pods is fewer
