"""tartand's pure parts: log lines, masquerade tables, peer decisions."""

from __future__ import annotations

import dataclasses
import io
import ipaddress

import pytest

from tartan.backends import log, masq
from tartan.backends.daemon import Agent, FailureReport, NoLease
from tartan.backends.hostgw import HostGw, HostGwConfig, peer_route
from tartan.backends.registry import NodeInfo
from tartan.backends.vxlan import Vxlan, VxlanConfig, vtep_mac
from tartan.ipam.lease import Lease, LeaseAttrs
from tartan.ipam.netconf import NetworkConfig
from tartan.kernel.errors import KernelFailure
from tartan.kernel.iptables import Iptables

from fake_iptables import FakeIptables

NET = ipaddress.ip_network("10.244.0.0/16")
OWN = ipaddress.ip_network("10.244.3.0/24")
NODE = NodeInfo("eth0", 2, 1500, "198.18.1.2", (ipaddress.ip_network("198.18.1.0/24"),))


def lease(subnet: str, ip: str, kind: str = "vxlan", mac: str = "02:00:00:00:00:09") -> Lease:
    data = {"VNI": 1, "VtepMAC": mac} if kind == "vxlan" else {}
    return Lease(ipaddress.ip_network(subnet), LeaseAttrs(ip, kind, data), 0.0, 1)


def test_only_host_gw_over_a_big_tcp_uplink_gives_pods_big_packets():
    big = dataclasses.replace(NODE, iface_gso_max=196608)
    plain = dataclasses.replace(NODE, iface_gso_max=65536)
    net = NetworkConfig(NET, 24, OWN, OWN, {"type": "host-gw"})
    assert HostGw(HostGwConfig(), net, big).pod_gso_max_size() == 196608
    assert HostGw(HostGwConfig(), net, plain).pod_gso_max_size() == 0
    huge = dataclasses.replace(NODE, iface_gso_max=1 << 20)  # more than a pod may be given
    assert HostGw(HostGwConfig(), net, huge).pod_gso_max_size() == 524288
    vx = NetworkConfig(NET, 24, OWN, OWN, {"type": "vxlan", "directrouting": True})
    assert Vxlan(VxlanConfig(direct_routing=True), vx, big).pod_gso_max_size() == 0


def test_log_line_is_logfmt_and_quotes_what_needs_it():
    out = io.StringIO()
    log.Log(out).warn("peer.skipped", subnet=OWN, reason='not on "segment"', skip=None)
    text = out.getvalue()
    assert " level=warn event=peer.skipped subnet=10.244.3.0/24 " in text
    assert 'reason="not on \\"segment\\""' in text and "skip=" not in text
    assert text.count("\n") == 1


def test_masquerade_rules_leave_pod_to_pod_alone_and_are_idempotent():
    fake = FakeIptables()
    ipt = Iptables(4, backend="nft", runner=fake)
    assert masq.apply(NET, OWN, True, ipt) == 2
    nat = fake.chains(4, "nat")[masq.POSTROUTING_CHAIN]
    assert nat[0][:4] == ("-s", "10.244.3.0/24", "-d", "10.244.0.0/16")
    assert any("MASQUERADE" in rule for rule in nat)
    assert fake.chains(4, "filter")["FORWARD"][0][-1] == masq.FORWARD_CHAIN
    restores = len(fake.restores)
    assert masq.apply(NET, OWN, True, ipt) == 0
    assert len(fake.restores) == restores


def test_turning_masquerade_off_removes_the_chain():
    fake = FakeIptables()
    ipt = Iptables(4, backend="nft", runner=fake)
    masq.apply(NET, OWN, True, ipt)
    masq.apply(NET, OWN, False, ipt)
    assert masq.POSTROUTING_CHAIN not in fake.chains(4, "nat")
    assert masq.FORWARD_CHAIN in fake.chains(4, "filter")


def test_host_gw_routes_peers_on_the_segment_and_explains_the_others():
    spec, state = peer_route(lease("10.244.4.0/24", "198.18.1.3", "host-gw"), NODE)
    assert spec.gw == "198.18.1.3" and state.mode == "host-gw"
    spec, state = peer_route(lease("10.244.5.0/24", "198.18.2.3", "host-gw"), NODE)
    assert spec is None and state.state == "skipped"
    assert "198.18.2.3" in state.reason and "198.18.1.0/24" in state.reason


def test_vtep_mac_is_stable_unicast_and_local(tmp_path):
    machine = tmp_path / "machine-id"
    machine.write_text("abc\n")
    first = vtep_mac("198.18.1.2", 1, machine)
    assert first == vtep_mac("198.18.1.2", 1, machine)
    assert first != vtep_mac("198.18.1.3", 1, machine)
    assert int(first.split(":")[0], 16) & 0x03 == 0x02


def test_a_reconcile_failure_is_logged_once_while_it_repeats():
    out = io.StringIO()
    report = FailureReport(log.Log(out))
    for _ in range(3):
        report.failed(KernelFailure("cannot add route 10.244.4.0/24: File exists"))
    report.succeeded()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "event=reconcile.failed" in lines[0] and "traceback" not in lines[0]
    assert 'error="KernelFailure: cannot add route 10.244.4.0/24: File exists"' in lines[0]
    assert "event=reconcile.recovered failed_passes=3" in lines[1]


def test_a_bug_in_a_pass_logs_its_traceback_on_the_same_line_once():
    out = io.StringIO()
    report = FailureReport(log.Log(out))
    for _ in range(2):
        try:
            {}["peer"]
        except KeyError as exc:
            report.failed(exc)
    (only,) = out.getvalue().splitlines()
    assert "event=reconcile.failed error=\"KeyError: 'peer'\"" in only
    assert 'traceback="Traceback (most recent call last):\\n' in only
    assert 'in test_a_bug_in_a_pass_logs_its_traceback' in only


def test_a_different_failure_is_logged_again():
    out = io.StringIO()
    report = FailureReport(log.Log(out))
    report.failed(KernelFailure("one"))
    report.failed(KernelFailure("two"))
    assert len(out.getvalue().splitlines()) == 2


def test_the_lease_is_there_only_once_acquired():
    backend = HostGw(HostGwConfig(), NetworkConfig(NET, 24, OWN, OWN), NODE)
    agent = Agent(None, None, None, NODE, backend, None, log.Log(io.StringIO()), None)
    assert not agent.holds_lease
    with pytest.raises(NoLease):
        _ = agent.lease
    assert agent.status()["node"]["subnet"] is None  # /status answers before the lease
