"""Backends are registered by name (flannel's pattern), behind one protocol.

Each backend registers its class with the parser of its own `Backend` section of
net-conf.json, so adding a backend is a change in this folder only: the lease manager keeps
only the top level (Network, SubnetLen, SubnetMin, SubnetMax).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tartan.ipam.lease import Lease, LeaseAttrs
from tartan.ipam.netconf import NetConfError, NetworkConfig, show, string, whole_number

if TYPE_CHECKING:
    from tartan.backends.entries import Desired

DEFAULT_TYPE = "vxlan"
# flannel backends an operator may carry over in a config; named so the error says
# "not supported" rather than "not a backend".
FLANNEL_ONLY = (
    "udp", "ipip", "wireguard", "ipsec", "alloc", "extension", "gce", "aws-vpc", "ali-vpc",
    "tencent-vpc",
)


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
        try:
            address = int.from_bytes(socket.inet_aton(ip), "big")  # a pass asks per peer
        except OSError:
            return False
        return any(address & mask == network for network, mask in self._segment_masks)

    @functools.cached_property
    def _segment_masks(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(net.network_address), int(net.netmask)) for net in self.segments
                     if net.version == 4)


class PeerMode(enum.StrEnum):
    """How a peer is reached."""

    VXLAN = "vxlan"
    HOST_GW = "host-gw"
    SKIPPED = "skipped"


class PeerProgramming(enum.StrEnum):
    PROGRAMMED = "programmed"
    SKIPPED = "skipped"


@dataclass
class PeerState:
    subnet: str
    public_ip: str
    backend: str
    mode: PeerMode
    state: PeerProgramming
    reason: str = ""

    @classmethod
    def skipped(cls, subnet: str, public_ip: str, backend: str, reason: str) -> PeerState:
        return cls(subnet, public_ip, backend, PeerMode.SKIPPED, PeerProgramming.SKIPPED,
                   reason)

    def to_json(self) -> dict:
        return {"subnet": self.subnet, "publicIP": self.public_ip, "backend": self.backend,
                "mode": str(self.mode), "state": str(self.state), "reason": self.reason}


@dataclass
class Report:
    peers: list[PeerState] = field(default_factory=list)
    corrections: int = 0


class Backend(Protocol):
    name: str
    desired: Desired  # what it last asked the kernel to hold (the kernel monitor reads it)

    def lease_attrs(self) -> LeaseAttrs: ...

    def mtu(self) -> int: ...

    def pod_gso_max_size(self) -> int:
        """IPv4 BIG TCP size for pods, 0 for the kernel default (see kernel/gso.py)."""
        ...

    def status(self) -> dict[str, Any]:
        """The backend's settings shown in tartand's /status (beside its name)."""
        ...

    def setup(self, own: Lease) -> None: ...

    def reconcile(self, own: Lease, peers: list[Lease]) -> Report:
        """The full pass: the kernel made to hold exactly what `peers` ask for (a dump of
        each kind, compared); Report.peers holds every peer's state."""
        ...

    def program(self, own: Lease, before: list[Lease], after: list[Lease]) -> Report:
        """A store change: the peers whose leases changed, as they were (`before`: removed
        or changed) and as they are (`after`: added or changed); only the difference is
        written and nothing else is read. Report.peers holds the states of `after`."""
        ...


@dataclass(frozen=True)
class BackendType:
    """A registered backend: how it reads its Backend section, and how it is made."""

    name: str
    parse: Callable[[Mapping[str, Any]], Any]  # the section, keys lower-cased -> its config
    create: Callable[[Any, NetworkConfig, NodeInfo], Backend]


_REGISTRY: dict[str, BackendType] = {}


def register(name: str, parse: Callable[[Mapping[str, Any]], Any]) -> Callable[[type], type]:
    """Class decorator: the class is built as cls(its parsed config, net, node)."""

    def wrap(cls: type) -> type:
        _REGISTRY[name] = BackendType(name, parse, cls)
        return cls

    return wrap


def _registered() -> dict[str, BackendType]:
    from tartan.backends import hostgw, vxlan

    del hostgw, vxlan  # imported for their registration
    return _REGISTRY


def backend_type(net: NetworkConfig) -> BackendType:
    """The backend Backend.Type names; NetConfError naming the field otherwise."""
    known = _registered()
    kind = (string(net.backend, "Type", "Backend.") or DEFAULT_TYPE).lower()  # as flannel
    valid = " or ".join([DEFAULT_TYPE, *sorted(k for k in known if k != DEFAULT_TYPE)])
    if kind in FLANNEL_ONLY:
        raise NetConfError("Backend.Type", f"Backend.Type {show(kind)} is a flannel backend "
                           f"Tartan does not support; use {valid}")
    if kind not in known:
        raise NetConfError("Backend.Type", f"Backend.Type {show(kind)} is not a backend; "
                           f"use {valid}")
    return known[kind]


def parse_config(net: NetworkConfig) -> Any:
    """The Backend section as its backend reads it (NetConfError on a bad field)."""
    return backend_type(net).parse(net.backend)


def create(net: NetworkConfig, node: NodeInfo) -> Backend:
    kind = backend_type(net)
    return kind.create(kind.parse(net.backend), net, node)


# -- fields more than one backend reads -------------------------------------------------


def mtu_field(section: Mapping[str, Any]) -> int:
    """Backend.MTU: 0 (the default) derives the MTU from the uplink."""
    mtu = whole_number(section, "MTU", 0, "Backend.")
    if mtu != 0 and not 68 <= mtu <= 65535:
        raise NetConfError("Backend.MTU", f"Backend.MTU {mtu} is out of range; use 68 to 65535, "
                           "or 0 to derive it from the uplink")
    return mtu
