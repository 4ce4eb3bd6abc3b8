"""The `tartan` meta plugin in a throwaway node namespace, run exactly as a runtime runs it:
the executable from CNI_PATH, env + stdin, delegating to tartan-bridge and tartan-ipam."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import Netns, PluginReply, plugin_dir, run_plugin, unique

pytestmark = pytest.mark.kernel


def subnet_env(subnet: str = "10.251.3.1/24", network: str = "10.251.0.0/16",
               mtu: int = 1450, ipmasq: bool = True) -> str:
    return (f"FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={subnet}\n"
            f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={str(ipmasq).lower()}\n")


@dataclass
class Pod:
    ns: Netns
    container_id: str
    reply: PluginReply = field(default_factory=lambda: PluginReply(0, "", ""))

    @property
    def address(self) -> str:
        return self.reply.json["ips"][0]["address"].split("/")[0]


@dataclass
class Node:
    host: Netns
    factory: object
    subnet_file: Path
    meta_dir: Path
    ipam_dir: Path
    config: dict

    def conf(self, **overrides) -> dict:
        out = copy.deepcopy(self.config)
        out.update(overrides)
        return out

    def write_subnet(self, **kw) -> None:
        self.subnet_file.write_text(subnet_env(**kw))

    def run(self, command: str, pod: Pod | None = None, config: dict | None = None,
            **kw) -> PluginReply:
        if pod is not None:
            kw.setdefault("container_id", pod.container_id)
            kw.setdefault("netns", pod.ns.path)
        plugin = kw.pop("plugin", "tartan")
        return run_plugin(plugin, command, config or self.config, host_ns=self.host, **kw)

    def add(self, config: dict | None = None) -> Pod:
        pod = Pod(self.factory("tp"), unique("ctr-"))
        pod.reply = self.run("ADD", pod, config)
        return pod

    def delete(self, pod: Pod, config: dict | None = None) -> PluginReply:
        return self.run("DEL", pod, config)

    def stored(self, pod: Pod) -> Path:
        return self.meta_dir / pod.container_id

    def reservations(self) -> list[str]:
        folder = self.ipam_dir / self.config["name"]
        if not folder.exists():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file()
                      and p.name != "lock" and not p.name.startswith("last_reserved"))

    def bridge_v4(self) -> list[str]:
        return [a for a in self.host.addresses("cni0") if ":" not in a]

    def masq_rules(self) -> list[str]:
        return [line for line in self.host.iptables_save("nat").splitlines() if "TARTAN" in line]


@pytest.fixture
def node(host_ns, netns_factory, tmp_path) -> Node:
    assert os.geteuid() == 0, "kernel tests need root"
    ipam_dir = tmp_path / "networks"
    config = {
        "cniVersion": "1.1.0",
        "name": unique("tnet"),
        "type": "tartan",
        "subnetFile": str(tmp_path / "subnet.env"),
        "dataDir": str(tmp_path / "tartan"),
        "delegate": {"ipam": {"dataDir": str(ipam_dir)}},
    }
    made = Node(host_ns, netns_factory, tmp_path / "subnet.env", tmp_path / "tartan", ipam_dir,
                config)
    made.write_subnet()
    return made


def test_add_gives_a_working_pod_in_the_node_subnet(node):
    a = node.add()
    b = node.add()
    assert a.reply.code == 0, a.reply.stdout
    ip = a.reply.json["ips"][0]
    assert ip["address"].startswith("10.251.3.") and ip["address"].endswith("/24")
    assert ip["gateway"] == "10.251.3.1"
    assert "10.251.0.0/16 via 10.251.3.1" in a.ns.run("ip", "route", "show").stdout
    assert node.bridge_v4() == ["10.251.3.1/24"]
    assert a.ns.ping("10.251.3.1") and a.ns.ping(b.address)
    assert node.host.ping(a.address)
    assert node.reservations() == sorted([a.address, b.address])


def test_stored_delegate_is_valid_json_and_no_temp_file_remains(node):
    pod = node.add()
    assert pod.reply.code == 0, pod.reply.stdout
    delegate = json.loads(node.stored(pod).read_text())
    assert delegate["type"] == "tartan-bridge" and delegate["name"] == node.config["name"]
    assert delegate["ipam"]["ranges"] == [[{"subnet": "10.251.3.0/24"}]]
    assert os.listdir(node.meta_dir) == [pod.container_id]


@pytest.mark.parametrize("agent_masquerades", [True, False])
def test_ip_masq_follows_flannel_ipmasq(node, agent_masquerades):
    node.write_subnet(ipmasq=agent_masquerades)
    pod = node.add()
    assert pod.reply.code == 0, pod.reply.stdout
    rules = node.masq_rules()
    if agent_masquerades:
        assert rules == []
    else:
        assert any(f"-s {pod.address}/32" in r for r in rules)
    assert node.delete(pod).code == 0
    assert node.masq_rules() == []


def test_mtu_follows_flannel_mtu(node):
    node.write_subnet(mtu=1400)
    pod = node.add()
    assert pod.reply.code == 0, pod.reply.stdout
    assert "mtu 1400" in pod.ns.run("ip", "link", "show", "eth0").stdout
    veth = pod.reply.json["interfaces"][1]["name"]
    assert "mtu 1400" in node.host.run("ip", "link", "show", veth).stdout


def test_del_removes_pod_address_and_record_and_twice_is_fine(node):
    pod = node.add()
    assert pod.reply.code == 0, pod.reply.stdout
    assert node.delete(pod).code == 0
    assert "eth0" not in pod.ns.links()
    assert [n for n in node.host.links() if n.startswith("veth")] == []
    assert node.reservations() == []
    assert not node.stored(pod).exists()
    reply = node.delete(pod)
    assert reply.code == 0, reply.stdout


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_del_without_a_usable_record_still_releases_the_address(node, damage):
    pod = node.add()
    assert pod.reply.code == 0, pod.reply.stdout
    record = node.stored(pod)
    if damage == "missing":
        record.unlink()
    else:
        record.write_text(record.read_text()[:40])
    reply = node.delete(pod)
    assert reply.code == 0, reply.stdout
    assert node.reservations() == []
    assert "eth0" not in pod.ns.links()
    assert not record.exists()


def test_missing_subnet_file_is_try_again_later_and_creates_nothing(node):
    node.subnet_file.unlink()
    pod = node.add()
    assert pod.reply.error_code == 11, pod.reply.stdout
    assert f"subnet file {node.subnet_file} does not exist" in pod.reply.json["msg"]
    assert "cni0" not in node.host.links()
    assert pod.ns.links() == ["lo"]
    assert not node.meta_dir.exists() and node.reservations() == []


def test_new_subnet_replaces_the_bridge_gateway(node):
    first = node.add()
    assert first.reply.code == 0, first.reply.stdout
    node.write_subnet(subnet="10.251.7.1/24")
    second = node.add()
    assert second.reply.code == 0, second.reply.stdout
    assert second.address.startswith("10.251.7.")
    assert node.bridge_v4() == ["10.251.7.1/24"]
    assert second.ns.ping("10.251.7.1")
    # The old pod is torn down with the config it was made with.
    assert node.delete(first).code == 0
    assert node.reservations() == [second.address]


def test_status(node):
    assert node.run("STATUS", ifname="").code == 0
    node.subnet_file.unlink()
    reply = node.run("STATUS", ifname="")
    assert reply.error_code == 50, reply.stdout
    assert "is tartand running?" in reply.json["msg"]


def test_check_passes_for_a_good_pod(node):
    pod = node.add()
    conf = node.conf(prevResult=pod.reply.json)
    reply = node.run("CHECK", pod, conf)
    assert reply.code == 0, reply.stdout


def test_gc_releases_what_is_not_valid(node):
    keep = node.add()
    drop = node.add()
    gc = node.conf()
    gc["cni.dev/valid-attachments"] = [{"containerID": keep.container_id, "ifname": "eth0"}]
    reply = node.run("GC", config=gc, ifname="")
    assert reply.code == 0, reply.stdout
    assert node.reservations() == [keep.address]
    assert os.listdir(node.meta_dir) == [keep.container_id]
    assert drop.container_id not in os.listdir(node.meta_dir)


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_is_in_the_config_version(node, version):
    conf = node.conf(cniVersion=version)
    pod = node.add(conf)
    assert pod.reply.code == 0, pod.reply.stdout
    result = pod.reply.json
    assert result["cniVersion"] == version
    assert ("version" in result["ips"][0]) == version.startswith("0.")
    assert [i["name"] for i in result["interfaces"]][::2] == ["cni0", "eth0"]
    assert node.delete(pod, conf).code == 0
    assert node.reservations() == []


def test_delegate_not_on_cni_path_fails_cleanly(node, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    pod = Pod(node.factory("tp"), unique("ctr-"))
    pod.reply = node.run("ADD", pod, path=[empty], plugin=str(plugin_dir() / "tartan"))
    assert pod.reply.error_code == 7, pod.reply.stdout
    assert "'tartan-bridge' not found in CNI_PATH" in pod.reply.json["msg"]
    assert os.listdir(node.meta_dir) == []
    assert "cni0" not in node.host.links()


def test_reference_bridge_as_the_delegate(node):
    conf = node.conf(cniVersion="1.0.0")
    conf["delegate"]["type"] = "bridge"
    pod = node.add(conf)
    assert pod.reply.code == 0, pod.reply.stdout
    assert pod.ns.ping("10.251.3.1")
    assert json.loads(node.stored(pod).read_text())["type"] == "bridge"
    assert node.delete(pod, conf).code == 0
    assert node.reservations() == [] and "eth0" not in pod.ns.links()


def test_without_an_agent_a_kubelet_pods_add_and_del_are_left_for_it(node, tmp_path):
    """The plugin answers in-process (no agent here) and journals the pod for tartand."""
    from tartan.cni import journal

    folder = tmp_path / "journal"
    kubelet = {"cni_args": "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a",
               "extra_env": {journal.DIR_ENV: str(folder), "TARTAN_NO_AGENT": "1"}}
    pod = Pod(node.factory("tp"), unique("ctr-"))
    pod.reply = node.run("ADD", pod, **kubelet)
    assert pod.reply.code == 0, pod.reply.stdout
    assert node.run("DEL", pod, **kubelet).code == 0
    added, deleted = journal.entries(folder)
    assert (added.command, deleted.command) == ("ADD", "DEL")
    assert added.env["CNI_CONTAINERID"] == pod.container_id
    assert json.loads(added.stdout)["ips"][0]["address"].startswith(pod.address)
    other = Pod(node.factory("tp"), unique("ctr-"))  # not kubelet's: nothing to record
    other.reply = node.run("ADD", other, extra_env=kubelet["extra_env"])
    assert other.reply.code == 0 and len(journal.entries(folder)) == 2
    node.delete(other)
