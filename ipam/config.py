"""tartan-ipam's configuration: host-local's fields, parsed and validated.

Wrong JSON types are decode failures (code 6); values that parse but cannot work are invalid
config (code 7). Every message names the field as a path (`ipam.ranges[0][1].rangeEnd`) and
says what to do. Unknown fields are ignored, as host-local ignores them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tartan.cni import errors
from tartan.cni.types import DNS, Route
from tartan.ipam.ranges import IPAddress, IPNetwork, Range, RangeError, RangeSet
from tartan.ipam.store import Attachment

# CNI spec: network names start with a letter or digit, then letters, digits, "_", ".", "-".
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_NAME_MAX = 255  # one path component
DEFAULT_DATA_DIR = "/var/lib/cni/networks"
_JSON_TYPES: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
GC_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")

JsonType = TypeVar("JsonType", dict, list, str)


@dataclass(frozen=True)
class IPAMConfig:
    name: str
    range_sets: tuple[RangeSet, ...]
    routes: tuple[Route, ...] = ()
    data_dir: str = DEFAULT_DATA_DIR
    resolv_conf: str = ""
    requested: tuple[IPAddress, ...] = ()


def parse(config: Mapping[str, Any], cni_args: Mapping[str, str] | None = None) -> IPAMConfig:
    """The IPAM view of a network config (and of CNI_ARGS, for `IP=`)."""
    name = network_name(config)
    ipam = _typed(config.get("ipam"), dict, "ipam")
    if ipam is None:
        raise errors.InvalidConfig('network config has no "ipam" section; add one with ranges')
    return IPAMConfig(
        name=name,
        range_sets=range_sets(ipam),
        routes=routes(ipam),
        data_dir=data_dir(ipam),
        resolv_conf=_typed(ipam.get("resolvConf"), str, "ipam.resolvConf") or "",
        requested=requested_ips(config, cni_args or {}),
    )


# -- helpers --------------------------------------------------------------------------


def _quote(value: Any) -> str:
    """A value as it appears in the JSON config, for messages."""
    return json.dumps(value)


def _typed(value: Any, kind: type[JsonType], path: str) -> JsonType | None:
    """`value` if it is of `kind` (or None when absent); a decode failure otherwise."""
    if value is None or isinstance(value, kind):
        return value
    shown = _quote(value)
    shown = shown if len(shown) <= 60 else f"{shown[:57]}..."
    raise errors.DecodeFailure(f"{path} must be {_JSON_TYPES[kind]}, not {shown}")


def _ip(value: Any, path: str) -> IPAddress | None:
    text = _typed(value, str, path)
    if not text:
        return None  # host-local treats "" like an absent address
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise errors.InvalidConfig(f"{path} {_quote(text)} is not an IP address") from None


def _cidr(value: Any, path: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    text = _typed(value, str, path)
    if not text:
        raise errors.InvalidConfig(f"{path} is missing; set it to a CIDR such as 10.1.0.0/24")
    try:
        if "/" not in text or "%" in text:
            raise ValueError(text)
        return ipaddress.ip_interface(text)
    except ValueError:
        raise errors.InvalidConfig(
            f"{path} {_quote(text)} is not a valid CIDR; use address/prefix such as 10.1.0.0/24"
        ) from None


def _subnet(value: Any, path: str) -> IPNetwork:
    given = _cidr(value, path)
    if given.ip != given.network.network_address:
        raise errors.InvalidConfig(
            f"{path} {_quote(str(given))} has host bits set; use {given.network}"
        )
    return given.network


# -- name -----------------------------------------------------------------------------


def network_name(config: Mapping[str, Any]) -> str:
    name = _typed(config.get("name"), str, "name")
    if not name:
        raise errors.InvalidConfig(
            'network config has no "name"; set it (it names the directory under ipam.dataDir)'
        )
    if not _NAME.match(name) or len(name) > _NAME_MAX:
        raise errors.InvalidConfig(
            f"name {_quote(name)} is not a valid network name: start with a letter or digit, then "
            f"use only letters, digits, '_', '.' and '-' (at most {_NAME_MAX} characters)"
        )
    return name


# -- ranges ---------------------------------------------------------------------------


def parse_range(raw: Any, path: str) -> Range:
    raw = _typed(raw, dict, path)
    if raw is None:
        raise errors.InvalidConfig(f"{path} is null; give a range such as {{\"subnet\": ...}}")
    subnet = _subnet(raw.get("subnet"), f"{path}.subnet")
    try:
        return Range.build(
            subnet,
            start=_ip(raw.get("rangeStart"), f"{path}.rangeStart"),
            end=_ip(raw.get("rangeEnd"), f"{path}.rangeEnd"),
            gateway=_ip(raw.get("gateway"), f"{path}.gateway"),
        )
    except RangeError as exc:
        raise errors.InvalidConfig(f"{path}.{exc}") from None


def _check_set(ranges: list[Range], path: str) -> None:
    for i, later in enumerate(ranges):
        for j, earlier in enumerate(ranges[:i]):
            if later.version != earlier.version:
                raise errors.InvalidConfig(
                    f"{path}[{i}] is IPv{later.version} but {path}[{j}] is "
                    f"IPv{earlier.version}; put each family in its own range set"
                )
            if later.overlaps(earlier):
                raise errors.InvalidConfig(
                    f"{path}[{i}] {later} overlaps {path}[{j}] {earlier}; "
                    "ranges in a set must not overlap"
                )


def parse_range_set(raw: Any, path: str) -> RangeSet:
    raw = _typed(raw, list, path)
    if not raw:
        raise errors.InvalidConfig(f"{path} is empty; list at least one range")
    ranges = [parse_range(item, f"{path}[{i}]") for i, item in enumerate(raw)]
    _check_set(ranges, path)
    return RangeSet(tuple(ranges))


def _legacy_set(ipam: Mapping[str, Any]) -> list[tuple[str, RangeSet]]:
    """The single-range form (ipam.subnet, ...), which host-local puts first."""
    if not ipam.get("subnet"):
        return []
    legacy = {key: ipam.get(key) for key in ("subnet", "rangeStart", "rangeEnd", "gateway")}
    return [("ipam", RangeSet((parse_range(legacy, "ipam"),)))]


def range_sets(ipam: Mapping[str, Any]) -> tuple[RangeSet, ...]:
    raw = _typed(ipam.get("ranges"), list, "ipam.ranges") or []
    named = _legacy_set(ipam) + [
        (f"ipam.ranges[{i}]", parse_range_set(item, f"ipam.ranges[{i}]"))
        for i, item in enumerate(raw)
    ]
    if not named:
        raise errors.InvalidConfig(
            'ipam has no address ranges; set ipam.ranges (e.g. [[{"subnet": "10.1.0.0/24"}]]) '
            "or ipam.subnet"
        )
    for i, (path, later) in enumerate(named):
        for earlier_path, earlier in named[:i]:
            if later.overlaps(earlier):
                raise errors.InvalidConfig(
                    f"{path} ({later}) overlaps {earlier_path} ({earlier}); "
                    "range sets must not overlap"
                )
    return tuple(rs for _, rs in named)


# -- routes, dataDir, resolvConf ------------------------------------------------------


def parse_route(raw: Any, path: str) -> Route:
    raw = _typed(raw, dict, path) or {}
    dst = _cidr(raw.get("dst"), f"{path}.dst")
    gw = _ip(raw.get("gw"), f"{path}.gw")
    if gw is not None and gw.version != dst.version:
        raise errors.InvalidConfig(
            f"{path}.gw {gw} is IPv{gw.version} but dst {dst} is IPv{dst.version}; "
            "use a gateway of the same family"
        )
    return Route(dst=str(dst), gw=str(gw) if gw else "")


def routes(ipam: Mapping[str, Any]) -> tuple[Route, ...]:
    raw = _typed(ipam.get("routes"), list, "ipam.routes") or []
    return tuple(parse_route(item, f"ipam.routes[{i}]") for i, item in enumerate(raw))


def data_dir(ipam: Mapping[str, Any]) -> str:
    value = _typed(ipam.get("dataDir"), str, "ipam.dataDir") or DEFAULT_DATA_DIR
    if not os.path.isabs(value):
        raise errors.InvalidConfig(
            f"ipam.dataDir {_quote(value)} is not an absolute path; use e.g. {DEFAULT_DATA_DIR}"
        )
    return value


def read_resolv_conf(path: str) -> DNS:
    """nameserver, domain, search and options lines, as host-local reads them."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise errors.InvalidConfig(
            f"ipam.resolvConf {_quote(path)} cannot be read ({exc.strerror}); "
            "point it at a resolv.conf file or remove it"
        ) from None
    dns = DNS()
    for line in text.splitlines():
        _resolv_line(dns, line.split())
    return dns


def _resolv_line(dns: DNS, words: list[str]) -> None:
    if len(words) < 2 or words[0].startswith(("#", ";")):
        return
    key, values = words[0], words[1:]
    if key == "nameserver":
        dns.nameservers.append(values[0])
    elif key == "domain":
        dns.domain = values[0]
    elif key == "search":
        dns.search.extend(values)
    elif key == "options":
        dns.options.extend(values)


# -- requested addresses --------------------------------------------------------------


def _requested(text: str, path: str, error: type[errors.CniError]) -> IPAddress:
    try:
        return ipaddress.ip_interface(text.strip()).ip
    except ValueError:
        raise error(f"{path} {_quote(text)} is not an IP address") from None


def _config_ips(value: Any, path: str) -> list[IPAddress]:
    items = _typed(value, list, path) or []
    return [
        _requested(_typed(item, str, f"{path}[{i}]") or "", f"{path}[{i}]", errors.InvalidConfig)
        for i, item in enumerate(items)
    ]


def requested_ips(config: Mapping[str, Any], cni_args: Mapping[str, str]) -> tuple[IPAddress, ...]:
    """CNI_ARGS IP=a,b then args.cni.ips then runtimeConfig.ips, in host-local's order."""
    from_env = [
        _requested(item, "CNI_ARGS IP", errors.InvalidEnv)
        for item in cni_args.get("IP", "").split(",")
        if item.strip()
    ]
    args = _typed(config.get("args"), dict, "args") or {}
    cni = _typed(args.get("cni"), dict, "args.cni") or {}
    runtime = _typed(config.get("runtimeConfig"), dict, "runtimeConfig") or {}
    return tuple(
        from_env
        + _config_ips(cni.get("ips"), "args.cni.ips")
        + _config_ips(runtime.get("ips"), "runtimeConfig.ips")
    )


# -- GC -------------------------------------------------------------------------------


def _attachment(raw: Any, path: str) -> Attachment:
    raw = _typed(raw, dict, path) or {}
    container_id = _typed(raw.get("containerID"), str, f"{path}.containerID")
    ifname = _typed(raw.get("ifname"), str, f"{path}.ifname")
    if not container_id or not ifname:
        raise errors.InvalidConfig(f"{path} needs both containerID and ifname")
    return Attachment(container_id, ifname)


def valid_attachments(config: Mapping[str, Any]) -> frozenset[Attachment]:
    """The attachments GC must keep (the spec's key, or the older name)."""
    present = [key for key in GC_KEYS if key in config]
    if not present:
        raise errors.InvalidConfig(
            f"GC needs {GC_KEYS[0]} (the attachments to keep); refusing to release everything"
        )
    found: set[Attachment] = set()
    for key in present:
        items = _typed(config[key], list, key) or []
        found.update(_attachment(item, f"{key}[{i}]") for i, item in enumerate(items))
    return frozenset(found)
