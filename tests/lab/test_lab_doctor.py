"""`tartanctl lab doctor` on a 2-node VXLAN lab: quiet on a healthy node, and each check,
provoked on purpose on node1, names the problem (then the node is put right again)."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from lab_env import VENV_BIN, ctl, down_clean, lab_name, subnet_of

from tartan.debug import lab_agents
from tartan.debug.lab import Lab, UpOptions
from tartan.debug.lab_sys import in_node, netns_path

from harness import eventually

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(lab_name(), say=print)
    try:
        lab.up(UpOptions("vxlan", "sqlite", nodes=2, pods_per_node=1))
        yield lab
    finally:
        down_clean(lab)


def on_node1(lab: Lab, *argv: str) -> str:
    node = lab.load().node("node1")
    assert node is not None
    return subprocess.run(in_node(node.holder_pid, list(argv)), capture_output=True, text=True,
                          check=True, timeout=30).stdout


def doctor(lab: Lab, *flags: str) -> tuple[int, list[dict]]:
    run = subprocess.run([str(VENV_BIN / "tartanctl"), "lab", "doctor", "--name", lab.name,
                          "node1", "-o", "json", *flags], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode in (0, 1), run.stderr
    return run.returncode, json.loads(run.stdout)["problems"]


def problems(lab: Lab, check: str) -> list[str]:
    code, found = doctor(lab, "--check", check)
    assert code == (1 if found else 0)
    return [f["check"] + ": " + f["problem"] for f in found]


def test_a_healthy_node_has_no_problem(lab: Lab):
    code, found = doctor(lab)
    assert (code, found) == (0, [])
    text = subprocess.run([str(VENV_BIN / "tartanctl"), "lab", "doctor", "--name", lab.name,
                           "node1"], capture_output=True, text=True, timeout=60).stdout
    assert text.startswith("doctor: no problem found (12 checks, ")


def test_the_bridge_keeping_an_old_subnets_gateway(lab: Lab):
    on_node1(lab, "ip", "addr", "add", "10.250.9.1/24", "dev", "cni0")
    try:
        (found,) = problems(lab, "bridge")
        assert found.startswith("bridge-address: cni0 has 10.250.9.1/24, outside this node's")
    finally:
        on_node1(lab, "ip", "addr", "del", "10.250.9.1/24", "dev", "cni0")
    assert problems(lab, "bridge") == []


def test_an_mtu_larger_than_the_pods(lab: Lab):
    before = on_node1(lab, "cat", "/sys/class/net/cni0/mtu").strip()
    on_node1(lab, "ip", "link", "set", "cni0", "mtu", "1500")
    try:
        (found,) = problems(lab, "mtu")
        assert found.startswith("mtu: larger than the pods' MTU 1450: cni0 1500")
    finally:
        on_node1(lab, "ip", "link", "set", "cni0", "mtu", before)
    assert problems(lab, "mtu") == []


def test_forwarding_off_a_forward_drop_and_two_iptables_backends(lab: Lab):
    on_node1(lab, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    on_node1(lab, "iptables-legacy", "-A", "FORWARD", "-m", "comment", "--comment",
             "doctor-test", "-j", "ACCEPT")
    try:
        found = problems(lab, "forwarding")
        assert [f.split(":")[0] for f in found] == ["ip-forward", "iptables-split"]
    finally:
        on_node1(lab, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        on_node1(lab, "iptables-legacy", "-D", "FORWARD", "-m", "comment", "--comment",
                 "doctor-test", "-j", "ACCEPT")
    assert problems(lab, "forwarding") == []


def test_a_foreign_config_first_and_a_leaked_reservation(lab: Lab):
    on_node1(lab, "sh", "-c", "echo '{\"cniVersion\":\"1.0.0\",\"name\":\"other\",\"plugins\":"
             "[{\"type\":\"bridge\"}]}' > /etc/cni/net.d/00-other.conflist")
    on_node1(lab, "touch", "/var/lib/cni/networks/tartan-lab/10.244.1.250")
    try:
        assert problems(lab, "cni-config") == [
            "cni-config: 00-other.conflist sorts before Tartan's config (10-tartan.conflist)"]
        (leak,) = problems(lab, "reservations")
        assert leak.startswith("ipam-leak: 1 address(es) reserved in "
                               "/var/lib/cni/networks/tartan-lab with no pod holding them: "
                               "10.244.1.250")
    finally:
        on_node1(lab, "rm", "-f", "/etc/cni/net.d/00-other.conflist",
                 "/var/lib/cni/networks/tartan-lab/10.244.1.250")
    assert problems(lab, "cni-config") == problems(lab, "reservations") == []


def test_tartand_stopped_and_a_route_without_a_lease(lab: Lab):
    """With tartand stopped (it removes such a route at its next reconcile)."""
    lab_agents.stop_agent(lab.load().node("node1"))  # type: ignore[arg-type]
    try:
        assert problems(lab, "tartand") == ["tartand: tartand is not running on this node"]
        on_node1(lab, "ip", "route", "add", "10.244.250.0/24", "via", "198.18.1.1", "proto",
                 "152")
        assert problems(lab, "lease") == [
            "routes: route to 10.244.250.0/24 (proto 152) but no node holds a lease for it"]
    finally:
        lab.restart("node1")
    eventually(lambda: problems(lab, "lease") == [], timeout=20,
               what="tartand to remove the route without a lease")
    assert problems(lab, "tartand") == []


def test_policy_in_force_with_bridged_traffic_past_iptables(lab: Lab):
    deny = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "default", "name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    applied = ctl(lab, "apply", "-f", "-", text=yaml.safe_dump(deny))
    assert applied.returncode == 0, applied.stderr
    try:
        assert problems(lab, "bridge-netfilter") == []
        on_node1(lab, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
        (found,) = problems(lab, "bridge-netfilter")
        assert found == ("bridge-netfilter: bridge-nf-call-iptables is 0 while NetworkPolicy "
                         "isolates pods here")
    finally:
        on_node1(lab, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
        ctl(lab, "delete", "-f", "-", text=yaml.safe_dump(deny))
    assert problems(lab, "bridge-netfilter") == []


def test_vxlan_entries_missing_or_stale_against_the_leases(lab: Lab):
    lab_agents.stop_agent(lab.load().node("node1"))  # type: ignore[arg-type]
    try:
        fdb = on_node1(lab, "bridge", "fdb", "show", "dev", "tartan.1")
        mac, dst = next((line.split()[0], line.split()[line.split().index("dst") + 1])
                        for line in fdb.splitlines() if " dst " in line)
        on_node1(lab, "bridge", "fdb", "del", mac, "dev", "tartan.1", "dst", dst)
        on_node1(lab, "ip", "neigh", "replace", "10.244.250.0", "lladdr", "02:00:00:00:00:01",
                 "dev", "tartan.1", "nud", "permanent")
        found = problems(lab, "lease")
        assert found == [
            f"vxlan-peers: tartan.1 lacks entries for leased peers: fdb {mac} dst {dst}",
            "vxlan-peers: tartan.1 has entries no lease explains: neighbour 10.244.250.0 "
            "lladdr 02:00:00:00:00:01"]
    finally:
        lab.restart("node1")
    eventually(lambda: problems(lab, "lease") == [], timeout=20,
               what="tartand to repair the VXLAN entries")


def test_forward_drop_without_tartans_accepts(lab: Lab):
    lab_agents.stop_agent(lab.load().node("node1"))  # type: ignore[arg-type]
    jump = ("FORWARD", "-m", "comment", "--comment", "tartan", "-j", "TARTAN-FWD")
    try:
        on_node1(lab, "iptables", "-P", "FORWARD", "DROP")
        assert problems(lab, "forwarding") == []  # DROP, but Tartan's accepts are there
        on_node1(lab, "iptables", "-D", *jump)
        assert problems(lab, "forwarding") == [
            "forward-drop: FORWARD's policy is DROP (iptables-nft) and no rule jumps to "
            "TARTAN-FWD"]
    finally:
        on_node1(lab, "iptables", "-P", "FORWARD", "ACCEPT")
        lab.restart("node1")
    eventually(lambda: problems(lab, "forwarding") == [], timeout=20,
               what="tartand to put its FORWARD accepts back")


def test_a_conntrack_table_near_full(lab: Lab):
    """node1's namespace fills its conntrack table past 90 % of nf_conntrack_max with UDP
    flows to its own loopback (they stay 30 s, unreplied); then the table is flushed."""
    node1 = lab.load().node("node1")
    assert node1 is not None
    limit = int(Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text())
    flows = int(limit * 0.92)
    fill = (f"import socket\nn={flows}\nfor a in range(1, 256):\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "    s.bind((f'127.0.1.{a}', 0))\n"
            "    for port in range(1, min(n, 65535) + 1):\n"
            "        s.sendto(b'x', ('127.0.0.1', port))\n"
            "    n -= 65535\n"
            "    if n <= 0:\n"
            "        break\n")
    try:
        subprocess.run(in_node(node1.holder_pid, [str(VENV_BIN / "python"), "-c", fill]),
                       check=True, timeout=120)
        (found,) = problems(lab, "conntrack")
        assert found.startswith("conntrack: conntrack table at ") and found.endswith(
            f" of {limit} entries")
    finally:
        on_node1(lab, "conntrack", "-F")
    assert problems(lab, "conntrack") == []


def test_strict_rp_filter_where_the_route_back_leaves_elsewhere(lab: Lab):
    keys = ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.tartan/1.rp_filter")
    before = [on_node1(lab, "sysctl", "-n", key).strip() for key in keys]
    lab_agents.stop_agent(lab.load().node("node1"))  # type: ignore[arg-type]
    try:
        for key in keys:
            on_node1(lab, "sysctl", "-qw", f"{key}=1")
        assert problems(lab, "rp-filter") == []  # strict, and every route back is right
        node2 = lab.load().node("node2")
        assert node2 is not None
        subnet = subnet_of(node2)
        on_node1(lab, "ip", "route", "del", subnet)
        (found,) = problems(lab, "rp-filter")
        assert found.startswith(f"rp-filter: strict rp_filter on tartan.1, but the route back "
                                f"to {subnet} (leaves by ")
    finally:
        for key, value in zip(keys, before, strict=True):
            on_node1(lab, "sysctl", "-qw", f"{key}={value}")
        lab.restart("node1")
    assert problems(lab, "rp-filter") == []


def test_ipsets_out_of_step_with_the_pods(lab: Lab):
    """A policy whose peers are the namespace's pods: node1 holds a set of both pods; with
    its tartand stopped, one member taken out and a stranger put in."""
    allow = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"namespace": "default", "name": "from-pods"},
             "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                      "ingress": [{"from": [{"podSelector": {}}]}]}}
    assert ctl(lab, "apply", "-f", "-", text=yaml.safe_dump(allow)).returncode == 0
    try:
        eventually(lambda: "TARTAN-NP-" in on_node1(lab, "ipset", "list", "-n"), timeout=20,
                   what="node1's enforcer to make the set")
        assert problems(lab, "ipsets") == []
        name = next(line for line in on_node1(lab, "ipset", "list", "-n").split()
                    if line.startswith("TARTAN-NP-"))
        members = [line.split()[0] for line in on_node1(lab, "ipset", "list", name).splitlines()
                   if line[:1].isdigit()]
        lab_agents.stop_agent(lab.load().node("node1"))  # type: ignore[arg-type]
        on_node1(lab, "ipset", "del", name, members[0])
        on_node1(lab, "ipset", "add", name, "10.244.250.9")
        (found,) = problems(lab, "ipsets")
        assert found.startswith(f"ipsets: ipset {name} (") and found.endswith(
            f") lacks {members[0]} and has 10.244.250.9 that no pod explains")
    finally:
        lab.restart("node1")
        ctl(lab, "delete", "-f", "-", text=yaml.safe_dump(allow))
    eventually(lambda: problems(lab, "ipsets") == [], timeout=20,
               what="tartand to refill or remove the set")


def test_tunnel_packets_with_bad_udp_checksums(lab: Lab):
    """node2 sends VXLAN-port datagrams with a wrong checksum to node1 while doctor watches
    (the signature of the checksum-offload bug); afterwards, with the counter still up but
    no bad packet arriving, the check is quiet."""
    import threading

    from tartan.kernel.netns import entered

    state = lab.load()
    node1, node2 = state.node("node1"), state.node("node2")
    assert node1 is not None and node2 is not None
    done = threading.Event()

    def send_bad() -> None:
        with entered(netns_path(node2.netns)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        payload = b"\x08\x00\x00\x00\x00\x00\x01\x00" + bytes(50)
        header = struct.pack("!HHHH", 40000, 8472, 8 + len(payload), 0x1234)  # wrong sum
        with sock:
            while not done.wait(0.02):
                sock.sendto(header + payload, (node1.ip, 0))

    sender = threading.Thread(target=send_bad, daemon=True)
    sender.start()
    try:
        (found,) = problems(lab, "tunnel-checksum")
        assert found.startswith("tunnel-checksum: VXLAN packets to port 8472 on ")
        assert f"bad UDP checksums from {node2.ip} (" in found
    finally:
        done.set()
        sender.join(5)
    assert problems(lab, "tunnel-checksum") == []
