"""CNI results as dataclasses, and their conversion between spec versions.

The model is the 1.1.0 result; older versions are produced by `Result.to_dict(version)`
and read by `Result.from_dict`. Addresses stay strings in CIDR form ("10.1.0.5/24") so the
entry path needs nothing beyond the standard library.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from tartan.cni.errors import DecodeFailure, IncompatibleVersion
from tartan.cni.versions import CURRENT_VERSION, SUPPORTED_VERSIONS


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise IncompatibleVersion(f"cniVersion {version!r} is not a version number") from None


def check_supported(version: str) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise IncompatibleVersion(
            f"cniVersion {version!r} is not supported",
            details=f"supported versions: {', '.join(SUPPORTED_VERSIONS)}",
        )


def at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int = 0

    def to_dict(self, version: str) -> dict:
        out: dict = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        if self.mtu and at_least(version, "1.1.0"):
            out["mtu"] = self.mtu
        if self.sandbox:
            out["sandbox"] = self.sandbox
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Interface:
        return cls(
            name=str(data.get("name", "")),
            mac=str(data.get("mac", "")),
            sandbox=str(data.get("sandbox", "")),
            mtu=int(data.get("mtu", 0) or 0),
        )


@dataclass
class IPConfig:
    address: str  # CIDR, e.g. "10.22.0.5/24"
    gateway: str = ""
    interface: int | None = None

    @property
    def family(self) -> int:
        return ipaddress.ip_interface(self.address).version

    def to_dict(self, version: str) -> dict:
        out: dict = {}
        if not at_least(version, "1.0.0"):
            out["version"] = str(self.family)
        if self.interface is not None:
            out["interface"] = self.interface
        out["address"] = self.address
        if self.gateway:
            out["gateway"] = self.gateway
        return out

    @classmethod
    def from_dict(cls, data: dict) -> IPConfig:
        address = data.get("address")
        if not isinstance(address, str):
            raise DecodeFailure("result ips[].address is missing or not a string")
        try:
            ipaddress.ip_interface(address)
        except ValueError:
            raise DecodeFailure(f"result ips[].address {address!r} is not a CIDR") from None
        interface = data.get("interface")
        return cls(
            address=address,
            gateway=str(data.get("gateway") or ""),
            interface=int(interface) if interface is not None else None,
        )


@dataclass
class Route:
    dst: str
    gw: str = ""
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None

    def to_dict(self, version: str) -> dict:
        out: dict = {"dst": self.dst}
        if self.gw:
            out["gw"] = self.gw
        if at_least(version, "1.1.0"):
            for key in ("mtu", "advmss", "priority"):
                if getattr(self, key):
                    out[key] = getattr(self, key)
            for key in ("table", "scope"):
                if getattr(self, key) is not None:
                    out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Route:
        dst = data.get("dst")
        if not isinstance(dst, str):
            raise DecodeFailure("route dst is missing or not a string")
        try:
            ipaddress.ip_network(dst, strict=False)
        except ValueError:
            raise DecodeFailure(f"route dst {dst!r} is not a CIDR") from None
        return cls(
            dst=dst,
            gw=str(data.get("gw") or ""),
            mtu=int(data.get("mtu", 0) or 0),
            advmss=int(data.get("advmss", 0) or 0),
            priority=int(data.get("priority", 0) or 0),
            table=data.get("table"),
            scope=data.get("scope"),
        )


@dataclass
class DNS:
    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out: dict = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out

    def empty(self) -> bool:
        return not self.to_dict()

    @classmethod
    def from_dict(cls, data: dict | None) -> DNS:
        data = data or {}
        return cls(
            nameservers=list(data.get("nameservers") or []),
            domain=str(data.get("domain") or ""),
            search=list(data.get("search") or []),
            options=list(data.get("options") or []),
        )


@dataclass
class Result:
    cni_version: str = CURRENT_VERSION
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)

    def to_dict(self, version: str | None = None) -> dict:
        version = version or self.cni_version
        check_supported(version)
        out: dict = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [i.to_dict(version) for i in self.interfaces]
        if self.ips:
            out["ips"] = [ip.to_dict(version) for ip in self.ips]
        if self.routes:
            out["routes"] = [r.to_dict(version) for r in self.routes]
        out["dns"] = self.dns.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict, version: str | None = None) -> Result:
        if not isinstance(data, dict):
            raise DecodeFailure("a CNI result must be a JSON object")
        version = str(data.get("cniVersion") or version or CURRENT_VERSION)
        check_supported(version)
        try:
            return cls(
                cni_version=version,
                interfaces=[Interface.from_dict(i) for i in data.get("interfaces") or []],
                ips=[IPConfig.from_dict(ip) for ip in data.get("ips") or []],
                routes=[Route.from_dict(r) for r in data.get("routes") or []],
                dns=DNS.from_dict(data.get("dns")),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise DecodeFailure(f"cannot read CNI result: {exc}") from None
