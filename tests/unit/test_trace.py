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


def test_a_forward_policy_drop_is_told_from_a_rule():
    policy = trace.parse_event("node2", " TRACE: 2 1 filter:FORWARD:policy:DROP ")
    assert policy is not None
    result = trace.judge("f", PATH, PATH[:7], [policy], "timed out")
    assert result.rule == "node2: filter FORWARD policy DROP"
    assert result.cause.startswith("FORWARD's policy is DROP on node2 and no rule accepted")


def test_the_probes_length_and_the_sizes_it_takes():
    assert PROBE.length == 60
    assert trace.Probe("a", "b", "udp", 53, 40000).length == 28 + len(trace.PAYLOAD)
    assert trace.Probe("a", "b", "icmp", 0, 40000).length == 84
    assert trace.new_probe("a", "b", "udp", 53, 1450).length == 1450
    for protocol, size, message in (("tcp", 1400, "--size needs --protocol udp or icmp"),
                                    ("udp", 20, "--size 20: an IP packet of 29 to 65535")):
        try:
            trace.new_probe("a", "b", protocol, 80, size)
        except trace.TraceError as exc:
            assert str(exc).startswith(message)
        else:
            raise AssertionError("accepted")


def test_where_the_probe_vanished_is_the_hop_after_the_last_that_saw_it():
    from tartan.debug import trace_causes

    every = {h.label: h for h in hops("node1", "pod", "veth", "bridge", "vxlan", "uplink")
             + hops("node2", "pod", "veth", "bridge", "vxlan", "uplink")}
    steps = [(hop, direction, i < 3) for i, (hop, direction) in enumerate(PATH)]
    where = trace_causes.vanishing(steps, every, "10.244.1.2", "10.244.2.3", 1450)
    assert where is not None and where.tunnelled and where.length == 1450
    assert (where.last and where.last.label, where.last_direction,
            where.missing.label) == ("node1/bridge", "in", "node1/vxlan")
    assert where.src_node is not None and where.src_node.label == "node1/veth"
    nowhere = trace_causes.vanishing([(h, d, False) for h, d in PATH], every, "a", "b", 60)
    assert nowhere is not None and nowhere.last is None and nowhere.missing.label == "node1/pod"
    assert trace_causes.vanishing([(h, d, True) for h, d in PATH], every, "a", "b", 60) is None


def test_legacy_trace_lines_are_the_probes_rules_by_number():
    from tartan.debug import trace_legacy
    from tartan.kernel.iptables import LiveTable

    line = ("TRACE: filter:FORWARD:rule:2 IN=cni0 OUT=cni0 PHYSIN=veth1 MAC=aa:bb:cc:dd:ee:ff:"
            "11:22:33:44:55:66:08:00 SRC=10.244.1.2 DST=10.244.2.3 LEN=60 PROTO=TCP SPT=40123 "
            "DPT=80 SYN")
    reply = line.replace("SRC=10.244.1.2 DST=10.244.2.3", "SRC=10.244.2.3 DST=10.244.1.2")
    policy = line.replace("rule:2", "policy:3")
    found = trace_legacy.events([line, reply, "eth0: link up", policy], [("node1", "/x")],
                                "10.244.1.2", "10.244.2.3")
    assert found == [("node1", "filter", "FORWARD", "rule", 2),
                     ("node1", "filter", "FORWARD", "policy", 3)]
    live = LiveTable("filter", {"FORWARD": [("-p", "udp", "-j", "ACCEPT"),
                                            ("-d", "10.244.2.3/32", "-m", "comment",
                                             "--comment", "a firewall", "-j", "DROP")]},
                     {"FORWARD": "DROP"})
    assert trace_legacy.rule_of(live, "FORWARD", "rule", 2) == (
        "DROP", '-A FORWARD -d 10.244.2.3/32 -m comment --comment "a firewall" -j DROP')
    assert trace_legacy.rule_of(live, "FORWARD", "policy", 3) == ("DROP", "")
    assert trace_legacy.rule_of(live, "FORWARD", "rule", 9) == ("", "")
