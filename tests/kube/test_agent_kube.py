"""The real tartand --kube-subnet-mgr in a node namespace, against the test API server (in a
router namespace: nothing listens or routes in the host's), with the vxlan backend."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kube_api_server import KubeApiServer
from kube_kit import flannel_node, node

from harness import Netns, eventually, plugin_dir

pytestmark = pytest.mark.kernel

WAIT = 15.0
ROUTER_IP = "198.18.1.1"
FLANNEL_MAC = "0e:aa:bb:cc:dd:01"
NET_CONF = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
PREFIX = "flannel.alpha.coreos.com/"


@dataclass
class Node:
    ns: Netns
    ip: str
    name: str
    tmp: Path
    proc: subprocess.Popen | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.tmp / f"{self.name}.log"

    @property
    def subnet_file(self) -> Path:
        return self.tmp / f"{self.name}.env"

    def get(self, path: str) -> tuple[int, str]:
        code = ("import urllib.request,urllib.error,sys\n"
                "try:\n"
                f" r=urllib.request.urlopen('http://127.0.0.1:9808{path}',timeout=2)\n"
                " print(r.status);sys.stdout.write(r.read().decode())\n"
                "except urllib.error.HTTPError as e:\n"
                " print(e.code);sys.stdout.write(e.read().decode())\n")
        out = self.ns.run(str(plugin_dir() / "python"), "-c", code, check=False).stdout
        status, _, body = out.partition("\n")
        return int(status or 0), body

    def status(self) -> dict:
        code, body = self.get("/status")
        assert code == 200, body
        return json.loads(body)

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def start(self, *argv: str, exe: list[str] | None = None) -> None:
        """tartand (the venv's, or `exe`) with these flags and the node's own."""
        self.argv = [*(exe or [str(plugin_dir() / "tartand")]), "--iface", "eth0",
                     "--node-name", self.name,
                     "--subnet-file", str(self.subnet_file),
                     "--cni-socket", str(self.tmp / f"{self.name}.sock"),
                     "--reconcile-interval", "1", *argv]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns.name, *self.argv],
                                         stdout=subprocess.DEVNULL, stderr=log)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait_ready(self) -> None:
        eventually(self.ready, WAIT, process=self.proc,
                   what=lambda: f"{self.name} ready:\n{self.log.read_text()}",
                   retry_on=(AssertionError, urllib.error.URLError, ValueError))


class Cluster:
    def __init__(self, factory, tmp: Path) -> None:
        self.factory, self.tmp, self.nodes = factory, tmp, []
        self.router = factory("tr")
        self.router.run("ip", "link", "add", "seg1", "type", "bridge")
        self.router.run("ip", "addr", "add", f"{ROUTER_IP}/24", "dev", "seg1")
        self.router.run("ip", "link", "set", "seg1", "up")
        self.router.run("ip", "link", "set", "lo", "up")
        self.api = KubeApiServer(ROUTER_IP, 0, netns=self.router.name,
                                 bookmark_interval=1.0).start()
        self.kubeconfig = self.api.write_kubeconfig(tmp / "kubeconfig")
        self.net_conf = tmp / "net-conf.json"
        self.net_conf.write_text(json.dumps(NET_CONF))

    def add_node(self, name: str) -> Node:
        ns = self.factory("tn")
        ip = f"198.18.1.{11 + len(self.nodes)}"
        port = f"p{ns.name[-8:]}"
        subprocess.run(["ip", "link", "add", "eth0", "netns", ns.name, "type", "veth", "peer",
                        "name", port, "netns", self.router.name], check=True)
        self.router.run("ip", "link", "set", port, "master", "seg1", "up")
        ns.run("ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        ns.run("ip", "link", "set", "eth0", "up")
        ns.run("ip", "link", "set", "lo", "up")
        ns.run("ip", "route", "add", "default", "via", ROUTER_IP)
        made = Node(ns, ip, name, self.tmp)
        self.nodes.append(made)
        return made

    def start_kube(self, node: Node, *extra: str, exe: list[str] | None = None) -> None:
        node.start("--kube-subnet-mgr", "--kubeconfig-file", str(self.kubeconfig),
                   "--net-config", str(self.net_conf), "--ip-masq", *extra, exe=exe)


@pytest.fixture
def cluster(netns_factory, tmp_path) -> Iterator[Cluster]:
    made: Cluster | None = None
    try:
        made = Cluster(netns_factory, tmp_path)
        yield made
    finally:
        if made is not None:
            for member in made.nodes:
                member.stop()
            made.api.stop()


def annotations(cluster: Cluster, name: str) -> dict:
    return (cluster.api.get("nodes", name) or {}).get("metadata", {}).get("annotations", {})


def test_waits_for_its_pod_cidr_then_publishes_and_programs_a_flannel_peer(cluster):
    a = cluster.add_node("node1")
    cluster.api.create("nodes", node("node1", address=a.ip))
    cluster.start_kube(a)

    def waiting() -> dict:
        found = a.status()["node"].get("waitingFor") or {}
        assert found.get("what") == "podCIDR", found
        return found
    found = eventually(waiting, WAIT, process=a.proc, retry_on=(AssertionError, ValueError),
                       what=lambda: f"waiting for the podCIDR:\n{a.log.read_text()}")
    assert "Node node1 to get spec.podCIDR" in found["message"]
    assert not a.ready() and not a.subnet_file.exists()
    assert "agent.waiting" in a.log.read_text()

    cluster.api.patch_object("nodes", "node1", {"spec": {"podCIDR": "10.244.7.0/24",
                                                         "podCIDRs": ["10.244.7.0/24"]}})
    a.wait_ready()
    assert "FLANNEL_SUBNET=10.244.7.1/24" in a.subnet_file.read_text()
    mac = a.ns.run("cat", "/sys/class/net/tartan.1/address").stdout.strip()
    assert annotations(cluster, "node1") == {
        PREFIX + "backend-data": json.dumps({"VNI": 1, "VtepMAC": mac}, separators=(",", ":")),
        PREFIX + "backend-type": "vxlan",
        PREFIX + "kube-subnet-manager": "true",
        PREFIX + "public-ip": a.ip,
    }
    status = a.status()
    assert status["node"]["subnet"] == "10.244.7.0/24" and "waitingFor" not in status["node"]
    assert status["kube"]["apiServer"] == cluster.api.url and status["kube"]["reachable"]

    # a node flanneld manages, as flannel annotates it, is a peer like any other
    cluster.api.create("nodes", flannel_node("flannel1", "10.244.3.0/24", "198.18.1.50",
                                             FLANNEL_MAC))

    def programmed() -> bool:
        routes = a.ns.run("ip", "route").stdout
        assert "10.244.3.0/24 via 10.244.3.0 dev tartan.1 proto 152 onlink" in routes
        neigh = a.ns.run("ip", "neigh", "show", "10.244.3.0", "dev", "tartan.1").stdout
        assert FLANNEL_MAC in neigh and "PERMANENT" in neigh
        fdb = a.ns.run("bridge", "fdb", "show", "dev", "tartan.1").stdout
        assert f"{FLANNEL_MAC} dst 198.18.1.50 self permanent" in fdb
        return True
    eventually(programmed, WAIT, process=a.proc, what="the flannel node's route, neighbour, FDB")
    peers = {p["subnet"]: p for p in a.status()["peers"]}
    assert peers["10.244.3.0/24"]["state"] == "programmed"

    cluster.api.delete("nodes", "flannel1")

    def removed() -> bool:
        assert "10.244.3.0/24" not in a.ns.run("ip", "route").stdout
        assert FLANNEL_MAC not in a.ns.run("bridge", "fdb", "show", "dev", "tartan.1").stdout
        assert FLANNEL_MAC not in a.ns.run("ip", "neigh", "show", "dev", "tartan.1").stdout
        return True
    eventually(removed, WAIT, process=a.proc, what="the deleted node's entries removed")
    assert a.status()["peers"] == []

    # NetworkPolicy from the API: a pod of this node isolated by a policy gets its chain,
    # and its peers (a pod of another node) their set
    cluster.api.create("namespaces", {"metadata": {"name": "x"}})
    for name, where, ip, app in (("a", "node1", "10.244.7.5", "db"),
                                 ("b", "node9", "10.244.9.5", "web")):
        cluster.api.create("pods", {
            "metadata": {"namespace": "x", "name": name, "labels": {"app": app}},
            "spec": {"nodeName": where, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
    cluster.api.create("networkpolicies", {
        "metadata": {"namespace": "x", "name": "db"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}})

    def enforced() -> bool:
        rules = a.ns.run("iptables-save", "-t", "filter").stdout
        assert "x/db" in rules and "10.244.7.5" in rules, rules
        sets = a.ns.run("ipset", "list", "-o", "save").stdout
        assert "10.244.9.5" in sets, sets
        return True
    eventually(enforced, WAIT, process=a.proc, what="x/a's chain and x/b in a set")
    policy = a.status()["networkPolicy"]
    assert policy["source"] == "kube" and policy["policies"] == 1 and policy["pods"] == 1


def test_two_tartan_nodes_see_each_other_through_their_nodes(cluster):
    a, b = cluster.add_node("node1"), cluster.add_node("node2")
    cluster.api.create("nodes", node("node1", "10.244.1.0/24", address=a.ip))
    cluster.api.create("nodes", node("node2", "10.244.2.0/24", address=b.ip))
    for member in (a, b):
        cluster.start_kube(member, "--no-network-policy", "--kube-stall-timeout", "2")
    for member in (a, b):
        member.wait_ready()

    def routed() -> bool:
        assert "10.244.2.0/24 via 10.244.2.0 dev tartan.1" in a.ns.run("ip", "route").stdout
        assert "10.244.1.0/24 via 10.244.1.0 dev tartan.1" in b.ns.run("ip", "route").stdout
        return True
    eventually(routed, WAIT, what="each node's route to the other")
    # the annotation of node2 is what node1 programmed
    mac_b = json.loads(annotations(cluster, "node2")[PREFIX + "backend-data"])["VtepMAC"]
    assert f"{mac_b} dst {b.ip}" in a.ns.run("bridge", "fdb", "show", "dev", "tartan.1").stdout
    a.ns.run("ping", "-c", "1", "-W", "2", "10.244.2.0")  # b's VTEP answers across the tunnel

    # the API goes away: the datapath stays, /status says so; it comes back: all is well
    cluster.api.fail(10_000, 503)
    cluster.api.stall()

    def unreachable() -> dict:
        kube = a.status()["kube"]
        assert not kube["reachable"] and "HTTP 503" in kube["error"], kube
        return kube
    eventually(unreachable, WAIT, process=a.proc, what="the API's outage in /status")
    assert "10.244.2.0/24 via 10.244.2.0 dev tartan.1" in a.ns.run("ip", "route").stdout
    out = a.ns.run(str(plugin_dir() / "tartanctl"), "status").stdout
    assert f"kube API: {cluster.api.url} (UNREACHABLE: HTTP 503" in out
    cluster.api.heal()
    eventually(lambda: a.status()["kube"]["reachable"], WAIT, process=a.proc,
               what="the API back in /status")


def test_an_unreachable_api_is_waited_for_and_named(cluster):
    a = cluster.add_node("node1")
    a.start("--kube-subnet-mgr", "--kube-api-url", "http://198.18.1.1:9",
            "--net-config", str(cluster.net_conf))

    def waiting() -> dict:
        found = a.status()["node"].get("waitingFor") or {}
        assert found.get("what") == "kubeApi", found
        return found
    found = eventually(waiting, WAIT, process=a.proc, retry_on=(AssertionError, ValueError),
                       what=lambda: a.log.read_text())
    assert "http://198.18.1.1:9" in found["message"]
    out = a.ns.run(str(plugin_dir() / "tartanctl"), "status").stdout
    assert "waiting:  the Kubernetes API at http://198.18.1.1:9 has not listed nodes" in out


def test_a_missing_net_config_file_is_one_line_naming_it(cluster):
    a = cluster.add_node("node1")
    missing = cluster.tmp / "nowhere" / "net-conf.json"
    a.start("--kube-subnet-mgr", "--kubeconfig-file", str(cluster.kubeconfig),
            "--net-config", str(missing))
    assert a.proc.wait(timeout=WAIT) == 2
    err = a.log.read_text().strip()
    assert err.splitlines() == [f"tartand: --net-config {missing}: no such file; write "
                                "flannel's net-conf.json there, e.g. {\"Network\": "
                                "\"10.244.0.0/16\", \"Backend\": {\"Type\": \"vxlan\"}}"]


def test_the_store_without_a_network_config_is_waited_for_and_named(cluster):
    a = cluster.add_node("node1")
    db = cluster.tmp / "leases.db"
    a.start("--store", f"sqlite:{db}", "--no-network-policy")

    def waiting() -> dict:
        found = a.status()["node"].get("waitingFor") or {}
        assert found.get("what") == "netConfig", found
        return found
    found = eventually(waiting, WAIT, process=a.proc, retry_on=(AssertionError, ValueError),
                       what=lambda: a.log.read_text())
    assert found["message"] == (f"no network config in the store sqlite:{db}: write flannel's "
                                "net-conf.json there, or pass --net-config FILE")
    out = a.ns.run(str(plugin_dir() / "tartanctl"), "status").stdout
    assert f"waiting:  no network config in the store sqlite:{db}" in out


def test_policy_from_the_api_beside_store_leases_has_its_one_client_in_status(cluster):
    """--policy-source kube without --kube-subnet-mgr: leases in the store, NetworkPolicy
    from the API through the one client, shown in /status as "kube"; the CNI journal the
    plugins left is emptied (nothing records it: the API has the pods)."""
    from tartan.cni import journal

    a = cluster.add_node("node1")
    journal_dir = cluster.tmp / "journal"
    env = {"CNI_ARGS": "K8S_POD_NAMESPACE=x;K8S_POD_NAME=a", "CNI_CONTAINERID": "c1",
           "CNI_IFNAME": "eth0"}
    assert journal.note("ADD", env, 0, '{"ips": [{"address": "10.244.1.5/24"}]}',
                        journal_dir)
    a.start("--store", f"sqlite:{cluster.tmp / 'leases.db'}", "--net-config",
            str(cluster.net_conf), "--policy-source", "kube", "--kubeconfig-file",
            str(cluster.kubeconfig), "--cni-journal", str(journal_dir))
    a.wait_ready()

    def synced() -> dict:
        status = a.status()  # ready (the routing) comes before NetworkPolicy starts
        assert (status.get("networkPolicy") or {}).get("synced"), status.get("networkPolicy")
        return status
    status = eventually(synced, WAIT, process=a.proc, retry_on=(AssertionError, ValueError),
                        what=lambda: f"NetworkPolicy from the API:\n{a.log.read_text()}")
    assert status["networkPolicy"]["source"] == "kube"
    kube = status["kube"]
    assert kube["apiServer"] == cluster.api.url and kube["reachable"]
    assert sorted(w["resource"] for w in kube["watches"]) == [
        "namespaces", "networkpolicies", "pods"]
    assert "leaseSource" not in status["node"]  # the lease is the store's
    assert list(journal_dir.glob("*.json")) == []
    assert "event=pod.journal_discarded requests=1" in a.log.read_text()
    a.stop()
    assert a.proc.returncode == 0


BUNDLE = Path(__file__).resolve().parents[2] / "dist" / "tartan" / "tartan-full"


@pytest.mark.skipif(not BUNDLE.exists(), reason="no bundle: make bundle")
def test_the_bundles_tartand_runs_the_kube_subnet_manager(cluster):
    """The PyInstaller bundle carries the kubernetes client: its tartand (tartan-full called
    by that name, as /usr/local/bin/tartand is) lists, watches and patches."""
    a = cluster.add_node("node1")
    cluster.api.create("nodes", node("node1", "10.244.7.0/24", address=a.ip))
    cluster.start_kube(a, "--no-network-policy",
                       exe=["bash", "-c", 'exec -a tartand "$0" "$@"', str(BUNDLE)])
    a.wait_ready()
    assert annotations(cluster, "node1")[PREFIX + "public-ip"] == a.ip
    assert cluster.api.count("nodes", "watch") >= 1
