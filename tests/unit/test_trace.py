"""trace's pure parts: netfilter trace lines, the expected path, and the verdict."""

from __future__ import annotations

from tartan.debug import trace
from tartan.debug.capture_hops import Hop

PROBE = trace.Probe("10.244.1.2", "10.244.2.3", "tcp", 80, 40123)
DROP = (' TRACE: 2 6a7f3f1c filter:TARTAN-NPI-5c1e0c2a4b6d8e0f:rule:0x12:DROP  -4 -t filter -A '
        'TARTAN-NPI-5c1e0c2a4b6d8e0f -m comment --comment "x/b ingress denied, isolated by '
        'x/deny, x/web" -j DROP')


def hops(node: str, *names: str) -> list[Hop]:
    return [Hop(node, name, None, name, "") for name in names]


PATH = trace.expected_path(hops("node1", "pod", "veth", "bridge", "vxlan", "uplink"),
                           hops("node2", "pod", "veth", "bridge", "vxlan", "uplink"))


def test_the_probe_is_matched_by_its_own_source_port():
    assert PROBE.match() == ("-s", "10.244.1.2/32", "-d", "10.244.2.3/32", "-p", "tcp", "-m",
                             "tcp", "--sport", "40123", "--dport", "80")
    assert PROBE.bpf() == "tcp and host 10.244.1.2 and host 10.244.2.3 and port 40123"
    table = trace.trace_table(PROBE)
    assert [r.chain for r in table.rules] == ["PREROUTING", "OUTPUT"]
    assert trace.untrace_table().delete_chains == (trace.TRACE_CHAIN,)


def test_trace_lines_of_xtables_monitor():
    event = trace.parse_event("node2", DROP)
    assert event is not None and event.dropped()
    assert (event.table, event.chain, event.kind) == ("filter", "TARTAN-NPI-5c1e0c2a4b6d8e0f",
                                                      "rule")
    policy = trace.parse_event("node1", " TRACE: 2 6a7f3f1c filter:FORWARD:policy:DROP ")
    assert policy is not None and (policy.kind, policy.verdict) == ("policy", "DROP")
    assert trace.parse_event("node1", "PACKET: 2 6a7f3f1c IN=cni0 ...") is None


def test_the_path_runs_out_of_one_node_and_into_the_other():
    assert PATH[:3] == [("node1/pod", "out"), ("node1/veth", "in"), ("node1/bridge", "in")]
    assert PATH[5:] == [("node2/uplink", "in"), ("node2/vxlan", "in"), ("node2/bridge", "out"),
                        ("node2/veth", "out"), ("node2/pod", "in")]


def test_delivered_when_the_destination_pod_saw_it():
    result = trace.judge("f", PATH, list(PATH), [], "connected")
    assert result.delivered and trace.render(result).endswith("delivered (connected)\n")


def test_a_policy_drop_names_the_policies_and_the_direction():
    event = trace.parse_event("node2", DROP)
    assert event is not None
    result = trace.judge("f", PATH, PATH[:8], [event], "timed out")
    assert not result.delivered and result.where == "node2/bridge"
    assert (result.policies, result.direction) == (["x/deny", "x/web"], "ingress")
    assert result.cause == "denied by NetworkPolicy x/deny, x/web (ingress)"
    assert "rule:  node2: filter TARTAN-NPI-" in trace.render(result)


def test_another_components_drop_and_the_underlay_losing_it():
    other = trace.parse_event("node2", " TRACE: 2 1 filter:FORWARD:rule:0x3:DROP  -4 -t filter "
                                       "-A FORWARD -d 10.244.2.3/32 -j DROP")
    assert other is not None
    assert trace.judge("f", PATH, PATH[:7], [other], "timed out").cause == (
        "dropped by a rule of another component (FORWARD)")
    lost = trace.judge("f", PATH, PATH[:5], [], "timed out")
    assert lost.where == "node1/uplink" and lost.cause.startswith("lost on the underlay")
