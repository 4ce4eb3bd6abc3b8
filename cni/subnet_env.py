"""/run/tartan/subnet.env: how tartand tells the `tartan` CNI plugin about its node's lease.

The variables are flannel's (FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ),
plus Tartan's own TARTAN_GSO_MAX_SIZE. tartand writes the file (`write`), the meta plugin
reads it (`read`), and so do tartand on restart and the lab. Reading raises the CNI errors the
meta plugin reports: TryAgainLater while the file is missing (the agent has not leased yet),
InvalidConfig naming the variable when it is malformed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from tartan.cni import errors
from tartan.kernel.files import write_atomic

DEFAULT_PATH = "/run/tartan/subnet.env"
REQUIRED_VARS = ("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ")
GSO_VAR = "TARTAN_GSO_MAX_SIZE"
_TRUE = ("1", "t", "T", "true", "TRUE", "True")  # Go's strconv.ParseBool, as flannel reads it
_FALSE = ("0", "f", "F", "false", "FALSE", "False")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
GatewayAddress = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class SubnetEnv:
    """The cluster network(s), this node's subnet, the pods' MTU, who masquerades."""

    networks: tuple[Network, ...]
    subnet: GatewayAddress  # the subnet's first address with its prefix, as flannel writes it
    mtu: int
    ip_masq: bool  # true: tartand masquerades, so the bridge must not
    gso_max_size: int = 0  # IPv4 BIG TCP for pods when tartand allows it; 0: kernel default

    @classmethod
    def for_lease(cls, network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network,
                  mtu: int, ip_masq: bool, gso_max_size: int = 0) -> SubnetEnv:
        first = ipaddress.ip_interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")
        return cls((network,), first, mtu, ip_masq, gso_max_size)

    def render(self) -> str:
        text = (f"FLANNEL_NETWORK={','.join(str(n) for n in self.networks)}\n"
                f"FLANNEL_SUBNET={self.subnet}\nFLANNEL_MTU={self.mtu}\n"
                f"FLANNEL_IPMASQ={'true' if self.ip_masq else 'false'}\n")
        if self.gso_max_size:
            text += f"{GSO_VAR}={self.gso_max_size}\n"
        return text


# -- writing --------------------------------------------------------------------------


def write(path: str | Path, env: SubnetEnv) -> bool:
    """Write atomically unless the file already says exactly this; True when it changed."""
    target, text = Path(path), env.render()
    try:
        if target.read_text() == text:
            return False
    except OSError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, text)
    return True


# -- reading --------------------------------------------------------------------------


def read(path: str | Path) -> SubnetEnv:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        raise errors.TryAgainLater(
            f"subnet file {path} does not exist: is tartand running on this node?"
        ) from None
    except OSError as exc:
        raise errors.IOFailure(f"cannot read subnet file {path}: {exc.strerror}") from None
    return parse(text, str(path))


def previous_subnet(path: str | Path) -> ipaddress.IPv4Network | None:
    """The IPv4 subnet a previous run of the agent wrote, if the file is there and sane."""
    try:
        network = read(path).subnet.network
    except errors.CniError:
        return None
    return network if isinstance(network, ipaddress.IPv4Network) else None


def variables(text: str) -> dict[str, str]:
    """KEY=VALUE lines; blank lines, comments and lines without '=' are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):]
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            out[key.strip()] = _unquote(value)
    return out


def parse(text: str, path: str) -> SubnetEnv:
    """flannel's subnet.env; FLANNEL_IPV6_* and unknown variables are ignored."""
    found = variables(text)
    missing = [var for var in REQUIRED_VARS if not found.get(var)]
    if missing:
        raise errors.InvalidConfig(
            f"subnet file {path} is missing {', '.join(missing)}; tartand writes this file, "
            "check that it is running and has leased a subnet"
        )
    networks = [part.strip() for part in found["FLANNEL_NETWORK"].split(",") if part.strip()]
    return SubnetEnv(
        networks=tuple(_network(path, "FLANNEL_NETWORK", n) for n in networks),
        subnet=_subnet(path, found["FLANNEL_SUBNET"]),
        mtu=_mtu(path, found["FLANNEL_MTU"]),
        ip_masq=_ip_masq(path, found["FLANNEL_IPMASQ"]),
        gso_max_size=_gso(path, found.get(GSO_VAR, "")),
    )


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1].strip()
    return value


def _bad(path: str, var: str, value: str, want: str) -> errors.InvalidConfig:
    return errors.InvalidConfig(
        f"subnet file {path}: {var}={value!r} is not {want}; tartand writes this file, "
        "check its configuration or restart it to rewrite the file"
    )


def _network(path: str, var: str, value: str) -> Network:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _bad(path, var, value, "a CIDR such as 10.244.0.0/16") from None


def _subnet(path: str, value: str) -> GatewayAddress:
    try:
        if "/" not in value:
            raise ValueError(value)
        return ipaddress.ip_interface(value)
    except ValueError:
        raise _bad(path, "FLANNEL_SUBNET", value, "a CIDR such as 10.244.1.1/24") from None


def _mtu(path: str, value: str) -> int:
    if not value.isdigit() or not 68 <= int(value) <= 65535:
        raise _bad(path, "FLANNEL_MTU", value, "an MTU between 68 and 65535")
    return int(value)


def _ip_masq(path: str, value: str) -> bool:
    if value not in _TRUE + _FALSE:
        raise _bad(path, "FLANNEL_IPMASQ", value, "true or false")
    return value in _TRUE


def _gso(path: str, value: str) -> int:
    if not value:
        return 0
    if not value.isdigit() or not 65536 <= int(value) <= 524288:
        raise _bad(path, GSO_VAR, value, "a size in bytes from 65536 to 524288")
    return int(value)
