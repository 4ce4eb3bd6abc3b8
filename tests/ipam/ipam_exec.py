"""Helpers for running tartan-ipam (and the reference host-local) as a runtime does."""

from __future__ import annotations

from pathlib import Path

from harness import PluginReply, run_plugin

NETNS = "/proc/self/ns/net"  # an IPAM plugin never enters the netns; any path will do
NETWORK = "podnet"


def netconf(data_dir: Path, *range_sets: list[dict], version: str = "1.1.0", **ipam) -> dict:
    """A network config whose ipam section uses `range_sets` (default one /24)."""
    sets = [list(s) for s in range_sets] or [[{"subnet": "10.1.0.0/24"}]]
    return {
        "cniVersion": version,
        "name": NETWORK,
        "type": "tartan-bridge",
        "ipam": {"type": "tartan-ipam", "dataDir": str(data_dir), "ranges": sets, **ipam},
    }


def ipam(
    command: str,
    conf: dict,
    container_id: str = "",
    ifname: str = "eth0",
    *,
    plugin: str = "tartan-ipam",
    cni_args: str = "",
) -> PluginReply:
    return run_plugin(
        plugin, command, conf, container_id=container_id, netns=NETNS, ifname=ifname,
        cni_args=cni_args,
    )


def address(reply: PluginReply, index: int = 0) -> str:
    assert reply.code == 0, reply.stdout + reply.stderr
    return reply.json["ips"][index]["address"].split("/")[0]


def files(data_dir: Path) -> list[str]:
    """Everything under the network's directory, relative to it."""
    root = data_dir / NETWORK
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def reservations(data_dir: Path) -> dict[str, bytes]:
    root = data_dir / NETWORK
    return {
        p.name: p.read_bytes()
        for p in root.iterdir()
        if p.is_file() and p.name != "lock" and not p.name.startswith(("last_", "."))
    }
