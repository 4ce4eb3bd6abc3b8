"""The installed bundle does real work in namespaces, called by the names in /opt/cni/bin
(under a DESTDIR): without an agent (the CNI executable execs tartan-full), and through the
bundle's own tartand (the CNI executable relays to its socket)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from bundle_kit import Staged
from etcd_server import ETCD, EtcdServer

from harness import Netns, PluginReply, eventually, plugin_dir, run_plugin, stop_process, unique

pytestmark = pytest.mark.kernel


@dataclass
class Node:
    """A node namespace whose plugins are the installed ones."""

    staged: Staged
    host: Netns
    factory: object
    data_dir: Path
    env: dict[str, str]

    def run(self, plugin: str, command: str, config: dict, pod: Netns, container: str,
            **kw) -> PluginReply:
        return run_plugin(str(self.staged.cni(plugin)), command, config,
                          container_id=container, netns=pod.path, host_ns=self.host,
                          path=[self.staged.cni_bin], extra_env=self.env, **kw)

    def reservations(self, network: str) -> list[str]:
        folder = self.data_dir / network
        return sorted(p.name for p in folder.iterdir() if p.name[0].isdigit()) \
            if folder.exists() else []

    def veths(self) -> list[str]:
        return [name for name in self.host.links() if name.startswith("veth")]

    def masq_rules(self) -> list[str]:
        return [r for r in self.host.iptables_save("nat").splitlines() if "TARTAN" in r]


@pytest.fixture
def node(staged, host_ns, netns_factory, tmp_path, no_agent) -> Node:
    assert os.geteuid() == 0, "kernel tests need root"
    data = tmp_path / "networks"
    data.mkdir()
    return Node(staged, host_ns, netns_factory, data, no_agent)


def bridge_config(node: Node, **extra) -> dict:
    return {"cniVersion": "1.1.0", "name": unique("tnet"), "type": "tartan-bridge",
            "bridge": "cni0", "isGateway": True, "ipMasq": True,
            "ipam": {"type": "tartan-ipam", "subnet": "10.252.0.0/24",
                     "dataDir": str(node.data_dir)}, **extra}


def test_bridge_add_check_del_without_agent(node):
    config = bridge_config(node)
    pod, container = node.factory("tp"), unique("ctr-")
    added = node.run("tartan-bridge", "ADD", config, pod, container)
    assert added.code == 0, added.stdout + added.stderr
    result = added.json
    assert result["ips"][0]["gateway"] == "10.252.0.1"
    assert pod.ping("10.252.0.1")
    assert node.reservations(config["name"]) == [result["ips"][0]["address"].split("/")[0]]
    assert node.veths() and node.masq_rules()

    checked = node.run("tartan-bridge", "CHECK", {**config, "prevResult": result}, pod,
                       container)
    assert checked.code == 0, checked.stdout

    for _ in range(2):  # DEL twice: the second finds everything gone and succeeds
        deleted = node.run("tartan-bridge", "DEL", config, pod, container)
        assert deleted.code == 0, deleted.stdout
    assert node.reservations(config["name"]) == []
    assert node.veths() == [] and node.masq_rules() == []
    assert "eth0" not in pod.links()


def test_ipam_alone_allocates_and_releases(node):
    config = {"cniVersion": "1.1.0", "name": unique("tnet"), "type": "tartan-bridge",
              "ipam": {"type": "tartan-ipam", "subnet": "10.252.1.0/24",
                       "dataDir": str(node.data_dir)}}
    pod, container = node.factory("tp"), unique("ctr-")
    added = node.run("tartan-ipam", "ADD", config, pod, container)
    assert added.code == 0, added.stdout + added.stderr
    assert added.json["ips"][0]["address"] == "10.252.1.2/24"
    checked = node.run("tartan-ipam", "CHECK", {**config, "prevResult": added.json}, pod,
                       container)
    assert checked.code == 0, checked.stdout
    assert node.run("tartan-ipam", "DEL", config, pod, container).code == 0
    assert node.reservations(config["name"]) == []


def test_meta_plugin_delegates_to_the_installed_bridge(node, tmp_path):
    subnet_file = tmp_path / "subnet.env"
    subnet_file.write_text("FLANNEL_NETWORK=10.253.0.0/16\nFLANNEL_SUBNET=10.253.4.1/24\n"
                           "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    config = {"cniVersion": "1.0.0", "name": unique("tnet"), "type": "tartan",
              "subnetFile": str(subnet_file), "dataDir": str(tmp_path / "meta"),
              "delegate": {"ipam": {"dataDir": str(node.data_dir)}}}
    pod, container = node.factory("tp"), unique("ctr-")
    added = node.run("tartan", "ADD", config, pod, container)
    assert added.code == 0, added.stdout + added.stderr
    assert added.json["ips"][0]["address"].startswith("10.253.4.")
    assert pod.ping("10.253.4.1")
    assert node.run("tartan", "DEL", config, pod, container).code == 0
    assert node.reservations(config["name"]) == [] and node.veths() == []


# --- the bundle's tartand, on etcd, serving the bundle's CNI executable --------------------


@dataclass
class Agent:
    node: Netns
    socket: Path
    log: Path
    proc: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def http(self, path: str) -> str:
        code = ("import sys,urllib.request;sys.stdout.write(urllib.request.urlopen("
                f"'http://127.0.0.1:9808{path}',timeout=2).read().decode())")
        return self.node.run(str(plugin_dir() / "python"), "-c", code).stdout

    def stop(self) -> None:
        stop_process(self.proc)


def nsenter(ns: Netns, argv: list[str]) -> list[str]:
    """Only the network namespace: the plugins and the agent share this mount namespace,
    as a runtime and tartand share the host's (the agent declines callers outside it)."""
    return ["nsenter", f"--net={ns.path}", *argv]


@pytest.fixture
def agent_on_etcd(staged, host_ns, tmp_path):
    if not ETCD.exists():
        pytest.skip(f"{ETCD} is not installed (Debian package etcd-server)")
    host_ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    host_ns.run("ip", "addr", "add", "198.18.9.2/24", "dev", "eth0")
    for link in ("eth0", "eth0p"):
        host_ns.run("ip", "link", "set", link, "up")
    etcd = EtcdServer(netns=host_ns.name, host="127.0.0.1")
    agent = None
    try:
        etcd.start()
        conf = tmp_path / "net-conf.json"
        conf.write_text(json.dumps({"Network": "10.254.0.0/16", "Backend": {"Type": "vxlan"}}))
        argv = [str(staged.command("tartand")), "--store", "etcd", "--etcd-endpoints", etcd.url,
                "--etcd-prefix", "/tartan-bundle-test", "--net-config", str(conf),
                "--iface", "eth0", "--subnet-file", str(tmp_path / "subnet.env"),
                "--cni-socket", str(tmp_path / "cni.sock"), "--ip-masq",
                "--reconcile-interval", "1"]
        log = tmp_path / "tartand.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(nsenter(host_ns, argv), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=out)
        agent = Agent(host_ns, tmp_path / "cni.sock", log, proc)
        eventually(lambda: agent.socket.exists() and "agent.started" in agent.log_text(), 30,
                   process=proc, what=lambda: f"tartand started:\n{agent.log_text()}")
        yield agent
    finally:
        if agent:
            agent.stop()
        etcd.stop()


def test_bundled_tartand_on_etcd_serves_the_bundled_plugins(agent_on_etcd, staged,
                                                           netns_factory, tmp_path):
    agent = agent_on_etcd
    subnet_env = (tmp_path / "subnet.env").read_text()
    assert "FLANNEL_NETWORK=10.254.0.0/16" in subnet_env
    eventually(lambda: "tartan_ready 1.0" in agent.http("/metrics"), 30, process=agent.proc,
               what=lambda: f"tartand ready:\n{agent.log_text()}")
    assert "tartan.1" in agent.node.links()  # pyroute2's vxlan link kind, from the bundle

    config = {"cniVersion": "1.1.0", "name": unique("tnet"), "type": "tartan-bridge",
              "bridge": "cni0", "isGateway": True,
              "ipam": {"type": "tartan-ipam", "subnet": "10.254.77.0/24",
                       "dataDir": str(tmp_path / "networks")}}
    pod, container = netns_factory("tp"), unique("ctr-")

    def plugin(command: str) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": container,
               "CNI_NETNS": pod.path, "CNI_IFNAME": "eth0", "CNI_PATH": str(staged.cni_bin),
               "TARTAN_CNI_SOCKET": str(agent.socket)}
        return subprocess.run(nsenter(agent.node, [str(staged.cni("tartan-bridge"))]),
                              input=json.dumps(config).encode(), env=env,
                              capture_output=True, timeout=60, check=False)

    added = plugin("ADD")
    assert added.returncode == 0, added.stdout + added.stderr
    assert pod.ping("10.254.77.1")
    assert plugin("DEL").returncode == 0
    served = [line for line in agent.log_text().splitlines()
              if "event=cni.request" in line and container in line]
    assert len(served) == 2, agent.log_text()
    assert 'tartan_cni_request_duration_seconds_count{command="ADD",outcome="ok"}' in \
        agent.http("/metrics")
