"""Backends are constructors registered by name (flannel's pattern), behind one protocol."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tartan.ipam.lease import Lease, LeaseAttrs
from tartan.ipam.netconf import BackendConfig, NetworkConfig


@dataclass(frozen=True)
class NodeInfo:
    """This node's side of the underlay."""

    iface: str
    iface_index: int
    iface_mtu: int
    public_ip: str
    segments: tuple[ipaddress.IPv4Network, ...]  # the networks directly on the interface
    iface_gso_max: int = 0  # its gso_ipv4_max_size (IPv4 BIG TCP when above 65536)

    def on_segment(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return any(address in net for net in self.segments)


@dataclass
class PeerState:
    subnet: str
    public_ip: str
    backend: str
    mode: str  # how the peer is reached: "vxlan", "host-gw", or "skipped"
    state: str  # "programmed" or "skipped"
    reason: str = ""

    def to_json(self) -> dict:
        return {"subnet": self.subnet, "publicIP": self.public_ip, "backend": self.backend,
                "mode": self.mode, "state": self.state, "reason": self.reason}


@dataclass
class Report:
    peers: list[PeerState] = field(default_factory=list)
    corrections: int = 0


class Backend(Protocol):
    name: str

    def lease_attrs(self) -> LeaseAttrs: ...

    def mtu(self) -> int: ...

    def pod_gso_max_size(self) -> int:
        """IPv4 BIG TCP size for pods, 0 for the kernel default (see kernel/gso.py)."""
        ...

    def setup(self, own: Lease) -> None: ...

    def reconcile(self, own: Lease, peers: list[Lease]) -> Report: ...


Factory = Callable[[BackendConfig, NetworkConfig, NodeInfo], Backend]
_REGISTRY: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    def wrap(factory: Factory) -> Factory:
        _REGISTRY[name] = factory
        return factory

    return wrap


def create(net: NetworkConfig, node: NodeInfo) -> Backend:
    from tartan.backends import hostgw, vxlan  # noqa: F401 - importing registers them

    factory = _REGISTRY.get(net.backend.type)
    if factory is None:
        raise ValueError(f"Backend.Type {net.backend.type!r} is not one of {sorted(_REGISTRY)}")
    return factory(net.backend, net, node)
