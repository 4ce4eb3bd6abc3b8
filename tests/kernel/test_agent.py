"""tartand on a small underlay made of namespaces: one router, one or two segments.

The full multi-node matrix lives in tests/lab; these are the agent's own behaviours, each
checked directly in the kernel of the node that shows it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcd_server import EtcdServer

from harness import Netns, eventually, plugin_dir

pytestmark = pytest.mark.kernel

NETWORK = "10.244.0.0/16"


@dataclass
class Node:
    ns: Netns
    ip: str
    subnet_file: Path
    log: Path
    proc: subprocess.Popen | None = None

    def status(self) -> dict:
        code = ("import urllib.request,sys;"
                "sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9808/status',"
                "timeout=2).read().decode())")
        return json.loads(self.ns.run(str(plugin_dir() / "python"), "-c", code).stdout)

    def get(self, path: str) -> str:
        code = ("import urllib.request,sys;"
                f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9808{path}',"
                "timeout=2).read().decode())")
        return self.ns.run(str(plugin_dir() / "python"), "-c", code).stdout

    def routes(self) -> str:
        return self.ns.run("ip", "route").stdout

    def subnet(self) -> str:
        for line in self.subnet_file.read_text().splitlines():
            if line.startswith("FLANNEL_SUBNET="):
                first = line.split("=")[1]
                return first.rsplit(".", 1)[0] + ".0/" + first.split("/")[1]
        raise AssertionError("no FLANNEL_SUBNET")


class Cluster:
    def __init__(self, factory, tmp: Path, segments: int) -> None:
        self.factory, self.tmp, self.nodes = factory, tmp, []
        self.router = factory("tr")
        self.router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        for seg in range(1, segments + 1):
            self.router.run("ip", "link", "add", f"seg{seg}", "type", "bridge")
            self.router.run("ip", "addr", "add", f"198.18.{seg}.1/24", "dev", f"seg{seg}")
            self.router.run("ip", "link", "set", f"seg{seg}", "up")
        self.db = tmp / "leases.db"
        self.etcd: EtcdServer | None = None

    def start_etcd(self) -> EtcdServer:
        self.etcd = EtcdServer(netns=self.router.name, host="198.18.1.1").start()
        return self.etcd

    def add_node(self, segment: int = 1) -> Node:
        ns = self.factory("tn")
        index = len(self.nodes) + 1
        ip = f"198.18.{segment}.{10 + index}"
        port = f"p{ns.name[-8:]}"
        subprocess.run(["ip", "link", "add", "eth0", "netns", ns.name, "type", "veth", "peer",
                        "name", port, "netns", self.router.name], check=True)
        self.router.run("ip", "link", "set", port, "master", f"seg{segment}", "up")
        ns.run("ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        ns.run("ip", "link", "set", "eth0", "up")
        ns.run("ip", "route", "add", "default", "via", f"198.18.{segment}.1")
        node = Node(ns, ip, self.tmp / f"{ns.name}.env", self.tmp / f"{ns.name}.log")
        self.nodes.append(node)
        return node

    def start(self, node: Node, net_conf: dict | None = None, *extra: str) -> None:
        conf = self.tmp / "net-conf.json"
        conf.write_text(json.dumps(net_conf or {"Network": NETWORK}))
        store = (["--store", "etcd", "--etcd-endpoints", self.etcd.url] if self.etcd
                 else ["--store", f"sqlite:{self.db}"])
        argv = [str(plugin_dir() / "tartand"), *store, "--net-config",
                str(conf), "--iface", "eth0", "--subnet-file", str(node.subnet_file),
                "--cni-socket", str(self.tmp / f"{node.ns.name}.sock"),
                "--ip-masq", "--reconcile-interval", "1", *extra]
        with open(node.log, "ab") as log:
            node.proc = subprocess.Popen(["ip", "netns", "exec", node.ns.name, *argv],
                                         stdout=subprocess.DEVNULL, stderr=log)

    def stop(self, node: Node) -> None:
        if node.proc and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            node.proc.wait(timeout=10)

    def wait_ready(self, node: Node, timeout: float = 15) -> None:
        def ready() -> bool:
            return node.ns.run(str(plugin_dir() / "python"), "-c",
                               "import urllib.request;urllib.request.urlopen("
                               "'http://127.0.0.1:9808/readyz',timeout=1)",
                               check=False).returncode == 0
        eventually(ready, timeout, process=node.proc,
                   what=lambda: f"{node.ns.name} ready:\n{node.log.read_text()}")


PEERS = 6.0  # seconds a peer's datapath may take to appear (hang guard)


@pytest.fixture
def cluster(netns_factory, tmp_path):
    made = Cluster(netns_factory, tmp_path, segments=2)
    try:
        yield made
    finally:
        for node in made.nodes:
            if node.proc and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
        if made.etcd:
            made.etcd.stop()


def two_vxlan_nodes(cluster) -> tuple[Node, Node]:
    a, b = cluster.add_node(1), cluster.add_node(2)
    for node in (a, b):
        cluster.start(node)
    for node in (a, b):
        cluster.wait_ready(node)
    return a, b


def test_vxlan_programs_route_neighbour_and_fdb_for_each_peer(cluster):
    a, b = two_vxlan_nodes(cluster)
    sub_b = b.subnet()
    gw_b = sub_b.split("/")[0]

    def programmed() -> bool:
        assert f"{sub_b} via {gw_b} dev tartan.1 proto 152 onlink" in a.routes()
        assert "PERMANENT" in a.ns.run("ip", "neigh", "show", gw_b, "dev", "tartan.1").stdout
        assert f"dst {b.ip} self permanent" in a.ns.run("bridge", "fdb", "show",
                                                        "dev", "tartan.1").stdout
        return True
    eventually(programmed, PEERS, what="b's route, neighbour and FDB entry on a")
    detail = a.ns.run("ip", "-d", "link", "show", "tartan.1").stdout
    assert "vxlan id 1" in detail and "nolearning" in detail and "mtu 1450" in detail
    subnet_env = a.subnet_file.read_text()
    assert "FLANNEL_NETWORK=10.244.0.0/16" in subnet_env and "FLANNEL_MTU=1450" in subnet_env
    assert a.status()["peers"][0]["mode"] == "vxlan"


def test_reconcile_restores_deleted_entries_and_removes_stale_ones(cluster):
    a, b = two_vxlan_nodes(cluster)
    sub_b = b.subnet()
    eventually(lambda: _assert_in(sub_b, a.routes()), PEERS, what=f"route to {sub_b}")
    a.ns.run("ip", "route", "del", sub_b)
    a.ns.run("ip", "route", "add", "10.244.250.0/24", "via", "10.244.250.0", "dev", "tartan.1",
             "onlink", "proto", "152")
    eventually(lambda: _assert_in(sub_b, a.routes()), PEERS, what=f"route to {sub_b} restored")
    eventually(lambda: _assert_not_in("10.244.250.0/24", a.routes()), PEERS,
               what="stale route removed")
    assert "tartan_reconcile_corrections_total" in a.get("/metrics")


def test_hand_made_damage_is_repaired_at_once_not_at_the_next_full_pass(cluster):
    """The kernel monitor: with full passes ten minutes apart, a deleted route, neighbour
    and FDB entry and a stray route are put right within seconds."""
    a, b = cluster.add_node(1), cluster.add_node(2)
    for node in (a, b):
        cluster.start(node, None, "--reconcile-interval", "600")
    for node in (a, b):
        cluster.wait_ready(node)
    sub_b = b.subnet()
    gw_b = sub_b.split("/")[0]
    eventually(lambda: _assert_in(sub_b, a.routes()), PEERS, what=f"route to {sub_b}")

    def neighbour() -> str:
        return a.ns.run("ip", "neigh", "show", gw_b, "dev", "tartan.1").stdout

    def fdb() -> str:
        return a.ns.run("bridge", "fdb", "show", "dev", "tartan.1").stdout

    a.ns.run("ip", "route", "del", sub_b)
    eventually(lambda: _assert_in(sub_b, a.routes()), PEERS, what=f"route to {sub_b} restored")
    a.ns.run("ip", "neigh", "del", gw_b, "dev", "tartan.1")
    eventually(lambda: _assert_in("PERMANENT", neighbour()), PEERS, what="neighbour restored")
    a.ns.run("bridge", "fdb", "del", _vtep_mac(b), "dev", "tartan.1", "dst", b.ip, "self")
    eventually(lambda: _assert_in(f"dst {b.ip}", fdb()), PEERS, what="FDB entry restored")
    a.ns.run("ip", "route", "add", "10.244.250.0/24", "via", "10.244.250.0", "dev", "tartan.1",
             "onlink", "proto", "152")
    eventually(lambda: _assert_not_in("10.244.250.0/24", a.routes()), PEERS,
               what="stray route removed")
    assert "datapath.changed" in a.log.read_text()


def _vtep_mac(node: Node) -> str:
    return node.ns.run("cat", "/sys/class/net/tartan.1/address").stdout.strip()


def test_restart_keeps_subnet_and_datapath(cluster):
    a, b = two_vxlan_nodes(cluster)
    before = a.subnet()
    cluster.stop(a)
    assert b.subnet() in a.routes()  # the datapath outlives the agent
    cluster.start(a)
    cluster.wait_ready(a)
    assert a.subnet() == before
    mac = a.ns.run("cat", "/sys/class/net/tartan.1/address").stdout.strip()
    assert mac in b.ns.run("bridge", "fdb", "show", "dev", "tartan.1").stdout


def test_a_deleted_lease_is_taken_back_without_exiting(cluster):
    a, b = two_vxlan_nodes(cluster)
    sub_a = a.subnet()
    from tartan.ipam.lease_sqlite import SqliteLeaseStore

    store = SqliteLeaseStore(cluster.db)
    import ipaddress

    store.delete(ipaddress.ip_network(sub_a))
    eventually(lambda: _assert_in("lease.acquired", a.log.read_text().split("lease.lost")[-1]),
               PEERS, what="lease.acquired after lease.lost")
    assert a.proc.poll() is None
    eventually(lambda: _assert_in(a.subnet(), b.routes()), PEERS, what="b's route to a")


def test_host_gw_reports_peers_off_the_segment(cluster):
    a, b, c = cluster.add_node(1), cluster.add_node(1), cluster.add_node(2)
    conf = {"Network": NETWORK, "Backend": {"Type": "host-gw"}}
    for node in (a, b, c):
        cluster.start(node, conf)
    for node in (a, b, c):
        cluster.wait_ready(node)

    def reported() -> bool:
        peers = {p["publicIP"]: p for p in a.status()["peers"]}
        assert b.ip in peers and c.ip in peers, peers  # both may not be listed yet
        assert peers[b.ip]["mode"] == "host-gw" and peers[b.ip]["state"] == "programmed"
        assert peers[c.ip]["state"] == "skipped" and "not on this node's L2 segment" in \
            peers[c.ip]["reason"]
        return True
    eventually(reported, PEERS, what="a's /status peers")
    assert f"{b.subnet()} via {b.ip} dev eth0 proto 152" in a.routes()
    assert c.subnet() not in a.routes()
    assert "peer.skipped" in a.log.read_text()


def test_direct_routing_uses_host_gw_on_the_segment_and_vxlan_across(cluster):
    a, b, c = cluster.add_node(1), cluster.add_node(1), cluster.add_node(2)
    conf = {"Network": NETWORK, "Backend": {"Type": "vxlan", "DirectRouting": True}}
    for node in (a, b, c):
        cluster.start(node, conf)
    for node in (a, b, c):
        cluster.wait_ready(node)

    def routed() -> bool:
        routes = a.routes()
        assert f"{b.subnet()} via {b.ip} dev eth0 proto 152" in routes
        assert f"{c.subnet()} via {c.subnet().split('/')[0]} dev tartan.1" in routes
        return True
    eventually(routed, PEERS, what="host-gw route to b, vxlan route to c")


def test_masquerade_and_forward_rules(cluster):
    a, _ = two_vxlan_nodes(cluster)
    nat = a.ns.run("iptables-save", "-t", "nat").stdout
    assert "-A POSTROUTING -m comment --comment tartan -j TARTAN-POSTRTG" in nat
    assert f"-A TARTAN-POSTRTG -s {a.subnet()} -d {NETWORK}" in nat
    filt = a.ns.run("iptables-save", "-t", "filter").stdout
    assert f"-A TARTAN-FWD -s {NETWORK}" in filt and f"-A TARTAN-FWD -d {NETWORK}" in filt


@pytest.mark.parametrize(("conf", "field"), [
    ({"Network": "10.244.0.0/33"}, "Network"),
    ({"Network": "10.244.0.0/16", "SubnetLen": 16}, "SubnetLen"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}, "Type"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.2.0"},
     "SubnetMin"),
])
def test_invalid_network_config_stops_the_agent_with_one_line(cluster, conf, field):
    node = cluster.add_node(1)
    cluster.start(node, conf)
    assert node.proc.wait(timeout=15) == 2
    err = node.log.read_text().strip()
    assert len(err.splitlines()) == 1 and field in err and "Traceback" not in err
    assert "tartan" not in " ".join(node.ns.links())
    assert "TARTAN" not in node.ns.run("iptables-save").stdout
    assert not node.subnet_file.exists()


@pytest.mark.parametrize("kind", ["path under /proc", "not a database"])
def test_an_unusable_sqlite_store_stops_the_agent_with_one_line(cluster, kind):
    """A store path that can never work is a configuration error: say so and stop, rather
    than retrying forever as for a store that is down."""
    path = Path("/proc/tartan-nowhere/leases.db")
    if kind == "not a database":
        path = cluster.tmp / "garbage.db"
        path.write_bytes(b"not sqlite" * 100)
    node = cluster.add_node(1)
    cluster.start(node, None, "--store", f"sqlite:{path}")
    assert node.proc.wait(timeout=15) == 2
    err = node.log.read_text().strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "--store sqlite:" in err
    assert not node.subnet_file.exists()


def test_etcd_outage_keeps_the_datapath_and_recovers(cluster):
    cluster.start_etcd()
    a, b = two_vxlan_nodes(cluster)
    sub_b = b.subnet()
    eventually(lambda: _assert_in(sub_b, a.routes()), PEERS, what=f"route to {sub_b}")
    cluster.etcd.kill()
    eventually(lambda: _assert_in("store.unavailable", a.log.read_text()), PEERS,
               what="store.unavailable logged")
    a.ns.run("ip", "route", "del", sub_b)
    # still reconciled from the last leases
    eventually(lambda: _assert_in(sub_b, a.routes()), PEERS, what=f"route to {sub_b} restored")
    time.sleep(30)
    assert a.proc.poll() is None and b.proc.poll() is None
    assert sub_b in a.routes() and a.subnet() in b.routes()
    cluster.etcd.start()
    eventually(lambda: _assert_in("store.recovered", a.log.read_text()), 20,
               what="store.recovered logged")
    c = cluster.add_node(1)
    cluster.start(c)
    cluster.wait_ready(c)
    eventually(lambda: _assert_in(c.subnet(), a.routes()), 10, what="a's route to c")
    retries = [line for line in a.log.read_text().splitlines() if "store.unavailable" in line]
    assert any("retry_in=10.0" in line for line in retries)  # backed off, did not spin


def _assert_in(needle: str, haystack: str) -> bool:
    assert needle in haystack
    return True


def _assert_not_in(needle: str, haystack: str) -> bool:
    assert needle not in haystack
    return True
