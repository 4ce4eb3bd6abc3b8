"""The `tartan` meta plugin's inputs: its own config, the agent's subnet file, and the
delegate config built from the two (flannel's CNI plugin semantics).

Standard library only: this is on the plugin's entry path.
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass, field

from tartan.cni import errors

DEFAULT_SUBNET_FILE = "/run/tartan/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/tartan"
DEFAULT_DELEGATE = "tartan-bridge"
DEFAULT_IPAM = "tartan-ipam"
# Types that take the reference bridge plugin's fields, so the bridge defaults apply.
BRIDGE_TYPES = ("tartan-bridge", "bridge")
BRIDGE_DEFAULTS = {
    "bridge": "cni0",
    "isGateway": True,
    "isDefaultGateway": False,
    "hairpinMode": True,
    # A node that got a new lease must replace its bridge's stale gateway, not fail every ADD.
    "forceAddress": True,
}
# Keys the runtime puts in the config for the plugin; the delegate needs them as they are.
PASS_THROUGH = ("runtimeConfig", "capabilities", "args")
REQUIRED_VARS = ("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ")
_TRUE = ("1", "t", "T", "true", "TRUE", "True")
_FALSE = ("0", "f", "F", "false", "FALSE", "False")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class SubnetEnv:
    """What the agent wrote: the cluster network(s), this node's subnet, MTU, masquerading."""

    networks: tuple[Network, ...]
    subnet: Interface
    mtu: int
    ipmasq: bool
    gso_max_size: int = 0  # TARTAN_GSO_MAX_SIZE: IPv4 BIG TCP for pods, when tartand allows


@dataclass
class MetaConfig:
    name: str
    cni_version: str
    subnet_file: str = DEFAULT_SUBNET_FILE
    data_dir: str = DEFAULT_DATA_DIR
    delegate: dict = field(default_factory=dict)
    ipam: dict = field(default_factory=dict)
    passed: dict = field(default_factory=dict)


# -- the subnet file ------------------------------------------------------------------


def read_subnet_file(path: str) -> SubnetEnv:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        raise errors.TryAgainLater(
            f"subnet file {path} does not exist: is tartand running on this node?"
        ) from None
    except OSError as exc:
        raise errors.IOFailure(f"cannot read subnet file {path}: {exc.strerror}") from None
    return parse_subnet_env(text, path)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1].strip()
    return value


def subnet_variables(text: str) -> dict[str, str]:
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


def _subnet(path: str, value: str) -> Interface:
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


def _ipmasq(path: str, value: str) -> bool:
    if value not in _TRUE + _FALSE:
        raise _bad(path, "FLANNEL_IPMASQ", value, "true or false")
    return value in _TRUE


def parse_subnet_env(text: str, path: str) -> SubnetEnv:
    """flannel's subnet.env; FLANNEL_IPV6_* and unknown variables are ignored."""
    found = subnet_variables(text)
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
        ipmasq=_ipmasq(path, found["FLANNEL_IPMASQ"]),
        gso_max_size=_gso(path, found.get("TARTAN_GSO_MAX_SIZE", "")),
    )


def _gso(path: str, value: str) -> int:
    if not value:
        return 0
    if not value.isdigit() or not 65536 <= int(value) <= 524288:
        raise _bad(path, "TARTAN_GSO_MAX_SIZE", value, "a size in bytes from 65536 to 524288")
    return int(value)


# -- the plugin's own config ----------------------------------------------------------


def _object(config: dict, key: str) -> dict:
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.InvalidConfig(f"{key} must be an object, got {value!r}")
    return value


def _path(config: dict, key: str, default: str) -> str:
    value = config.get(key, default)
    if not isinstance(value, str) or not value.startswith("/"):
        raise errors.InvalidConfig(f"{key} must be an absolute path, got {value!r}")
    return value


def _delegate(config: dict) -> dict:
    delegate = _object(config, "delegate")
    if "type" in delegate and (not isinstance(delegate["type"], str) or not delegate["type"]):
        raise errors.InvalidConfig(f"delegate.type must be a plugin name, got "
                                   f"{delegate['type']!r}")
    if "name" in delegate:
        raise errors.InvalidConfig("delegate must not have a name: tartan sets it to the "
                                   "network's name; remove delegate.name")
    if not isinstance(delegate.get("ipam", {}), dict):
        raise errors.InvalidConfig("delegate.ipam must be an object")
    return delegate


def parse(config: dict) -> MetaConfig:
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise errors.InvalidConfig("network config has no name; set \"name\" (e.g. \"cbr0\")")
    return MetaConfig(
        name=name,
        cni_version=str(config.get("cniVersion")),
        subnet_file=_path(config, "subnetFile", DEFAULT_SUBNET_FILE),
        data_dir=_path(config, "dataDir", DEFAULT_DATA_DIR),
        delegate=_delegate(config),
        ipam=_object(config, "ipam"),
        passed={key: config[key] for key in PASS_THROUGH if key in config},
    )


# -- the delegate config --------------------------------------------------------------


def _routes(ipam: dict, env: SubnetEnv) -> list:
    given = ipam.get("routes") or []
    if not isinstance(given, list):
        raise errors.InvalidConfig("delegate.ipam.routes must be a list of {\"dst\": ...}")
    have = {r.get("dst") for r in given if isinstance(r, dict)}
    return given + [{"dst": str(n)} for n in env.networks if str(n) not in have]


def build_ipam(conf: MetaConfig, env: SubnetEnv) -> dict:
    """The node's subnet as the only range; the cluster network(s) routed via the gateway.

    Top-level `ipam` (flannel's) and then `delegate.ipam` are merged over the default type;
    ranges always come from the subnet file, and given routes are kept ahead of the network's.
    """
    ipam = {"type": DEFAULT_IPAM, **copy.deepcopy(conf.ipam),
            **copy.deepcopy(conf.delegate.get("ipam", {}))}
    ipam["ranges"] = [[{"subnet": str(env.subnet.network)}]]
    ipam["routes"] = _routes(ipam, env)
    return ipam


def build_delegate(conf: MetaConfig, env: SubnetEnv) -> dict:
    """The generated config with `delegate` merged over it (delegate's keys win)."""
    plugin_type = conf.delegate.get("type", DEFAULT_DELEGATE)
    out: dict = {"type": plugin_type}
    if plugin_type in BRIDGE_TYPES:
        out.update(BRIDGE_DEFAULTS)
    out["ipMasq"] = not env.ipmasq  # when the agent masquerades, the bridge must not
    out["mtu"] = env.mtu
    if env.gso_max_size and plugin_type == "tartan-bridge":
        out["gsoMaxSize"] = env.gso_max_size
    out.update(copy.deepcopy({k: v for k, v in conf.delegate.items() if k != "ipam"}))
    out.update(copy.deepcopy(conf.passed))
    out["name"] = conf.name
    out["cniVersion"] = conf.cni_version
    out["ipam"] = build_ipam(conf, env)
    return out
