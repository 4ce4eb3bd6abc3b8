"""`tartanctl capture` on a node (a throwaway node namespace with pods on a bridge), run as an
operator runs it: the pod found through its record in the store and the namespace holding
its address, its hops read from the kernel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tartan.ipam.lease_sqlite import SqliteLeaseStore

from harness import in_netns

pytestmark = pytest.mark.kernel
TARTANCTL = str(Path(sys.executable).parent / "tartanctl")


def records(tmp_path: Path, a, b) -> Path:
    """A store holding the records of pods x/a and x/b on node1, as tartand keeps them."""
    db = tmp_path / "leases.db"
    store = SqliteLeaseStore(db)
    for key, pod in (("x/a", a), ("x/b", b)):
        store.put_object("podips", key, {"ips": [pod.address], "node": "node1",
                                         "containerID": pod.container_id})
    store.close()
    return db


def test_capture_finds_the_pod_by_its_record_and_sees_its_hops(bridge_net, tmp_path: Path):
    a, b = bridge_net.add(), bridge_net.add()
    db = tmp_path / "leases.db"
    store = SqliteLeaseStore(db)
    store.put_object("podips", "x/a", {"ips": [a.address], "node": "node1",
                                       "containerID": a.container_id})
    store.close()
    capture = subprocess.Popen(in_netns(bridge_net.host.name, [
        TARTANCTL, "capture", "x/a", "--node-name", "node1", "--store", f"sqlite:{db}",
        "--count", "4", "--duration", "20", "-w", str(tmp_path / "a.pcapng"), "icmp"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert capture.stderr is not None
    first = capture.stderr.readline()
    assert first.startswith("capture: listening on node1/pod, node1/veth, node1/bridge"), (
        first + capture.stderr.read())
    subprocess.run(in_netns(a.ns.name, ["ping", "-c", "1", "-W", "1", b.address]), check=True,
                   capture_output=True)
    out, err = capture.communicate(timeout=30)
    assert capture.returncode == 0, err
    hops = [(line.split()[1], line.split()[2]) for line in out.splitlines()]
    # a and b share the bridge: the frames are bridged, and the bridge device (an L3 hop)
    # sees none of them
    assert hops == [("node1/pod", "out"), ("node1/veth", "in"), ("node1/veth", "out"),
                    ("node1/pod", "in")]


def test_a_pod_the_store_does_not_know_is_one_line(bridge_net, tmp_path: Path):
    db = tmp_path / "leases.db"
    SqliteLeaseStore(db).close()
    run = subprocess.run(in_netns(bridge_net.host.name, [
        TARTANCTL, "capture", "x/gone", "--store", f"sqlite:{db}", "--count", "1"]),
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        "tartanctl capture: no record of pod x/gone in the store (is it on a Tartan node, "
        "created by kubelet?); give --netns"]


def test_a_namespace_that_is_not_there_is_one_line(tmp_path: Path):
    run = subprocess.run([TARTANCTL, "capture", "x/a", "--netns", str(tmp_path / "nope"),
                          "--count", "1"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"tartanctl capture: network namespace {tmp_path / 'nope'} does not exist"]


def test_trace_on_a_node_delivered_then_dropped_by_another_components_rule(bridge_net,
                                                                           tmp_path: Path):
    """Two pods of one node (bridged: br_netfilter on, so FORWARD sees them), one listening:
    delivered; then a foreign FORWARD DROP is named; no trace rule stays."""
    import json as json_

    from tartan.kernel.netns import entered
    from tartan.netpol.enforcer import ensure_bridge_netfilter

    from netpol_kit import LISTENER

    a, b = bridge_net.add(), bridge_net.add()
    with entered(bridge_net.host.path):
        ensure_bridge_netfilter()
    db = records(tmp_path, a, b)
    server = subprocess.Popen(in_netns(b.ns.name, [sys.executable, "-c", LISTENER]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        argv = in_netns(bridge_net.host.name, [TARTANCTL, "trace", "x/a", "x/b", "--node-name",
                                               "node1", "--store", f"sqlite:{db}", "-o",
                                               "json"])
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        result = json_.loads(run.stdout)
        assert run.returncode == 0, {k: v for k, v in result.items() if k != "events"}
        assert result["delivered"] and result["outcome"] == "connected"
        assert [s["hop"] for s in result["steps"]] == ["node1/pod", "node1/veth",
                                                       "node1/veth(x/b)", "node1/pod(x/b)"]
        rule = ("FORWARD", "-d", f"{b.address}/32", "-m", "comment", "--comment", "firewall",
                "-j", "DROP")
        bridge_net.host.run("iptables", "-I", *rule)
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert run.returncode == 1, run.stderr
        result = json_.loads(run.stdout)
        assert result["cause"] == "dropped by a rule of another component (FORWARD)"
        assert "firewall" in result["rule"] and result["where"] == "node1/veth"
        assert "TARTAN-TRACE" not in bridge_net.host.iptables_save("raw")
    finally:
        server.kill()
        server.wait()


def test_trace_on_an_iptables_legacy_node_names_the_rule_from_the_kernel_log(bridge_net,
                                                                             tmp_path: Path):
    """The node's rules in iptables-legacy: TRACE logs to the kernel log and the dropping
    rule's text is read back by its number. Run from the host's namespace, the trace turns
    logging for namespaces on for itself only; run inside the node it cannot, and says so
    unless logging is on."""
    import json as json_

    from tartan.debug import capture_hops, trace
    from tartan.kernel.netns import entered
    from tartan.netpol.enforcer import ensure_bridge_netfilter

    all_netns = Path("/proc/sys/net/netfilter/nf_log_all_netns")
    before = all_netns.read_text()
    a, b = bridge_net.add(), bridge_net.add()
    with entered(bridge_net.host.path):
        ensure_bridge_netfilter()
    rule = ("FORWARD", "-d", f"{b.address}/32", "-m", "comment", "--comment", "legacy firewall",
            "-j", "DROP")
    bridge_net.host.run("iptables-legacy", "-A", "FORWARD", "-p", "udp", "-j", "ACCEPT")
    bridge_net.host.run("iptables-legacy", "-A", *rule)
    named = (f'node1: filter FORWARD -A FORWARD -d {b.address}/32 -m comment --comment '
             '"legacy firewall" -j DROP')
    try:
        hops = capture_hops.pod_hops("node1", bridge_net.host.path, "x/a", a.ns.path,
                                     wanted=("pod", "veth"))
        dst = capture_hops.of_second_pod(capture_hops.pod_hops(
            "node1", bridge_net.host.path, "x/b", b.ns.path, wanted=("pod", "veth")), "x/b")
        probe = trace.new_probe(a.address, b.address, "tcp", 80)
        result = trace.run(a.ns.path, probe, hops, dst, [("node1", bridge_net.host.path)],
                           "x/a -> x/b", "legacy")
        assert result.cause == "dropped by a rule of another component (FORWARD)"
        assert result.rule == named and result.where == "node1/veth"
        assert all_netns.read_text() == before

        db = records(tmp_path, a, b)
        argv = in_netns(bridge_net.host.name, [
            TARTANCTL, "trace", "x/a", "x/b", "--node-name", "node1", "--store", f"sqlite:{db}",
            "--iptables", "legacy", "-o", "json"])
        if before.strip() == "0":
            run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            assert run.returncode == 1 and run.stderr.startswith(
                "tartanctl trace: iptables-legacy's TRACE logged nothing: a node is a network "
                "namespace"), run.stderr
        all_netns.write_text("1\n")
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert run.returncode == 1 and run.stdout, run.stderr
        assert json_.loads(run.stdout)["rule"] == named
        saved = subprocess.run(in_netns(bridge_net.host.name, ["iptables-legacy-save", "-t",
                                                               "raw"]),
                               capture_output=True, text=True, check=True).stdout
        assert "TARTAN-TRACE" not in saved
    finally:
        all_netns.write_text(before)
        bridge_net.host.run("iptables-legacy", "-F", "FORWARD")
