"""tartan-bridge's network config: the reference `bridge` plugin's fields, validated."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tartan.cni.errors import InvalidConfig, InvalidEnv
from tartan.cni.skel import validate_ifname

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


@dataclass
class BridgeConfig:
    name: str
    cni_version: str
    ipam: dict
    bridge: str = "cni0"
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    mtu: int = 0
    hairpin_mode: bool = False
    promisc_mode: bool = False
    vlan: int = 0
    gso_max_size: int = 0  # Tartan's: IPv4 BIG TCP on the pod's veth pair and the bridge
    dns: dict = field(default_factory=dict)

    @property
    def ipam_type(self) -> str:
        return self.ipam["type"]


def _bool(config: dict, key: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise InvalidConfig(f"{key} must be true or false, got {value!r}")
    return value


def _int(config: dict, key: str, low: int, high: int) -> int:
    value = config.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfig(f"{key} must be an integer, got {value!r}")
    if value and not low <= value <= high:
        raise InvalidConfig(f"{key} {value} is out of range: use {low}..{high} (or 0 for default)")
    return value


def _name(config: dict) -> str:
    name = config.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidConfig(
            f"name {name!r} is missing or invalid: give the network a name of letters, digits, "
            "'_', '.' and '-'"
        )
    return name


def _ipam(config: dict) -> dict:
    ipam = config.get("ipam")
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str) or not ipam["type"]:
        raise InvalidConfig('ipam.type is required, e.g. "ipam": {"type": "tartan-ipam", ...}')
    return ipam


def _bridge_name(config: dict) -> str:
    bridge = config.get("bridge", "cni0")
    if not isinstance(bridge, str):
        raise InvalidConfig(f"bridge must be an interface name, got {bridge!r}")
    try:
        validate_ifname(bridge, "bridge")
    except InvalidEnv as exc:
        raise InvalidConfig(exc.msg) from None
    return bridge


def parse(config: dict) -> BridgeConfig:
    is_default_gateway = _bool(config, "isDefaultGateway")
    vlan = _int(config, "vlan", 1, 4094)
    bridge = _bridge_name(config)
    if vlan and len(f"{bridge}.{vlan}") > 15:
        raise InvalidConfig(f"bridge name {bridge!r} is too long to carry VLAN device .{vlan}")
    dns = config.get("dns") or {}
    if not isinstance(dns, dict):
        raise InvalidConfig("dns must be an object with nameservers, domain, search, options")
    return BridgeConfig(
        name=_name(config),
        cni_version=str(config.get("cniVersion")),
        ipam=_ipam(config),
        bridge=bridge,
        is_gateway=_bool(config, "isGateway") or is_default_gateway,
        is_default_gateway=is_default_gateway,
        force_address=_bool(config, "forceAddress"),
        ip_masq=_bool(config, "ipMasq"),
        mtu=_int(config, "mtu", 68, 65535),
        hairpin_mode=_bool(config, "hairpinMode"),
        promisc_mode=_bool(config, "promiscMode"),
        vlan=vlan,
        gso_max_size=_int(config, "gsoMaxSize", 65536, 524288),
        dns=dns,
    )
