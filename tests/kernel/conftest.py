"""A bridge network inside a throwaway "node" namespace, with pods made by the real plugin."""

from __future__ import annotations

import copy
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import Netns, PluginReply, run_plugin, unique

pytestmark = pytest.mark.kernel


@dataclass
class Pod:
    ns: Netns
    container_id: str
    ifname: str
    reply: PluginReply

    @property
    def address(self) -> str:
        return self.reply.json["ips"][0]["address"].split("/")[0]


@dataclass
class BridgeNet:
    host: Netns
    factory: object
    data_dir: Path
    config: dict
    plugin: str = "tartan-bridge"
    pods: list[Pod] = field(default_factory=list)

    def conf(self, **overrides) -> dict:
        out = copy.deepcopy(self.config)
        out.update(overrides)
        return out

    def run(self, command: str, pod: Pod | None = None, config: dict | None = None,
            **kw) -> PluginReply:
        if pod is not None:
            kw.setdefault("container_id", pod.container_id)
            kw.setdefault("netns", pod.ns.path)
            kw.setdefault("ifname", pod.ifname)
        return run_plugin(self.plugin, command, config or self.config, host_ns=self.host, **kw)

    def add(self, config: dict | None = None, ifname: str = "eth0", ns: Netns | None = None,
            **kw) -> Pod:
        ns = ns or self.factory("tp")
        pod = Pod(ns, kw.pop("container_id", unique("ctr-")), ifname, PluginReply(0, "", ""))
        pod.reply = self.run("ADD", pod, config, **kw)
        self.pods.append(pod)
        return pod

    def delete(self, pod: Pod, config: dict | None = None, **kw) -> PluginReply:
        return self.run("DEL", pod, config, **kw)

    def check(self, pod: Pod, config: dict | None = None) -> PluginReply:
        conf = copy.deepcopy(config or self.config)
        conf["prevResult"] = pod.reply.json
        return self.run("CHECK", pod, conf)

    def reservations(self) -> list[str]:
        folder = self.data_dir / self.config["name"]
        if not folder.exists():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and _is_ip(p.name))

    def host_veths(self) -> list[str]:
        return [name for name in self.host.links() if name.startswith("veth")]

    def masq_rules(self) -> list[str]:
        saved = self.host.iptables_save("nat") + self.host.run(
            "ip6tables-save", "-t", "nat", check=False).stdout
        return [line for line in saved.splitlines() if "TARTAN" in line]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def bridge_config(data_dir: Path, subnet: str = "10.250.0.0/24", **extra) -> dict:
    config = {
        "cniVersion": "1.1.0",
        "name": unique("tnet"),
        "type": "tartan-bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipam": {"type": "tartan-ipam", "subnet": subnet, "dataDir": str(data_dir)},
    }
    config.update(extra)
    return config


@pytest.fixture
def bridge_net(host_ns, netns_factory, data_dir) -> BridgeNet:
    assert os.geteuid() == 0, "kernel tests need root"
    return BridgeNet(host_ns, netns_factory, data_dir, bridge_config(data_dir))
