"""The `tartan` meta plugin's inputs: its own config, the agent's subnet file
(`tartan.cni.subnet_env`), and the delegate config built from the two (flannel's CNI
plugin semantics)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from tartan.cni import errors, subnet_env
from tartan.cni.subnet_env import SubnetEnv

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


@dataclass
class MetaConfig:
    name: str
    cni_version: str
    subnet_file: str = subnet_env.DEFAULT_PATH
    data_dir: str = DEFAULT_DATA_DIR
    delegate: dict = field(default_factory=dict)
    ipam: dict = field(default_factory=dict)
    passed: dict = field(default_factory=dict)


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
        subnet_file=_path(config, "subnetFile", subnet_env.DEFAULT_PATH),
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
    out["ipMasq"] = not env.ip_masq  # when the agent masquerades, the bridge must not
    out["mtu"] = env.mtu
    if env.gso_max_size and plugin_type == "tartan-bridge":
        out["gsoMaxSize"] = env.gso_max_size
    out.update(copy.deepcopy({k: v for k, v in conf.delegate.items() if k != "ipam"}))
    out.update(copy.deepcopy(conf.passed))
    out["name"] = conf.name
    out["cniVersion"] = conf.cni_version
    out["ipam"] = build_ipam(conf, env)
    return out
