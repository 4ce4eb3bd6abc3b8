"""Links: bridges, veth pairs, VLAN devices, bridge ports. One function per kernel verb."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tartan.kernel.errors import KernelFailure, LinkGone

IFF_PROMISC = 0x100
BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str
    mtu: int
    kind: str
    master: int
    up: bool


@contextmanager
def kernel_op(what: str) -> Iterator[None]:
    """Turn netlink errors into KernelFailure naming the operation."""
    try:
        yield
    except NetlinkError as exc:
        raise KernelFailure(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}") from None


def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with kernel_op(what):
        return fn(*args, **kwargs)


def _to_link(msg: Any) -> Link:
    info = msg.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info else ""
    return Link(
        index=msg["index"],
        name=msg.get("IFLA_IFNAME"),
        mac=msg.get("IFLA_ADDRESS") or "",
        mtu=msg.get("IFLA_MTU") or 0,
        kind=kind or "",
        master=msg.get("IFLA_MASTER") or 0,
        up=bool(msg["flags"] & 1),
    )


def get(ipr: IPRoute, name: str) -> Link | None:
    try:
        msgs = ipr.link("get", ifname=name)  # get_links(ifname=) dumps and filters: 3x slower
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise KernelFailure(f"cannot look up link {name}: {exc}") from None
    return _to_link(msgs[0]) if msgs else None


def by_index(ipr: IPRoute, index: int) -> Link:
    try:
        return _to_link(ipr.link("get", index=index)[0])
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            raise LinkGone(f"link {index} is gone") from None
        raise KernelFailure(f"cannot look up link {index}: {exc}") from None


def all_links(ipr: IPRoute) -> list[Link]:
    """Every link of the namespace, in index order."""
    with kernel_op("cannot list links"):
        return sorted((_to_link(msg) for msg in ipr.get_links()), key=lambda link: link.index)


def peer_index(ipr: IPRoute, index: int) -> int:
    """A veth's peer's index (in the peer's namespace); 0 when link `index` has none."""
    with kernel_op(f"cannot look up link {index}"):
        msgs = ipr.link("get", index=index)
    return int(msgs[0].get("IFLA_LINK") or 0) if msgs else 0


def require(ipr: IPRoute, name: str) -> Link:
    found = get(ipr, name)
    if found is None:
        raise LinkGone(f"link {name} does not exist")
    return found


def ensure_bridge(ipr: IPRoute, name: str, mtu: int, vlan_filtering: bool) -> Link:
    """The bridge `name`, created when missing (two ADDs may race to create it)."""
    existing = get(ipr, name)
    if existing is None:
        attrs: dict[str, Any] = {"ifname": name, "kind": "bridge"}
        if mtu:
            attrs["mtu"] = mtu
        if vlan_filtering:
            attrs["br_vlan_filtering"] = 1
        try:
            ipr.link("add", **attrs)
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP and vlan_filtering:
                raise _no_vlan_filtering(name) from None
            if exc.code != errno.EEXIST:
                raise KernelFailure(f"cannot create bridge {name}: {exc}") from None
        existing = require(ipr, name)
        # A bridge takes its lowest port's MAC unless one is set; pinning it keeps the
        # gateway's MAC stable in every pod's ARP cache as ports come and go.
        _call(f"cannot pin MAC of bridge {name}", ipr.link, "set", index=existing.index,
              address=existing.mac)
    if existing.kind != "bridge":
        raise not_a_bridge(existing)
    if vlan_filtering:
        _enable_vlan_filtering(ipr, existing)
    if not existing.up:
        set_up(ipr, existing.index)
    return existing


def not_a_bridge(found: Link) -> KernelFailure:
    return KernelFailure(
        f"{found.name} exists but is a {found.kind or 'plain'} link, not a bridge: "
        "choose another `bridge` name or remove that link"
    )


def _no_vlan_filtering(name: str) -> KernelFailure:
    return KernelFailure(
        f"cannot use `vlan` on bridge {name}: this kernel has no bridge VLAN filtering "
        "(CONFIG_BRIDGE_VLAN_FILTERING); remove `vlan` from the config or use a kernel with it"
    )


def _enable_vlan_filtering(ipr: IPRoute, bridge: Link) -> None:
    try:
        ipr.link("set", index=bridge.index, kind="bridge", br_vlan_filtering=1)
    except NetlinkError as exc:
        if exc.code == errno.EOPNOTSUPP:
            raise _no_vlan_filtering(bridge.name) from None
        raise KernelFailure(f"cannot enable vlan_filtering on {bridge.name}: {exc}") from None


def set_up(ipr: IPRoute, index: int) -> None:
    _call(f"cannot set link {index} up", ipr.link, "set", index=index, state="up")


def add_vxlan(ipr: IPRoute, name: str, vni: int, local: str, parent: int, port: int,
              mac: str, mtu: int) -> None:
    """A VXLAN device with learning off: Tartan programs every FDB and neighbour entry."""
    try:
        ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=local,
                 vxlan_link=parent, vxlan_port=port, vxlan_learning=0, address=mac, mtu=mtu)
    except NetlinkError as exc:
        raise KernelFailure(f"cannot create VXLAN device {name}: {exc}") from None


def vxlan_info(ipr: IPRoute, index: int) -> dict:
    """The VXLAN attributes of link `index` (vni, local, link, port, learning)."""
    msg = ipr.get_links(index)[0]
    data = msg.get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
    return {
        "vni": data.get("IFLA_VXLAN_ID"),
        "local": data.get("IFLA_VXLAN_LOCAL"),
        "link": data.get("IFLA_VXLAN_LINK"),
        "port": data.get("IFLA_VXLAN_PORT"),
        "learning": data.get("IFLA_VXLAN_LEARNING"),
    }


def set_mtu(ipr: IPRoute, index: int, mtu: int) -> None:
    _call(f"cannot set MTU {mtu} on link {index}", ipr.link, "set", index=index, mtu=mtu)


def delete(ipr: IPRoute, name: str) -> bool:
    """Delete link `name`; False when it was already gone."""
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return False
        raise KernelFailure(f"cannot delete link {name}: {exc}") from None
    return True


def set_port_vlan(ipr: IPRoute, index: int, vid: int) -> None:
    """Make the port an untagged member of `vid` (its PVID) and nothing else."""
    _call(f"cannot remove default VLAN from link {index}", ipr.vlan_filter, "del",
          index=index, vlan_info={"vid": 1})
    _call(f"cannot put link {index} on VLAN {vid}", ipr.vlan_filter, "add", index=index,
          vlan_info={"vid": vid, "flags": BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED})


def add_bridge_self_vlan(ipr: IPRoute, index: int, vid: int) -> None:
    """Let the bridge device itself carry `vid` tagged (for its VLAN gateway device)."""
    _call(f"cannot add VLAN {vid} to bridge {index}", ipr.vlan_filter, "add", index=index,
          vlan_info={"vid": vid}, vlan_flags="self")


def ensure_vlan_device(ipr: IPRoute, parent: Link, vid: int) -> Link:
    """`<bridge>.<vid>`, the VLAN device on the bridge that holds the VLAN's gateway."""
    name = f"{parent.name}.{vid}"[:15]
    existing = get(ipr, name)
    if existing is None:
        try:
            ipr.link("add", ifname=name, kind="vlan", link=parent.index, vlan_id=vid)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise KernelFailure(f"cannot create VLAN device {name}: {exc}") from None
        existing = require(ipr, name)
    if not existing.up:
        set_up(ipr, existing.index)
    return existing
