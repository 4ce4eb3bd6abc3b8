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
        routes = subprocess.run(in_netns(node1.netns, ["ip", "route", "show", "proto", "152"]),
                                capture_output=True, text=True, check=True).stdout
        subnet = next(line.split()[0] for line in routes.splitlines()
                      if b_ip.rsplit(".", 1)[0] + "." in line.split()[0])
        on(lab, node1.netns, "ip", "route", "del", subnet)
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
