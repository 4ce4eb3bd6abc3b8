"""`tartanctl lab trace` on a 2-node VXLAN lab: delivered for an allowed flow; for a flow a
policy denies, that policy and its direction; a drop by another component's rule; the
underlay losing the tunnel's packets; and no trace rule left behind, also after Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
import yaml
from lab_env import VENV_BIN, ctl, down_clean, lab_name, namespace_manifest, pod_manifest, policy

from tartan.debug.lab import Lab, UpOptions
from tartan.debug.lab_sys import in_netns

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(lab_name(), say=print)
    try:
        lab.up(UpOptions("vxlan", "sqlite", nodes=2, pods_per_node=0))
        a, b = pod_manifest("x", "a"), pod_manifest("x", "b")
        a["spec"]["nodeName"], b["spec"]["nodeName"] = "node1", "node2"
        made = ctl(lab, "apply", "-f", "-",
                   text=yaml.safe_dump_all([namespace_manifest("x"), a, b]))
        assert made.returncode == 0, made.stdout + made.stderr
        yield lab
    finally:
        down_clean(lab)


def trace(lab: Lab, *args: str) -> tuple[int, dict]:
    run = ctl(lab, "trace", "x/a", "x/b", "-o", "json", *args)
    assert run.returncode in (0, 1), run.stderr
    return run.returncode, json.loads(run.stdout)


def no_trace_rules_left(lab: Lab) -> bool:
    state = lab.load()
    return all("TARTAN-TRACE" not in subprocess.run(
        in_netns(node.netns, ["iptables-nft-save", "-t", "raw"]), capture_output=True,
        text=True, check=True).stdout for node in state.nodes)


def on(lab: Lab, netns: str, *argv: str) -> None:
    subprocess.run(in_netns(netns, list(argv)), check=True, capture_output=True)


def test_an_allowed_flow_is_delivered_at_every_hop(lab: Lab):
    code, result = trace(lab)
    assert code == 0 and result["delivered"] and result["outcome"] == "connected"
    assert [s["hop"] for s in result["steps"]] == [
        "node1/pod", "node1/veth", "node1/bridge", "node1/vxlan", "node1/uplink",
        "node2/uplink", "node2/vxlan", "node2/bridge", "node2/veth", "node2/pod"]
    assert all(s["seen"] for s in result["steps"])
    text = ctl(lab, "trace", "x/a", "x/b")
    assert text.returncode == 0 and text.stdout.splitlines()[-1] == "delivered (connected)"
    assert no_trace_rules_left(lab)


def test_a_flow_a_policy_denies_names_the_policy_and_direction(lab: Lab):
    deny = policy("x", "deny-b", {"podSelector": {"matchLabels": {"pod": "b"}},
                                  "policyTypes": ["Ingress"]})
    assert ctl(lab, "apply", "-f", "-", text=yaml.safe_dump(deny)).returncode == 0
    try:
        code, result = trace(lab)
        assert code == 1 and not result["delivered"]
        assert (result["policies"], result["direction"]) == (["x/deny-b"], "ingress")
        assert result["where"] == "node2/vxlan" and "TARTAN-NPI-" in result["rule"]
        assert result["cause"] == "denied by NetworkPolicy x/deny-b (ingress)"
    finally:
        ctl(lab, "delete", "-f", "-", text=yaml.safe_dump(deny))
    assert no_trace_rules_left(lab)


def test_another_components_drop_is_named_as_such(lab: Lab):
    node2 = lab.load().node("node2")
    assert node2 is not None
    b_ip = next(p.ip for p in lab.load().pods if p.key == "x/b")
    rule = ("FORWARD", "-d", f"{b_ip}/32", "-m", "comment", "--comment", "other-firewall",
            "-j", "DROP")
    on(lab, node2.netns, "iptables", "-I", *rule)
    try:
        code, result = trace(lab)
        assert code == 1 and result["cause"] == (
            "dropped by a rule of another component (FORWARD)")
        assert "other-firewall" in result["rule"]
    finally:
        on(lab, node2.netns, "iptables", "-D", *rule)


def test_the_underlay_losing_the_tunnel_is_named(lab: Lab):
    router = f"{lab.name}-router"
    rule = ("FORWARD", "-p", "udp", "--dport", "8472", "-j", "DROP")
    on(lab, router, "iptables", "-I", *rule)
    try:
        code, result = trace(lab)
        assert code == 1 and result["where"] == "node1/uplink"
        assert result["cause"].startswith("lost on the underlay between the nodes")
    finally:
        on(lab, router, "iptables", "-D", *rule)


def test_ctrl_c_leaves_no_trace_rule(lab: Lab):
    deny = policy("x", "deny-b", {"podSelector": {"matchLabels": {"pod": "b"}},
                                  "policyTypes": ["Ingress"]})
    assert ctl(lab, "apply", "-f", "-", text=yaml.safe_dump(deny)).returncode == 0
    try:
        run = subprocess.Popen([str(VENV_BIN / "tartanctl"), "lab", "trace", "--name", lab.name,
                                "x/a", "x/b"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        time.sleep(1.2)  # the trace chains are in, the denied probe is waiting
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=30)
        assert run.returncode == 130, err
    finally:
        ctl(lab, "delete", "-f", "-", text=yaml.safe_dump(deny))
    assert no_trace_rules_left(lab)


def test_a_missing_route_is_named(lab: Lab):
    """node1's tartand stopped (it would put the route back) and its route to node2's pods
    deleted: the probe leaves the pod and the node has nowhere to send it."""
    from tartan.debug import lab_agents

    state = lab.load()
    node1 = state.node("node1")
    assert node1 is not None
    b_ip = next(p.ip for p in state.pods if p.key == "x/b")
    lab_agents.stop_agent(node1)
    try:
        on(lab, node1.netns, "ip", "route", "del", tartans_route(node1.netns, b_ip))
        code, result = trace(lab)
        assert code == 1 and result["cause"].startswith(
            f"node1 has no route to {b_ip}'s pod subnet (it left by the default route")
    finally:
        lab.restart("node1")


def test_a_destination_that_is_neither_pod_nor_address_is_one_line(lab: Lab):
    run = ctl(lab, "trace", "x/a", "nonsense")
    assert run.returncode == 1 and run.stderr.splitlines() == [
        "tartanctl lab trace: error: 'nonsense' is neither a pod (NS/POD) nor an IP address"]
    capture = ctl(lab, "capture", "x/a", "--to", "999.1.1.1", "--count", "1")
    assert capture.returncode == 1 and capture.stderr.splitlines() == [
        "tartanctl lab capture: error: --to '999.1.1.1' is neither a pod (NS/POD) nor an IP "
        "address"]


def route_to(lab: Lab, netns: str, ip: str) -> tuple[str, str]:
    """(gateway, device) of the route to `ip`."""
    words = subprocess.run(in_netns(netns, ["ip", "-o", "route", "get", ip]),
                           capture_output=True, text=True, check=True).stdout.split()
    return words[words.index("via") + 1], words[words.index("dev") + 1]


def test_a_forward_policy_drop_without_tartans_accepts_is_named(lab: Lab):
    """Another component set FORWARD's policy to DROP, and Tartan's accepts are gone (node2's
    tartand stopped, its chain flushed)."""
    from tartan.debug import lab_agents

    node2 = lab.load().node("node2")
    assert node2 is not None
    lab_agents.stop_agent(node2)
    try:
        on(lab, node2.netns, "iptables", "-F", "TARTAN-FWD")
        on(lab, node2.netns, "iptables", "-P", "FORWARD", "DROP")
        code, result = trace(lab)
        assert code == 1 and result["rule"] == "node2: filter FORWARD policy DROP"
        assert result["cause"].startswith(
            "FORWARD's policy is DROP on node2 and no rule accepted the probe: another "
            "component (docker, a firewall) set the policy and Tartan's accepts (TARTAN-FWD)")
    finally:
        on(lab, node2.netns, "iptables", "-P", "FORWARD", "ACCEPT")
        lab.restart("node2")


def test_a_probe_bigger_than_the_tunnel_is_named_as_mtu(lab: Lab):
    """node1's VXLAN device shrunk under the pods' MTU (its tartand stopped: it would put the
    MTU back): a full-size probe with DF set stops at the bridge."""
    from tartan.debug import lab_agents

    node1 = lab.load().node("node1")
    assert node1 is not None
    lab_agents.stop_agent(node1)
    try:
        on(lab, node1.netns, "ip", "link", "set", "tartan.1", "mtu", "1400")
        code, result = trace(lab, "--protocol", "udp", "--size", "1450")
        assert code == 1 and result["where"] == "node1/bridge"
        assert result["cause"].startswith(
            "MTU: the probe is 1450 bytes with DF set and node1/vxlan (tartan.1 has MTU 1400)")
        small_code, small = trace(lab, "--protocol", "udp", "--size", "1400")
        assert small_code == 0 and small["delivered"], small
    finally:
        on(lab, node1.netns, "ip", "link", "set", "tartan.1", "mtu", "1450")
        lab.restart("node1")


def test_a_missing_fdb_entry_and_a_missing_neighbour_are_named(lab: Lab):
    """node1's tartand stopped, then the VXLAN entries of node2's VTEP taken away one by one:
    without the FDB entry the device drops the frame; without the neighbour entry the kernel
    cannot even make one."""
    from tartan.debug import lab_agents

    state = lab.load()
    node1 = state.node("node1")
    assert node1 is not None
    b_ip = next(p.ip for p in state.pods if p.key == "x/b")
    gateway, device = route_to(lab, node1.netns, b_ip)
    lab_agents.stop_agent(node1)
    try:
        neigh = subprocess.run(in_netns(node1.netns, ["ip", "neigh", "show", gateway, "dev",
                                                      device]), capture_output=True, text=True,
                               check=True).stdout.split()
        mac = neigh[neigh.index("lladdr") + 1]
        on(lab, node1.netns, "bridge", "fdb", "del", mac, "dev", device, "dst", node_ip(lab,
                                                                                      "node2"))
        code, result = trace(lab)
        assert code == 1 and result["where"] == "node1/vxlan"
        assert result["cause"].startswith(
            f"{device} has no FDB entry for the peer's VTEP MAC {mac} ({gateway})")
        on(lab, node1.netns, "ip", "neigh", "del", gateway, "dev", device)
        code, result = trace(lab)
        assert code == 1 and result["where"] == "node1/bridge"
        assert result["cause"].startswith(
            f"node1 has no neighbour entry for the peer's VTEP {gateway} on {device}")
    finally:
        lab.restart("node1")


def test_strict_rp_filter_is_named(lab: Lab):
    """node2 lost its route back to node1's pods (its tartand stopped) and filters strictly:
    what arrives from node1's pods on tartan.1 would leave by another device."""
    from tartan.debug import lab_agents

    state = lab.load()
    node2 = state.node("node2")
    assert node2 is not None
    a_ip = next(p.ip for p in state.pods if p.key == "x/a")
    lab_agents.stop_agent(node2)
    settings = ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.tartan/1.rp_filter")
    before = [subprocess.run(in_netns(node2.netns, ["sysctl", "-n", key]), capture_output=True,
                             text=True, check=True).stdout.strip() for key in settings]
    try:
        on(lab, node2.netns, "ip", "route", "del", tartans_route(node2.netns, a_ip))
        for key in settings:
            on(lab, node2.netns, "sysctl", "-qw", f"{key}=1")
        code, result = trace(lab)
        assert code == 1 and result["where"] == "node2/vxlan"
        assert result["cause"].startswith(
            f"strict rp_filter on node2 tartan.1 (net.ipv4.conf.tartan.1.rp_filter or .all is "
            f"1): the route back to {a_ip} leaves by ")
    finally:
        for key, value in zip(settings, before, strict=True):
            on(lab, node2.netns, "sysctl", "-qw", f"{key}={value}")
        lab.restart("node2")


def tartans_route(netns: str, ip: str) -> str:
    """The subnet of tartand's route (proto 152) that holds `ip`."""
    routes = subprocess.run(in_netns(netns, ["ip", "route", "show", "proto", "152"]),
                            capture_output=True, text=True, check=True).stdout
    return next(line.split()[0] for line in routes.splitlines()
                if ip.rsplit(".", 1)[0] + "." in line.split()[0])


def node_ip(lab: Lab, name: str) -> str:
    node = lab.load().node(name)
    assert node is not None
    return node.ip
