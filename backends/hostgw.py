"""host-gw: a route per peer subnet via the peer's public IP (peers on this L2 segment only)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tartan.backends import entries, routes
from tartan.backends.entries import Entries
from tartan.backends.registry import (
    NodeInfo,
    PeerMode,
    PeerProgramming,
    PeerState,
    Report,
    mtu_field,
    register,
)
from tartan.ipam.lease import Lease, LeaseAttrs
from tartan.ipam.netconf import NetworkConfig
from tartan.kernel import gso


@dataclass(frozen=True)
class HostGwConfig:
    mtu: int = 0  # 0: the uplink's


def parse_config(section: Mapping[str, Any]) -> HostGwConfig:
    """host-gw's Backend fields: only MTU (flannel's host-gw has none; others are ignored)."""
    return HostGwConfig(mtu=mtu_field(section))


def not_on_segment(peer: Lease, node: NodeInfo) -> str:
    nets = ", ".join(str(n) for n in node.segments) or "none"
    return (f"peer {peer.attrs.public_ip} is not on this node's L2 segment ({nets} on "
            f"{node.iface}): host-gw needs every node on one segment; use vxlan, or vxlan "
            "with DirectRouting")


def peer_route(peer: Lease, node: NodeInfo) -> tuple[routes.RouteSpec | None, PeerState]:
    """The host-gw route to a peer, or why there can't be one."""
    (subnet, _), ip = routes.spelled(peer.subnet), peer.attrs.public_ip
    if not node.on_segment(ip):
        return None, PeerState.skipped(subnet, ip, peer.attrs.backend_type,
                                       not_on_segment(peer, node))
    spec = routes.host_gw_route(subnet, ip, node.iface_index)
    return spec, PeerState(subnet, ip, peer.attrs.backend_type, PeerMode.HOST_GW,
                           PeerProgramming.PROGRAMMED)


@register("host-gw", parse_config)
class HostGw:
    name = "host-gw"

    def __init__(self, conf: HostGwConfig, net: NetworkConfig, node: NodeInfo) -> None:
        self.conf, self.node = conf, node
        self.desired = entries.Desired(node.iface_index)

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(public_ip=self.node.public_ip, backend_type="host-gw", backend_data={})

    def mtu(self) -> int:
        return self.conf.mtu or self.node.iface_mtu

    def pod_gso_max_size(self) -> int:
        # Pod traffic leaves only through the bridge and the uplink: when the operator has
        # raised the uplink's IPv4 GSO limit (BIG TCP), pods may build packets that large.
        size = min(self.node.iface_gso_max, gso.KERNEL_MAX)
        return size if size > gso.LEGACY_MAX else 0

    def status(self) -> dict[str, Any]:
        return {"directRouting": False}

    def setup(self, own: Lease) -> None:
        return None

    def _wanted(self, peers: list[Lease]) -> Entries:
        wanted = Entries()
        for peer in peers:
            spec, state = peer_route(peer, self.node)
            wanted.states.append(state)
            if spec:
                wanted.routes.append(spec)
        return wanted

    def reconcile(self, own: Lease, peers: list[Lease]) -> Report:
        wanted = self._wanted(peers)
        return Report(peers=wanted.states, corrections=entries.sync(wanted, self.desired))

    def program(self, own: Lease, before: list[Lease], after: list[Lease]) -> Report:
        wanted = self._wanted(after)
        changes = entries.apply_delta(self._wanted(before), wanted, self.desired)
        return Report(peers=wanted.states, corrections=changes)
