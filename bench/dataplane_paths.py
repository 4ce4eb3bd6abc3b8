"""What Tartan's VXLAN path is compared with, built beside a lab's Tartan, between the same two
node namespaces and over the same underlay:

- `BareVxlan`: the kernel's own VXLAN device in each node, an address on it, the peer's FDB
  entry and neighbour by hand: no pods, no bridge, no veth, no rules of anyone's. What any
  VXLAN overlay costs at least.
- `FlannelBuilt`: the kernel objects flannel's vxlan backend and its CNI plugin make, made by
  hand and by the reference plugins: a pod on each node by the reference `bridge` plugin
  (host-local IPAM, bridge `flb0`, hairpin, default gateway, no ipMasq: flannel's delegate
  config), a VXLAN device `flannel.2` with flannel's settings (no learning, MTU = underlay
  - 50, the node's /32 of its subnet on it), and per peer flannel's route (subnet via its
  .0, onlink), permanent neighbour and FDB entry.
- `Try`: a change to the kernel's handling of the node namespaces (offloads, netfilter),
  applied to both nodes for one measurement and undone afterwards.

Both live in namespaces the lab made or this module makes; `remove` undoes everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

REFERENCE_DIR = "/usr/lib/cni"
UNDERLAY_DEV = "eth0"  # the lab's node uplink
VXLAN_OVERHEAD = 50


def run(ns: str, *argv: str, stdin: str | None = None) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True,
                          text=True, check=False, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{ns}: {' '.join(argv)} failed: {(proc.stderr or proc.stdout)[-300:]}")
    return proc.stdout


def mac_of(ns: str, dev: str) -> str:
    return json.loads(run(ns, "ip", "-j", "link", "show", dev))[0]["address"]


def underlay_mtu(ns: str) -> int:
    return int(json.loads(run(ns, "ip", "-j", "link", "show", UNDERLAY_DEV))[0]["mtu"])


def _vxlan(ns: str, dev: str, vni: int, port: int, local: str) -> None:
    run(ns, "ip", "link", "add", dev, "type", "vxlan", "id", str(vni), "local", local, "dev",
        UNDERLAY_DEV, "dstport", str(port), "nolearning")
    run(ns, "ip", "link", "set", dev, "mtu", str(underlay_mtu(ns) - VXLAN_OVERHEAD), "up")


def _peer_entries(ns: str, dev: str, peer_ip: str, peer_mac: str, peer_underlay: str) -> None:
    run(ns, "ip", "neigh", "replace", peer_ip, "lladdr", peer_mac, "dev", dev, "nud",
        "permanent")
    run(ns, "bridge", "fdb", "append", peer_mac, "dev", dev, "dst", peer_underlay, "self",
        "permanent")


@dataclass
class Node:
    """One end: the lab node's namespace and its underlay address."""

    netns: str
    underlay: str


@dataclass
class BareVxlan:
    """A VXLAN device in each of two nodes, 192.0.2.1 and .2 on them."""

    a: Node
    b: Node
    dev: str = "tbare0"
    vni: int = 3
    port: int = 4792

    def build(self) -> tuple[str, str]:
        """(address on a, address on b)."""
        ends = ((self.a, "192.0.2.1"), (self.b, "192.0.2.2"))
        for node, address in ends:
            _vxlan(node.netns, self.dev, self.vni, self.port, node.underlay)
            run(node.netns, "ip", "addr", "add", f"{address}/24", "dev", self.dev)
        for (node, _), (peer, peer_address) in (ends, ends[::-1]):
            _peer_entries(node.netns, self.dev, peer_address, mac_of(peer.netns, self.dev),
                          peer.underlay)
        return ends[0][1], ends[1][1]

    def remove(self) -> None:
        for node in (self.a, self.b):
            subprocess.run(["ip", "-n", node.netns, "link", "del", self.dev],
                           capture_output=True, check=False)


@dataclass
class FlannelBuilt:
    """flannel's objects on two nodes, a reference-plugin pod on each: `build` answers the
    two pods' (namespace, address)."""

    a: Node
    b: Node
    network: str = "10.99"  # 10.99.1.0/24 on a, 10.99.2.0/24 on b
    dev: str = "flannel.2"
    bridge: str = "flb0"
    vni: int = 2
    port: int = 4791
    pods: list[tuple[Node, str, str]] = field(default_factory=list)  # node, netns, config
    data_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="tbench-flannel-"))

    def build(self) -> tuple[tuple[str, str], tuple[str, str]]:
        ends = ((self.a, 1), (self.b, 2))
        for node, k in ends:
            _vxlan(node.netns, self.dev, self.vni, self.port, node.underlay)
            run(node.netns, "ip", "addr", "add", f"{self.network}.{k}.0/32", "dev", self.dev)
        for (node, _), (peer, k) in (ends, ends[::-1]):
            gateway = f"{self.network}.{k}.0"
            _peer_entries(node.netns, self.dev, gateway, mac_of(peer.netns, self.dev),
                          peer.underlay)
            run(node.netns, "ip", "route", "add", f"{self.network}.{k}.0/24", "via", gateway,
                "dev", self.dev, "onlink")
        return self._pod(self.a, 1), self._pod(self.b, 2)

    def _config(self, k: int, mtu: int) -> str:
        return json.dumps({
            "cniVersion": "1.0.0", "name": "flannel-built", "type": "bridge",
            "bridge": self.bridge, "mtu": mtu, "hairpinMode": True, "isGateway": True,
            "isDefaultGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": f"{self.network}.{k}.0/24",
                     "dataDir": self.data_dir,
                     "routes": [{"dst": f"{self.network}.0.0/16"}]},
        })

    def _pod(self, node: Node, k: int) -> tuple[str, str]:
        netns = f"tbfl{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        config = self._config(k, underlay_mtu(node.netns) - VXLAN_OVERHEAD)
        self.pods.append((node, netns, config))
        out = self._plugin(node, netns, config, "ADD")
        address = json.loads(out)["ips"][0]["address"].split("/")[0]
        return netns, address

    def _plugin(self, node: Node, netns: str, config: str, command: str) -> str:
        env = ["env", "-i", f"CNI_COMMAND={command}", f"CNI_CONTAINERID={netns}",
               f"CNI_NETNS=/run/netns/{netns}", "CNI_IFNAME=eth0", f"CNI_PATH={REFERENCE_DIR}",
               f"PATH={os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"]
        return run(node.netns, *env, f"{REFERENCE_DIR}/bridge", stdin=config)

    def remove(self) -> None:
        for node, netns, config in self.pods:
            with contextlib.suppress(RuntimeError):  # the namespace goes anyway
                self._plugin(node, netns, config, "DEL")
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        for node in (self.a, self.b):
            for dev in (self.dev, self.bridge):
                subprocess.run(["ip", "-n", node.netns, "link", "del", dev],
                               capture_output=True, check=False)
        subprocess.run(["rm", "-rf", self.data_dir], check=False)


@dataclass
class Try:
    """One change to both nodes' handling of packets: `apply(netns)`, then `undo(netns)`."""

    name: str
    apply: Callable[[str], None]
    undo: Callable[[str], None]


def _ethtool_all(feature: str, state: str, match: Callable[[str], bool]) -> Callable[[str], None]:
    def change(ns: str) -> None:
        for entry in json.loads(run(ns, "ip", "-j", "link", "show")):
            if match(entry["ifname"]):
                run(ns, "ethtool", "-K", entry["ifname"], feature, state)
    return change


def _pod_side(name: str) -> bool:
    return name.startswith("veth") or name == UNDERLAY_DEV


def _tunnel(name: str) -> bool:
    return name.startswith("tartan.") or name.startswith("flannel.")


def _sysctl(key: str, value: str) -> Callable[[str], None]:
    path = "/proc/sys/" + key.replace(".", "/")
    return lambda ns: run(ns, "sh", "-c", f"echo {value} > {path}")


def _notrack(cluster_cidr: str, verb: str) -> Callable[[str], None]:
    def change(ns: str) -> None:
        for chain in ("PREROUTING", "OUTPUT"):
            run(ns, "iptables", "-t", "raw", verb, chain, "-s", cluster_cidr, "-d",
                cluster_cidr, "-m", "comment", "--comment", "tartan bench: no conntrack",
                "-j", "NOTRACK")
    return change


def tries(cluster_cidr: str) -> list[Try]:
    """What the kernel offers to cut per-packet cost on the pod-to-pod VXLAN path."""
    return [
        Try("GRO on the veths (pods' and the node uplink)",
            _ethtool_all("gro", "on", _pod_side), _ethtool_all("gro", "off", _pod_side)),
        Try("UDP GRO forwarding on the uplink and the tunnel",
            _ethtool_all("rx-udp-gro-forwarding", "on",
                         lambda n: n == UNDERLAY_DEV or _tunnel(n)),
            _ethtool_all("rx-udp-gro-forwarding", "off",
                         lambda n: n == UNDERLAY_DEV or _tunnel(n))),
        Try("no br_netfilter on the pod bridge (bridge-nf-call-iptables=0)",
            _sysctl("net.bridge.bridge-nf-call-iptables", "0"),
            _sysctl("net.bridge.bridge-nf-call-iptables", "1")),
        Try("no conntrack for pod-to-pod traffic (raw NOTRACK)",
            _notrack(cluster_cidr, "-I"), _notrack(cluster_cidr, "-D")),
    ]
