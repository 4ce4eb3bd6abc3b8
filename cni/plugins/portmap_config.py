"""tartan-portmap's network config: the reference `portmap` plugin's fields, validated.

    {"type": "tartan-portmap", "capabilities": {"portMappings": true},
     "snat": true, "markMasqBit": 13, "externalSetMarkChain": null,
     "conditionsV4": ["-d", "192.0.2.1"], "conditionsV6": null,
     "runtimeConfig": {"portMappings": [
         {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]}}

The runtime turns `capabilities.portMappings` into `runtimeConfig.portMappings`; the plugin
reads only the latter. Every bad field is an InvalidConfig naming it, found before anything
reaches the kernel.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from tartan.cni.errors import InvalidConfig
from tartan.kernel.iptables import InvalidName, check_chain

DEFAULT_MARK_BIT = 13  # Kubernetes uses 14 and 15, Calico 20-31 (the reference's default)
PROTOCOLS = ("tcp", "udp")
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
# A condition is a match: a target in it would end the top-level jump rule early.
_TARGET_FLAGS = frozenset({"-j", "--jump", "-g", "--goto"})

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: Address | None = None  # None: every local address

    def applies_to(self, version: int) -> bool:
        """A mapping with a hostIP serves only that address's family."""
        return self.host_ip is None or self.host_ip.version == version

    @property
    def destination(self) -> Address | None:
        """The address the DNAT is restricted to (none for 0.0.0.0 and ::)."""
        return None if self.host_ip is None or self.host_ip.is_unspecified else self.host_ip


@dataclass(frozen=True)
class PortMapConfig:
    name: str
    cni_version: str
    mappings: tuple[PortMapping, ...] = ()
    snat: bool = True
    mark_masq_bit: int = DEFAULT_MARK_BIT
    external_set_mark_chain: str | None = None
    conditions: dict[int, tuple[str, ...]] = field(default_factory=dict)  # family -> args

    def conditions_for(self, version: int) -> tuple[str, ...]:
        return self.conditions.get(version, ())


def parse(config: dict) -> PortMapConfig:
    mark_bit, external = _mark(config)
    return PortMapConfig(
        name=_name(config),
        cni_version=str(config.get("cniVersion")),
        mappings=_mappings(config),
        snat=_bool(config, "snat", True),
        mark_masq_bit=mark_bit,
        external_set_mark_chain=external,
        conditions={4: _conditions(config, "conditionsV4"),
                    6: _conditions(config, "conditionsV6")},
    )


def _name(config: dict) -> str:
    name = config.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidConfig(
            f"name {name!r} is missing or invalid: give the network a name of letters, digits, "
            "'_', '.' and '-'")
    return name


def _bool(config: dict, key: str, default: bool) -> bool:
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidConfig(f"{key} must be true or false, got {value!r}")
    return value


def _mark(config: dict) -> tuple[int, str | None]:
    bit, chain = config.get("markMasqBit"), config.get("externalSetMarkChain")
    if bit is not None and chain is not None:
        raise InvalidConfig("markMasqBit and externalSetMarkChain exclude each other: the "
                            "external chain sets its own mark; give one of them")
    if chain is not None:
        return DEFAULT_MARK_BIT, _chain(chain)
    if bit is None:
        return DEFAULT_MARK_BIT, None
    if isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit <= 31:
        raise InvalidConfig(f"markMasqBit must be an integer 0..31 (a bit of the packet "
                            f"mark), got {bit!r}")
    return bit, None


def _chain(chain: object) -> str:
    if not isinstance(chain, str):
        raise InvalidConfig(f"externalSetMarkChain must be an iptables chain name, got "
                            f"{chain!r}")
    try:
        return check_chain(chain)
    except InvalidName as exc:
        raise InvalidConfig(f"externalSetMarkChain: {exc.msg}") from None


def _conditions(config: dict, key: str) -> tuple[str, ...]:
    value = config.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(arg, str) for arg in value):
        raise InvalidConfig(f"{key} must be a list of iptables match arguments (strings), "
                            f"e.g. [\"-d\", \"192.0.2.1\"], got {value!r}")
    for arg in value:
        if any(c in arg for c in "\n\r\0") or not arg:
            raise InvalidConfig(f"{key}: argument {arg!r} must be a non-empty one-line string")
        if arg in _TARGET_FLAGS:
            raise InvalidConfig(f"{key} may hold matches only, not a target ({arg!r})")
    return tuple(value)


def _mappings(config: dict) -> tuple[PortMapping, ...]:
    runtime = config.get("runtimeConfig")
    if runtime is None:
        return ()
    if not isinstance(runtime, dict):
        raise InvalidConfig(f"runtimeConfig must be an object, got {runtime!r}")
    entries = runtime.get("portMappings")
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise InvalidConfig(f"runtimeConfig.portMappings must be a list, got {entries!r}")
    return tuple(_mapping(entry, f"runtimeConfig.portMappings[{index}]")
                 for index, entry in enumerate(entries))


def _mapping(entry: object, where: str) -> PortMapping:
    if not isinstance(entry, dict):
        raise InvalidConfig(f"{where} must be an object with hostPort and containerPort, "
                            f"got {entry!r}")
    # Keys in any case, as Go's decoder reads them for the reference: containerd's CRI sends
    # {"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}.
    fields = {str(key).lower(): value for key, value in entry.items()}
    return PortMapping(
        host_port=_port(fields, "hostPort", where),
        container_port=_port(fields, "containerPort", where),
        protocol=_protocol(fields, where),
        host_ip=_host_ip(fields, where),
    )


def _port(fields: dict, key: str, where: str) -> int:
    value = fields.get(key.lower())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidConfig(f"{where}.{key} must be a port number 1..65535, got {value!r}")
    return value


def _protocol(fields: dict, where: str) -> str:
    value = fields.get("protocol") or "tcp"
    if not isinstance(value, str) or value.lower() not in PROTOCOLS:
        raise InvalidConfig(f"{where}.protocol must be one of {', '.join(PROTOCOLS)}, got "
                            f"{value!r}")
    return value.lower()


def _host_ip(fields: dict, where: str) -> Address | None:
    value = fields.get("hostip") or None
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidConfig(f"{where}.hostIP must be an IP address string, got {value!r}")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise InvalidConfig(f"{where}.hostIP {value!r} is not an IP address") from None
