"""tartan-portmap and the reference portmap side by side, in namespaces the test makes.

Each case builds a node (a network namespace with an uplink to a client namespace and a
bridge to pod namespaces; the pods' veths and addresses are made with `ip` here, so both
plugins chain after the same thing) and runs the portmap plugin as a runtime does, with env
and stdin, inside the node. The same case runs with `/usr/lib/cni/portmap` (v1.1.1) and with
tartan-portmap, and asserts the same reachability: what the reference does is the expected
answer. Servers in the pods answer TCP and UDP with the pod's name; nothing here touches the
host's own namespace, and every namespace and process goes in the fixture's finalizer.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import REFERENCE_CNI, Netns, PluginReply, eventually, plugin_dir, run_plugin, unique

pytestmark = pytest.mark.kernel

PLUGINS = {"reference": str(REFERENCE_CNI / "portmap"), "tartan": "tartan-portmap"}
NODE_IP, NODE_IP2, CLIENT_IP = "192.168.240.1", "192.168.240.3", "192.168.240.2"
NODE_IP6, CLIENT_IP6 = "fd00:240::1", "fd00:240::2"
GATEWAY, GATEWAY6 = "10.251.0.1", "fd00:251::1"
TIMEOUT = 1.0  # seconds a probe waits for an answer that, in some cases, must not come
NO_SOCKET = "/nonexistent/tartan-cni.sock"  # tartan-portmap works in-process

# Serves every port in argv[2] (TCP) and argv[3] (UDP) on both families, answering with
# argv[1]; prints "ready" once all listen.
SERVER = r"""
import socket, sys, threading
name = sys.argv[1].encode()
def sock(kind, port):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    return s
def tcp(s):
    s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(name); c.close()
def udp(s):
    while True:
        _, peer = s.recvfrom(100); s.sendto(name, peer)
servers = [(tcp, sock(socket.SOCK_STREAM, int(p))) for p in sys.argv[2].split(",") if p]
servers += [(udp, sock(socket.SOCK_DGRAM, int(p))) for p in sys.argv[3].split(",") if p]
for fn, s in servers:
    threading.Thread(target=fn, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

# argv[1]: JSON list of [proto, host, port, source port], argv[2]: seconds to wait; prints a
# JSON list of answers: the server's name, "refused" or "timeout".
PROBE = r"""
import json, socket, sys
out = []
for proto, host, port, sport in json.loads(sys.argv[1]):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.settimeout(float(sys.argv[2]))
    try:
        if sport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
        if proto == "tcp":
            s.connect((host, port)); data = s.recv(100)
        else:
            s.sendto(b"hi", (host, port)); data = s.recvfrom(100)[0]
        out.append(data.decode())
    except ConnectionRefusedError:
        out.append("refused")
    except OSError:
        out.append("timeout")
    finally:
        s.close()
print(json.dumps(out))
"""


@dataclass
class Pod:
    name: str
    ns: Netns
    container_id: str
    address: str
    address6: str = ""

    @property
    def prev_result(self) -> dict:
        ips = [{"address": f"{self.address}/24", "gateway": GATEWAY, "interface": 1}]
        if self.address6:
            ips.append({"address": f"{self.address6}/64", "gateway": GATEWAY6, "interface": 1})
        return {"cniVersion": "1.0.0",
                "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": self.ns.path}],
                "ips": ips, "dns": {}}


@dataclass
class Node:
    """The node namespace, its client, its pods, and the portmap plugin under test."""

    plugin: str
    ns: Netns
    client: Netns
    factory: object
    procs: list[subprocess.Popen] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.ns.run(*argv, check=check)

    def add_pod(self, tcp: str = "80", udp: str = "53", ipv6: bool = False) -> Pod:
        number = len(self.pods) + 5
        ns = self.factory("tpp")
        pod = Pod(f"pod{number}", ns, unique("ctr-"), f"10.251.0.{number}",
                  f"fd00:251::{number}" if ipv6 else "")
        veth = unique("vp")
        self.run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns",
                 ns.name)
        self.run("ip", "link", "set", veth, "master", "cni0", "up")
        # as flannel's CNI config does (hairpinMode): with br_netfilter, a pod's packet DNATed
        # back to itself is bridged out of the port it came in on
        self.run("ip", "link", "set", veth, "type", "bridge_slave", "hairpin", "on")
        ns.run("ip", "addr", "add", f"{pod.address}/24", "dev", "eth0")
        if ipv6:
            ns.run("ip", "addr", "add", f"{pod.address6}/64", "dev", "eth0", "nodad")
        ns.run("ip", "link", "set", "eth0", "up")
        ns.run("ip", "route", "add", "default", "via", GATEWAY)
        if ipv6:
            ns.run("ip", "-6", "route", "add", "default", "via", GATEWAY6)
        self.serve(ns, pod.name, tcp, udp)
        self.pods.append(pod)
        return pod

    def serve(self, ns: Netns, name: str, tcp: str, udp: str = "") -> None:
        proc = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", SERVER,
                                 name, tcp, udp], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def config(self, *mappings: dict, version: str = "1.0.0", **fields) -> dict:
        conf = {"cniVersion": version, "name": "pmnet", "type": "portmap",
                "capabilities": {"portMappings": True},
                "runtimeConfig": {"portMappings": list(mappings)}}
        conf.update(fields)
        return conf

    def cni(self, command: str, pod: Pod, config: dict, prev: bool = True) -> PluginReply:
        conf = copy.deepcopy(config)
        if prev:
            conf["prevResult"] = pod.prev_result
        return run_plugin(PLUGINS[self.plugin], command, conf, container_id=pod.container_id,
                          netns=pod.ns.path, host_ns=self.ns, path=[plugin_dir(), REFERENCE_CNI],
                          extra_env={"TARTAN_CNI_SOCKET": NO_SOCKET})

    def add(self, pod: Pod, *mappings: dict, **fields) -> PluginReply:
        reply = self.cni("ADD", pod, self.config(*mappings, **fields))
        assert reply.code == 0, reply.stdout + reply.stderr
        return reply

    def nat(self, family: int = 4) -> list[str]:
        save = "iptables-save" if family == 4 else "ip6tables-save"
        return [line for line in self.run(save, "-t", "nat").stdout.splitlines()
                if line.startswith(("-A", ":"))]

    def sysctl(self, path: str) -> str:
        return self.run("cat", f"/proc/sys/{path}").stdout.strip()


def probe(ns: Netns, *probes: tuple) -> list[str]:
    """Each probe is (proto, host, port) or (proto, host, port, source port)."""
    wanted = [list(p) + [0] * (4 - len(p)) for p in probes]
    proc = ns.run(sys.executable, "-c", PROBE, json.dumps(wanted), str(TIMEOUT),
                  timeout=30 + TIMEOUT * len(wanted))
    return json.loads(proc.stdout)


def _build_node(node: Node) -> None:
    ns, client = node.ns, node.client
    ns.run("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns",
           client.name)
    for addr in (f"{NODE_IP}/24", f"{NODE_IP2}/24"):
        ns.run("ip", "addr", "add", addr, "dev", "up0")
    ns.run("ip", "addr", "add", f"{NODE_IP6}/64", "dev", "up0", "nodad")
    client.run("ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "up1")
    client.run("ip", "addr", "add", f"{CLIENT_IP6}/64", "dev", "up1", "nodad")
    ns.run("ip", "link", "add", "cni0", "type", "bridge")
    ns.run("ip", "addr", "add", f"{GATEWAY}/24", "dev", "cni0")
    ns.run("ip", "addr", "add", f"{GATEWAY6}/64", "dev", "cni0", "nodad")
    for each, link in ((ns, "up0"), (client, "up1"), (ns, "cni0")):
        each.run("ip", "link", "set", link, "up")
    client.run("ip", "route", "add", "10.251.0.0/24", "via", NODE_IP)
    client.run("ip", "-6", "route", "add", "fd00:251::/64", "via", NODE_IP6)
    ns.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")


@pytest.fixture(params=list(PLUGINS))
def node(request, netns_factory) -> Iterator[Node]:
    assert os.geteuid() == 0, "kernel tests need root"
    made = Node(request.param, netns_factory("tpn"), netns_factory("tpc"), netns_factory)
    try:
        _build_node(made)
        yield made
    finally:
        for proc in made.procs:
            proc.kill()
            proc.wait()
        # the namespaces (with every rule, link and address in them) go in netns_factory's


TCP = {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
UDP = {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}


def test_outside_node_address_localhost_and_hairpin(node):
    pod = node.add_pod()
    other = node.add_pod()
    node.add(pod, TCP, UDP)
    assert probe(node.client, ("tcp", NODE_IP, 8080), ("udp", NODE_IP, 5353),
                 ("tcp", NODE_IP2, 8080)) == ["pod5", "pod5", "pod5"]
    assert probe(node.ns, ("tcp", NODE_IP, 8080), ("tcp", "127.0.0.1", 8080),
                 ("udp", "127.0.0.1", 5353)) == ["pod5", "pod5", "pod5"]
    # hairpin: the pod through the node's address to its own port; and another pod
    assert probe(pod.ns, ("tcp", NODE_IP, 8080), ("tcp", GATEWAY, 8080)) == ["pod5", "pod5"]
    assert probe(other.ns, ("tcp", NODE_IP, 8080)) == ["pod5"]
    # the host interface towards the pod lets 127.0.0.1 be routed (snat is on)
    assert node.sysctl("net/ipv4/conf/cni0/route_localnet") == "1"
    assert node.sysctl("net/ipv4/conf/up0/route_localnet") == "0"


def test_rules_have_the_reference_chain_names(node):
    pod = node.add_pod()
    node.add(pod, TCP)
    chains = {line.split()[0][1:] for line in node.nat() if line.startswith(":")}
    assert {"CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ"} <= chains
    dn = [c for c in chains if c.startswith("CNI-DN-")]
    assert len(dn) == 1 and len(dn[0]) == 28
    jump = [line for line in node.nat() if line.startswith("-A CNI-HOSTPORT-DNAT")]
    assert jump == [f'-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"pmnet\\" '
                    f'id: \\"{pod.container_id}\\"" -m multiport --dports 8080 -j {dn[0]}']


def test_host_ip_restricts_the_destination(node):
    pod = node.add_pod()
    node.add(pod, {**TCP, "hostIP": NODE_IP2})
    assert probe(node.client, ("tcp", NODE_IP2, 8080), ("tcp", NODE_IP, 8080)) == [
        "pod5", "refused"]


def test_udp_stale_conntrack_entry_is_cleared_on_add(node):
    # connection tracking on, as on any node with NAT (it starts with the first NAT rule)
    node.run("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.99.0.0/16", "-m",
             "comment", "--comment", "test: a masquerade that matches nothing here", "-j",
             "MASQUERADE")
    node.serve(node.ns, "node", "", "5353")  # a host service had the port before the pod
    pod = node.add_pod()
    assert probe(node.client, ("udp", NODE_IP, 5353, 40000)) == ["node"]
    flows = node.run("conntrack", "-L", "-p", "udp", "--dport", "5353", check=False)
    assert "dport=5353" in flows.stdout, flows.stdout + flows.stderr  # the entry is there
    node.add(pod, UDP)
    # the same flow (same source port) now reaches the pod: its old entry went on ADD
    assert probe(node.client, ("udp", NODE_IP, 5353, 40000)) == ["pod5"]


def test_check_passes_then_fails_when_a_rule_is_gone(node):
    pod = node.add_pod()
    config = node.config(TCP, UDP)
    node.add(pod, TCP, UDP)
    if node.plugin == "tartan":
        # The reference (v1.1.1) CHECK cannot pass where ip6tables works: it checks every
        # address's rules in both families' tables (fixed upstream after 1.1.1).
        assert node.cni("CHECK", pod, config).code == 0
    chain = next(line.split()[0][1:] for line in node.nat() if line.startswith(":CNI-DN-"))
    node.run("iptables", "-t", "nat", "-D", chain, "3")  # the TCP DNAT
    reply = node.cni("CHECK", pod, config)
    assert reply.code != 0, reply.stdout


def test_check_and_add_need_the_prev_result(node):
    pod = node.add_pod()
    for command in ("ADD", "CHECK"):
        reply = node.cni(command, pod, node.config(TCP), prev=False)
        assert reply.code != 0 and ("prevResult" in reply.stdout or "chained" in reply.stdout)
        if node.plugin == "tartan":
            assert reply.error_code == 7 and "chained plugin" in reply.stdout, reply
    assert not [line for line in node.nat() if "CNI-" in line]


def test_del_twice_without_prev_result_removes_the_container_chain(node):
    pod = node.add_pod()
    config = node.config(TCP)
    node.add(pod, TCP)
    for _ in range(2):
        reply = node.cni("DEL", pod, config, prev=False)
        assert reply.code == 0, reply.stdout
    assert not [line for line in node.nat() if "CNI-DN-" in line]
    assert probe(node.client, ("tcp", NODE_IP, 8080)) == ["refused"]


def test_del_with_the_netns_gone(node):
    pod = node.add_pod()
    node.add(pod, TCP)
    node.run("ip", "netns", "del", pod.ns.name)
    reply = node.cni("DEL", pod, node.config(TCP))
    assert reply.code == 0, reply.stdout
    assert not [line for line in node.nat() if "CNI-DN-" in line]


def test_snat_false_serves_outside_but_not_localhost(node):
    pod = node.add_pod()
    node.add(pod, TCP, snat=False)
    assert probe(node.client, ("tcp", NODE_IP, 8080)) == ["pod5"]
    assert probe(node.ns, ("tcp", "127.0.0.1", 8080)) == ["timeout"]
    assert node.sysctl("net/ipv4/conf/cni0/route_localnet") == "0"
    assert not [line for line in node.nat() if "SETMARK" in line or "MASQ" in line]


def test_mark_masq_bit(node):
    pod = node.add_pod()
    node.add(pod, TCP, markMasqBit=5)
    assert "-A CNI-HOSTPORT-MASQ -m mark --mark 0x20/0x20 -j MASQUERADE" in node.nat()
    assert probe(pod.ns, ("tcp", NODE_IP, 8080)) == ["pod5"]
    assert probe(node.ns, ("tcp", "127.0.0.1", 8080)) == ["pod5"]


def test_external_set_mark_chain(node):
    for rule in (["-N", "TEST-MARK"],
                 ["-A", "TEST-MARK", "-j", "MARK", "--set-xmark", "0x4000/0x4000"],
                 ["-A", "POSTROUTING", "-m", "mark", "--mark", "0x4000/0x4000", "-j",
                  "MASQUERADE"]):
        node.run("iptables", "-t", "nat", *rule)
    pod = node.add_pod()
    node.add(pod, TCP, externalSetMarkChain="TEST-MARK")
    nat = node.nat()
    assert not [line for line in nat if "CNI-HOSTPORT-SETMARK" in line]
    assert sum(line.endswith("-j TEST-MARK") for line in nat) == 2  # hairpin and localhost
    assert probe(pod.ns, ("tcp", NODE_IP, 8080)) == ["pod5"]
    assert probe(node.ns, ("tcp", "127.0.0.1", 8080)) == ["pod5"]


def test_conditions_v4_limit_who_is_mapped(node):
    pod = node.add_pod()
    node.add(pod, TCP, conditionsV4=["-s", CLIENT_IP])
    assert probe(node.client, ("tcp", NODE_IP, 8080)) == ["pod5"]
    assert probe(node.ns, ("tcp", NODE_IP, 8080)) == ["refused"]  # not the client


def test_ipv6_mapping_from_outside(node):
    pod = node.add_pod(ipv6=True)
    node.add(pod, TCP, UDP)
    eventually(lambda: node.client.ping(pod.address6, timeout=1), 10, 0.1,
               what="IPv6 from the client to the pod (neighbour discovery settles)")
    assert probe(node.client, ("tcp", NODE_IP6, 8080), ("udp", NODE_IP6, 5353),
                 ("tcp", NODE_IP, 8080)) == ["pod5", "pod5", "pod5"]
    assert any(line.startswith("-A CNI-DN-") and "[fd00:251::5]:80" in line
               for line in node.nat(6))


def test_two_pods_two_ports(node):
    a, b = node.add_pod(), node.add_pod()
    node.add(a, TCP)
    node.add(b, {**TCP, "hostPort": 8081})
    assert probe(node.client, ("tcp", NODE_IP, 8080), ("tcp", NODE_IP, 8081)) == [
        "pod5", "pod6"]
    assert node.cni("DEL", a, node.config(TCP), prev=False).code == 0
    assert probe(node.client, ("tcp", NODE_IP, 8080), ("tcp", NODE_IP, 8081)) == [
        "refused", "pod6"]


# ---- tartan-portmap only: what the reference (CNI <= 1.0) has no counterpart for


@pytest.fixture
def tartan_node(netns_factory) -> Iterator[Node]:
    made = Node("tartan", netns_factory("tpn"), netns_factory("tpc"), netns_factory)
    try:
        _build_node(made)
        yield made
    finally:
        for proc in made.procs:
            proc.kill()
            proc.wait()


def test_gc_removes_the_chains_of_containers_not_valid(tartan_node):
    node = tartan_node
    keep, gone = node.add_pod(), node.add_pod()
    node.add(keep, TCP, version="1.1.0")
    node.add(gone, {**TCP, "hostPort": 8081}, version="1.1.0")
    gc = node.config(version="1.1.0", **{"cni.dev/valid-attachments": [
        {"containerID": keep.container_id, "ifname": "eth0"}]})
    reply = run_plugin("tartan-portmap", "GC", gc, host_ns=node.ns, ifname="",
                       extra_env={"TARTAN_CNI_SOCKET": NO_SOCKET})
    assert reply.code == 0, reply.stdout
    assert probe(node.client, ("tcp", NODE_IP, 8080), ("tcp", NODE_IP, 8081)) == [
        "pod5", "refused"]
    assert sum(line.startswith(":CNI-DN-") for line in node.nat()) == 1


def test_a_second_add_changes_nothing_and_conditions_read_back_as_written(tartan_node):
    node = tartan_node
    pod = node.add_pod()
    fields = {"conditionsV4": ["!", "--source", "192.0.2.7"]}
    node.add(pod, TCP, UDP, **fields)
    before = node.nat()
    node.add(pod, TCP, UDP, **fields)
    assert node.nat() == before
    assert node.cni("CHECK", pod, node.config(TCP, UDP, **fields)).code == 0


def test_errors_name_the_field(tartan_node):
    node = tartan_node
    pod = node.add_pod()
    reply = node.cni("ADD", pod, node.config({"hostPort": 0, "containerPort": 80}))
    assert reply.error_code == 7 and "runtimeConfig.portMappings[0].hostPort" in reply.stdout
    reply = node.cni("ADD", pod, node.config(TCP, externalSetMarkChain="NOT-THERE"))
    assert reply.error_code == 7 and "externalSetMarkChain NOT-THERE" in reply.stdout
    assert not [line for line in node.nat() if "CNI-DN-" in line]


def test_through_the_agents_socket_and_in_process_alike(tartan_node, tmp_path):
    node = tartan_node
    sock = tmp_path / "cni.sock"
    traced = Path(__file__).with_name("traced_cni_server.py")
    server = subprocess.Popen(["nsenter", f"--net={node.ns.path}", sys.executable,
                               str(traced), "--socket", str(sock), "--mode", "600"],
                              stderr=subprocess.PIPE, text=True)
    node.procs.append(server)
    eventually(sock.exists, 20, 0.05, process=server, what="CNI server listening")
    fast, slow = node.add_pod(), node.add_pod()

    def run(pod: Pod, command: str, socket_path: str, port: int) -> subprocess.CompletedProcess:
        conf = node.config({**TCP, "hostPort": port})
        conf["prevResult"] = pod.prev_result
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_PATH": str(plugin_dir()),
               "CNI_CONTAINERID": pod.container_id, "CNI_NETNS": pod.ns.path,
               "CNI_IFNAME": "eth0", "TARTAN_CNI_SOCKET": socket_path}
        return subprocess.run(["nsenter", f"--net={node.ns.path}",
                               str(plugin_dir() / "tartan-portmap")],
                              input=json.dumps(conf).encode(), env=env, capture_output=True,
                              timeout=60, check=False)

    added = run(fast, "ADD", str(sock), 8080)
    assert added.returncode == 0, added.stdout
    in_process = run(slow, "ADD", NO_SOCKET, 8081)
    assert in_process.returncode == 0, in_process.stdout
    assert json.loads(added.stdout) == fast.prev_result  # passed through, both ways
    assert json.loads(in_process.stdout) == slow.prev_result
    assert probe(node.client, ("tcp", NODE_IP, 8080), ("tcp", NODE_IP, 8081)) == [
        "pod5", "pod6"]
    assert run(fast, "DEL", str(sock), 8080).returncode == 0
    assert probe(node.client, ("tcp", NODE_IP, 8080)) == ["refused"]
    server.terminate()
    _, err = server.communicate(timeout=10)
    assert f"reply ADD {fast.container_id}" in err and f"reply DEL {fast.container_id}" in err
    assert slow.container_id not in err


def test_a_node_moves_from_the_reference_pod_by_pod(tartan_node):
    """The reference's pod and tartan-portmap's pod share the top-level chains: each rule
    there once, both ports served, and each plugin's DEL leaves the other's pod alone."""
    node = tartan_node
    old, new = node.add_pod(), node.add_pod()
    reference = Node("reference", node.ns, node.client, node.factory)
    reference.add(old, TCP)
    node.add(new, {**TCP, "hostPort": 8081})
    shared = [line for line in node.nat() if line.startswith(
        ("-A PREROUTING", "-A OUTPUT", "-A POSTROUTING", "-A CNI-HOSTPORT-SETMARK",
         "-A CNI-HOSTPORT-MASQ"))]
    assert len(shared) == len(set(shared)) == 5, shared
    assert probe(node.client, ("tcp", NODE_IP, 8080), ("tcp", NODE_IP, 8081)) == [
        "pod5", "pod6"]
    assert probe(node.ns, ("tcp", "127.0.0.1", 8080), ("tcp", "127.0.0.1", 8081)) == [
        "pod5", "pod6"]
    assert reference.cni("DEL", old, reference.config(TCP), prev=False).code == 0
    assert probe(node.client, ("tcp", NODE_IP, 8080), ("tcp", NODE_IP, 8081)) == [
        "refused", "pod6"]
    assert node.cni("DEL", new, node.config({**TCP, "hostPort": 8081}), prev=False).code == 0
    assert not [line for line in node.nat() if "CNI-DN-" in line]
