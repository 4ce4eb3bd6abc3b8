"""vxlan (and vxlan with DirectRouting): one VXLAN device, and per peer a route, a permanent
neighbour entry and an FDB entry, all programmed up front.

Nothing relies on L2/L3-miss notifications, so pods keep talking while the agent is down.
With DirectRouting, peers on this node's L2 segment get a host-gw route instead.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from tartan.backends import entries, routes
from tartan.backends.entries import Entries
from tartan.backends.hostgw import peer_route
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
from tartan.ipam.netconf import NetConfError, NetworkConfig, flag, whole_number
from tartan.kernel import addr, link
from tartan.kernel.errors import KernelFailure
from tartan.kernel.link import Link
from tartan.kernel.neigh import FdbEntry, Neighbour
from tartan.kernel.route import RouteSpec

OVERHEAD = 50  # outer IPv4 + UDP + VXLAN headers
DEFAULT_VNI = 1
DEFAULT_PORT = 8472  # the Linux kernel's VXLAN port, which flannel uses by default
MAX_VNI = (1 << 24) - 1


@dataclass(frozen=True)
class VxlanConfig:
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_PORT
    direct_routing: bool = False  # host-gw routes to the peers on this node's segment
    mtu: int = 0  # 0: the uplink's, less the VXLAN overhead


def parse_config(section: Mapping[str, Any]) -> VxlanConfig:
    """vxlan's Backend fields, as flannel's vxlan backend reads them."""
    return VxlanConfig(
        vni=_ranged(section, "VNI", DEFAULT_VNI, 1, MAX_VNI),
        port=_ranged(section, "Port", DEFAULT_PORT, 1, 65535, zero_is_default=True),
        direct_routing=flag(section, "DirectRouting", False, "Backend."),
        mtu=mtu_field(section),
    )


def _ranged(section: Mapping[str, Any], name: str, default: int, low: int, high: int,
            zero_is_default: bool = False) -> int:
    value = whole_number(section, name, default, "Backend.")
    if value == 0 and zero_is_default:
        return default  # flannel: Port 0 means the kernel's default port
    if not low <= value <= high:
        raise NetConfError(f"Backend.{name}", f"Backend.{name} {value} is out of range; "
                           f"use {low} to {high}")
    return value


DEVICE_PREFIX = "tartan."


def device_name(vni: int) -> str:
    return f"{DEVICE_PREFIX}{vni}"


def is_device(li: link.Link) -> bool:
    """Whether `li` is a VXLAN device of tartand's (tartan.<VNI>)."""
    return li.kind == "vxlan" and li.name.startswith(DEVICE_PREFIX)


def find_device(links: Iterable[link.Link]) -> link.Link | None:
    return next((li for li in links if is_device(li)), None)


def vtep_mac(public_ip: str, vni: int, machine_id: Path = Path("/etc/machine-id")) -> str:
    """Stable across agent and node restarts: derived, never random (peers keep working)."""
    try:
        seed = machine_id.read_text().strip()
    except OSError:
        seed = ""
    digest = bytearray(hashlib.sha256(f"{seed}/{public_ip}/{vni}".encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in digest)


def vxlan_entries(peers: Iterable[Lease], device: int) -> Entries:
    """What the kernel holds for peers reached through the VXLAN device `device`: a route,
    a neighbour and an FDB entry each (doctor compares the kernel with it)."""
    wanted = Entries()
    for peer in peers:
        _vxlan_peer(peer, device, wanted)
    return wanted


def _vxlan_peer(peer: Lease, device: int, wanted: Entries) -> None:
    ip, kind = peer.attrs.public_ip, peer.attrs.backend_type
    subnet, gateway = routes.spelled(peer.subnet)
    mac = str(peer.attrs.backend_data.get("VtepMAC") or "").lower()
    if kind != "vxlan" or not mac:
        reason = f"peer {ip} uses backend {kind!r} without a VTEP MAC: mixed backends"
        wanted.states.append(PeerState.skipped(subnet, ip, kind, reason))
        return
    wanted.routes.append(RouteSpec(dst=subnet, gw=gateway, oif=device, onlink=True,
                                   proto=routes.PROTO_TARTAN))
    wanted.neighbours.append(Neighbour(gateway, mac))
    wanted.fdb.append(FdbEntry(mac, ip))
    wanted.states.append(PeerState(subnet, ip, kind, PeerMode.VXLAN,
                                   PeerProgramming.PROGRAMMED))


@register("vxlan", parse_config)
class Vxlan:
    name = "vxlan"

    def __init__(self, conf: VxlanConfig, net: NetworkConfig, node: NodeInfo) -> None:
        self.conf, self.node = conf, node
        self.device = device_name(conf.vni)
        self.mac = vtep_mac(node.public_ip, conf.vni)
        self.desired = entries.Desired(node.iface_index)

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(public_ip=self.node.public_ip, backend_type="vxlan",
                          backend_data={"VNI": self.conf.vni, "VtepMAC": self.mac})

    def mtu(self) -> int:
        return self.conf.mtu or self.node.iface_mtu - OVERHEAD

    def pod_gso_max_size(self) -> int:
        return 0  # the VXLAN device takes no packet above 64 KiB: pods keep the default

    def status(self) -> dict[str, Any]:
        return {"directRouting": self.conf.direct_routing}

    def setup(self, own: Lease) -> None:
        with IPRoute() as ipr:
            self._ensure(ipr, own)

    def _matches(self, ipr: IPRoute, dev: Link) -> bool:
        info = link.vxlan_info(ipr, dev.index) if dev.kind == "vxlan" else {}
        return info == {"vni": self.conf.vni, "local": self.node.public_ip,
                        "link": self.node.iface_index, "port": self.conf.port, "learning": 0}

    def _ensure_device(self, ipr: IPRoute) -> tuple[Link, int]:
        dev = link.get(ipr, self.device)
        if dev is not None and self._matches(ipr, dev) and dev.mac.lower() == self.mac:
            changes = 0
        else:
            if dev is not None:
                link.delete(ipr, self.device)
            link.add_vxlan(ipr, self.device, self.conf.vni, self.node.public_ip,
                           self.node.iface_index, self.conf.port, self.mac, self.mtu())
            dev, changes = link.require(ipr, self.device), 1
        if dev.mtu != self.mtu():
            link.set_mtu(ipr, dev.index, self.mtu())
            changes += 1
        if not dev.up:
            link.set_up(ipr, dev.index)
            changes += 1
        return link.require(ipr, self.device), changes

    def _ensure(self, ipr: IPRoute, own: Lease) -> tuple[Link, int]:
        dev, changes = self._ensure_device(ipr)
        wanted = ipaddress.ip_interface(f"{own.subnet.network_address}/32")
        have = addr.list_(ipr, dev.index, 4)
        for stale in (a for a in have if a != wanted):
            addr.delete(ipr, dev.index, stale)
            changes += 1
        if wanted not in have:
            addr.add(ipr, dev.index, wanted)
            changes += 1
        return dev, changes

    def _wanted(self, peers: list[Lease], device: int) -> Entries:
        wanted = Entries()
        for peer in peers:
            if self.conf.direct_routing and self.node.on_segment(peer.attrs.public_ip):
                spec, state = peer_route(peer, self.node)
                if spec is not None:  # always, on the segment
                    wanted.routes.append(spec)
                wanted.states.append(state)
            else:
                _vxlan_peer(peer, device, wanted)
        return wanted

    def reconcile(self, own: Lease, peers: list[Lease]) -> Report:
        with IPRoute() as ipr:
            dev, changes = self._ensure(ipr, own)
            wanted = self._wanted(peers, dev.index)
        changes += entries.sync(wanted, self.desired, dev.index)
        return Report(peers=wanted.states, corrections=changes)

    def program(self, own: Lease, before: list[Lease], after: list[Lease]) -> Report:
        with IPRoute() as ipr:
            dev = link.get(ipr, self.device)
            if dev is None:
                raise KernelFailure(f"the VXLAN device {self.device} is gone")
        wanted = self._wanted(after, dev.index)
        changes = entries.apply_delta(self._wanted(before, dev.index), wanted, self.desired,
                                      dev.index)
        return Report(peers=wanted.states, corrections=changes)
