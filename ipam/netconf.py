"""flannel's net-conf.json: the cluster network the node subnets are cut from.

Keys match case-insensitively and a later duplicate wins, as Go's encoding/json decodes
them into flannel's Config struct; unknown keys are ignored. Every error is a
`NetConfError` whose message is one line naming the field and the fix.

The `Backend` section is kept as it is (keys lower-cased) and parsed by the backend it
names, in tartan.backends, as flannel's backends parse their own; the field readers below
are shared with them so every field error reads the same.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

WHOLE = "net-conf.json"  # the `field` of errors about the document as a whole


class NetConfError(ValueError):
    """A net-conf.json that cannot be used; `field` names the offending key."""

    def __init__(self, field: str, msg: str) -> None:
        super().__init__(msg)
        self.field = field


@dataclass(frozen=True)
class NetworkConfig:
    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Network
    subnet_max: IPv4Network
    backend: dict[str, Any] = field(default_factory=dict)  # the Backend section, keys folded
    raw: dict = field(default_factory=dict, compare=False)

    def subnet_count(self) -> int:
        step = 1 << (32 - self.subnet_len)
        return (int(self.subnet_max.network_address) - int(self.subnet_min.network_address)) \
            // step + 1

    def subnet_at(self, index: int) -> IPv4Network:
        """The index-th candidate subnet (0 is SubnetMin)."""
        start = int(self.subnet_min.network_address) + (index << (32 - self.subnet_len))
        return IPv4Network((start, self.subnet_len))

    def candidate_subnets(self) -> Iterator[IPv4Network]:
        """Every subnet a node may lease, SubnetMin to SubnetMax."""
        return (self.subnet_at(i) for i in range(self.subnet_count()))

    def is_candidate(self, subnet: IPv4Network) -> bool:
        return (
            subnet.prefixlen == self.subnet_len
            and self.subnet_min.network_address <= subnet.network_address
            and subnet.network_address <= self.subnet_max.network_address
        )


def parse_network_config(data: Mapping[str, Any] | str | bytes) -> NetworkConfig:
    """Parse and validate net-conf.json (a decoded object or its JSON text)."""
    raw = _decode(data)
    conf = fold(raw)
    _check_ipv6(conf)
    if not flag(conf, "EnableIPv4", True):
        raise NetConfError(
            "EnableIPv4", "EnableIPv4: false is not supported: Tartan needs an IPv4 Network; "
            "remove EnableIPv4")
    if conf.get("networks"):
        raise NetConfError("Networks", "Networks (several networks) is not supported yet; "
                           "use one Network")
    network = _network(conf)
    subnet_len = _subnet_len(conf, network)
    low, high = _range(conf, network, subnet_len)
    return NetworkConfig(network, subnet_len, low, high, _backend(conf.get("backend")), raw)


# -- decoding -------------------------------------------------------------------------


def _decode(data: Mapping[str, Any] | str | bytes) -> dict:
    return decode_json(data) if isinstance(data, str | bytes | bytearray) else _object(data)


def decode_json(text: str | bytes, source: str = WHOLE) -> dict:
    """net-conf.json text as a dict (also as kept in a store; `source` says where)."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NetConfError(WHOLE, f"{source} is not valid JSON: {exc}") from None
    return _object(data, source)


def _object(data: Any, source: str = WHOLE) -> dict:
    if not isinstance(data, Mapping):
        raise NetConfError(WHOLE, f"{source} must be a JSON object, not {show(data)}")
    return dict(data)


def fold(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Keys lower-cased, the last duplicate winning: Go's case-insensitive field match."""
    return {key.lower(): value for key, value in obj.items() if value is not None}


def show(value: Any) -> str:
    shown = json.dumps(value)
    return shown if len(shown) <= 40 else f"{shown[:37]}..."


def whole_number(conf: Mapping[str, Any], name: str, default: int, path: str = "") -> int:
    value = conf.get(name.lower(), default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise NetConfError(path + name, f"{path}{name} must be a whole number, not {show(value)}")
    return value


def flag(conf: Mapping[str, Any], name: str, default: bool, path: str = "") -> bool:
    value = conf.get(name.lower(), default)
    if not isinstance(value, bool):
        raise NetConfError(path + name, f"{path}{name} must be true or false, not {show(value)}")
    return value


def string(conf: Mapping[str, Any], name: str, path: str = "") -> str | None:
    value = conf.get(name.lower())
    if value is not None and not isinstance(value, str):
        raise NetConfError(path + name, f"{path}{name} must be a string, not {show(value)}")
    return value


# -- IPv4 network and subnets ---------------------------------------------------------


def _cidr(conf: Mapping[str, Any], name: str, version: int) -> ipaddress._BaseNetwork | None:
    """A CIDR; host bits are dropped, as flannel's net.ParseCIDR does."""
    text = string(conf, name)
    if text is None:
        return None
    example = "10.244.0.0/16" if version == 4 else "fd00:10:244::/56"
    try:
        if "/" not in text:
            raise ValueError(text)
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise NetConfError(name, f"{name} {show(text)} is not a valid CIDR; use address/prefix "
                           f"such as {example}") from None
    if net.version != version:
        raise NetConfError(name, f"{name} {text} is not an IPv{version} CIDR; use e.g. {example}")
    return net


def _network(conf: Mapping[str, Any]) -> IPv4Network:
    network = _cidr(conf, "Network", 4)
    if network is None:
        raise NetConfError("Network", "Network is missing; set it to the cluster's pod CIDR, "
                           "such as 10.244.0.0/16")
    assert isinstance(network, IPv4Network)
    return network


def _subnet_len(conf: Mapping[str, Any], network: IPv4Network) -> int:
    prefix = network.prefixlen
    length = whole_number(conf, "SubnetLen", 0)
    if length == 0:  # flannel: /24 per node, or a quarter of a small Network
        if prefix > 28:
            raise NetConfError("Network", f"Network {network} is too small to split into node "
                               "subnets; use a prefix of /28 or shorter")
        return 24 if prefix <= 22 else prefix + 2
    if length > 30:
        raise NetConfError("SubnetLen", f"SubnetLen {length} is too long: a node subnet needs "
                           "at least 4 addresses; use 30 or less")
    if length <= prefix:
        raise NetConfError("SubnetLen", f"SubnetLen {length} must be longer than the /{prefix} "
                           f"of Network {network}; use e.g. {min(prefix + 8, 30)}")
    return length


def _bound(conf: Mapping[str, Any], name: str, network: IPv4Network,
           subnet_len: int) -> IPv4Network | None:
    """SubnetMin/SubnetMax: flannel gives an address; a CIDR of SubnetLen is accepted too."""
    text = string(conf, name)
    if text is None:
        return None
    address, _, length = text.partition("/")
    try:
        start = IPv4Address(address)
        subnet = IPv4Network((start, int(length) if length else subnet_len), strict=False)
    except ValueError:
        raise NetConfError(name, f"{name} {show(text)} is not an IPv4 address; give the first "
                           f"address of a /{subnet_len} subnet") from None
    if subnet.prefixlen != subnet_len or subnet.network_address != start:
        aligned = IPv4Network((start, subnet_len), strict=False)
        raise NetConfError(name, f"{name} {text} is not a subnet of size /{subnet_len} "
                           f"(SubnetLen); use {aligned.network_address}")
    if not subnet.subnet_of(network):
        raise NetConfError(name, f"{name} {subnet} is outside Network {network}")
    return subnet


def _range(conf: Mapping[str, Any], network: IPv4Network,
           subnet_len: int) -> tuple[IPv4Network, IPv4Network]:
    subnets = network.subnets(new_prefix=subnet_len)
    next(subnets)  # flannel skips the first subnet: its .0 would be the Network's address
    first = next(subnets)
    last = IPv4Network((int(network.broadcast_address) + 1 - first.num_addresses, subnet_len))
    low = _bound(conf, "SubnetMin", network, subnet_len) or first
    high = _bound(conf, "SubnetMax", network, subnet_len) or last
    if low.network_address > high.network_address:
        raise NetConfError("SubnetMin", f"SubnetMin {low} is after SubnetMax {high}; "
                           "swap them or widen the range")
    return low, high


# -- IPv6 (validated, not yet supported) ----------------------------------------------


def _check_ipv6(conf: Mapping[str, Any]) -> None:
    _cidr(conf, "IPv6Network", 6)
    length = whole_number(conf, "IPv6SubnetLen", 0)
    if not 0 <= length <= 128:
        raise NetConfError("IPv6SubnetLen", f"IPv6SubnetLen {length} must be between 0 and 128")
    for name in ("IPv6SubnetMin", "IPv6SubnetMax"):
        text = string(conf, name)
        if text is not None and not _is_ipv6(text):
            raise NetConfError(name, f"{name} {show(text)} is not an IPv6 address")
    if conf.get("ipv6networks"):
        raise NetConfError("IPv6Networks", "IPv6 is not supported yet: remove IPv6Networks")
    if flag(conf, "EnableIPv6", False):
        raise NetConfError("EnableIPv6", "IPv6 is not supported yet: remove EnableIPv6")


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


# -- backend --------------------------------------------------------------------------


def _backend(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise NetConfError("Backend", f"Backend must be an object such as "
                           f'{{"Type": "vxlan"}}, not {show(raw)}')
    return fold(raw)
