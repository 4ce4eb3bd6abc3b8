"""The kernel steps of tartan-bridge, each one small and each with its undo.

ADD and DEL speak netlink through kernel/attach.py (the raw socket, a few requests per pod);
VLANs and CHECK through kernel/link.py (pyroute2). Loaded only when a command does kernel
work, so VERSION and bad-input errors never pay for pyroute2's import.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import socket
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType

from pyroute2 import IPRoute

from tartan.cni import after_reply
from tartan.cni.errors import CheckMismatch, Gone, InvalidConfig, TartanError
from tartan.cni.plugins.bridge_config import BridgeConfig
from tartan.cni.types import Result
from tartan.kernel import addr, attach, gso, link, netns, route
from tartan.kernel.addr import IfAddr
from tartan.kernel.bulk import Rtnl
from tartan.kernel.errors import KernelFailure
from tartan.kernel.link import Link
from tartan.kernel.route import RouteSpec

DEFAULT_ROUTE = {4: "0.0.0.0/0", 6: "::/0"}


@dataclass
class Attachment:
    bridge: Link
    host_veth: Link
    container: Link


def on_failure(undo: ExitStack, what: str, fn: Callable[..., object], *args: object) -> None:
    """Register an undo step of ADD, run when a later step fails.

    A failing undo must not hide the error that triggered it, nor vanish: it is added to that
    error's details (the runtime logs them), naming what was left behind.
    """

    def run(exc_type: type[BaseException] | None, exc: BaseException | None,
            tb: TracebackType | None) -> bool:
        try:
            fn(*args)
        except Exception as failure:
            note = f"undoing {what} failed, it may be left behind: {failure}"
            if isinstance(exc, TartanError):
                exc.details = f"{exc.details}\n{note}" if exc.details else note
            elif exc is not None:
                exc.add_note(note)
        return False  # never swallow the error being unwound

    undo.push(run)


def host_veth_name(container_id: str, ifname: str) -> str:
    """Stable per attachment, so a retried ADD finds the stale half of a failed one."""
    return "veth" + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:8]


def setup_bridge(host: Rtnl, conf: BridgeConfig) -> Link:
    if conf.vlan:
        with netns.netlink_in() as ipr:
            bridge = link.ensure_bridge(ipr, conf.bridge, conf.mtu, vlan_filtering=True)
    else:
        bridge = attach.ensure_bridge(host, conf.bridge, conf.mtu)
    if conf.promisc_mode:
        attach.set_link(host, bridge.index, promisc=True)
    return bridge


def setup_veth(host: Rtnl, container: Rtnl, netns_path: str, conf: BridgeConfig,
               bridge: Link, container_id: str, ifname: str, undo: ExitStack) -> Attachment:
    if attach.named(container, ifname) is not None:
        raise InvalidConfig(f"container already has an interface named {ifname}")
    name = host_veth_name(container_id, ifname)
    attach.delete(host, name)  # left over from an ADD that died half-way
    fd = netns.open_netns(netns_path)
    try:
        created = attach.add_veth(host, name, ifname, fd, conf.mtu)
    finally:
        os.close(fd)
    if not created:
        raise KernelFailure(
            f"cannot create veth pair {name}/{ifname}: an interface of that name already "
            "exists (is the container already attached? run DEL first)")
    on_failure(undo, f"host veth {name}", attach.delete, host, name)
    host_veth = attach.require(host, name)
    attach.set_link(host, host_veth.index, master=bridge.index)
    if conf.hairpin_mode:
        attach.set_hairpin(host, host_veth.index)
    if conf.vlan:
        with netns.netlink_in() as ipr:
            link.set_port_vlan(ipr, host_veth.index, conf.vlan)
    if conf.gso_max_size:
        _big_tcp(netns_path, ifname, host_veth.index, bridge.index, conf.gso_max_size)
    attach.set_link(host, host_veth.index, up=True)
    host_veth = dataclasses.replace(host_veth, up=True, master=bridge.index)
    return Attachment(bridge, host_veth, attach.require(container, ifname))


def _big_tcp(netns_path: str, ifname: str, host_index: int, bridge_index: int,
             size: int) -> None:
    """Both ends of the pair (the pod's end sizes its TCP packets, the host's end takes them
    towards the pod) and the bridge, for the node's own traffic to pods. The bridge is done
    after the port joins it: a bridge without ports takes no more than 64 KiB."""
    gso.set_ipv4_max(host_index, size)
    gso.set_ipv4_max(bridge_index, size)
    with netns.entered(netns_path):
        gso.set_ipv4_max(socket.if_nametoindex(ifname), size)


def fill_gateways(result: Result) -> None:
    """A gateway for every address that has none: the subnet's first address."""
    for ip in result.ips:
        if not ip.gateway:
            ip.gateway = str(ipaddress.ip_interface(ip.address).network.network_address + 1)


def gateway_addresses(result: Result) -> list[IfAddr]:
    out = []
    for ip in result.ips:
        if ip.gateway:
            prefix = ipaddress.ip_interface(ip.address).network.prefixlen
            out.append(ipaddress.ip_interface(f"{ip.gateway}/{prefix}"))
    return out


def _conflicts(existing: list[IfAddr], wanted: IfAddr) -> list[IfAddr]:
    if wanted.version == 4:
        return [a for a in existing if a != wanted]
    return [a for a in existing if a != wanted and a.network.overlaps(wanted.network)]


def ensure_gateway(host: Rtnl, target: Link, wanted: IfAddr, force: bool) -> None:
    """Put the gateway on the bridge; a different one already there is an error unless forced."""
    existing = attach.addresses(host, target.index, wanted.version)
    if wanted in existing:
        return
    conflicts = _conflicts(existing, wanted)
    if conflicts and not force:
        have = ", ".join(map(str, conflicts))
        raise InvalidConfig(
            f"{target.name} already has IP address {have}, different from the gateway {wanted} "
            f"this network wants: set \"forceAddress\": true to replace it, or delete the stale "
            f"bridge ({target.name}) if its old subnet is no longer used"
        )
    for stale in conflicts:
        attach.delete_address(host, target.index, stale)
    attach.add_address(host, target.index, wanted)


def gateway_link(conf: BridgeConfig, bridge: Link) -> Link:
    if not conf.vlan:
        return bridge
    with netns.netlink_in() as ipr:
        link.add_bridge_self_vlan(ipr, bridge.index, conf.vlan)
        return link.ensure_vlan_device(ipr, bridge, conf.vlan)


def container_routes(result: Result, conf: BridgeConfig) -> list[RouteSpec]:
    gateways = {ipaddress.ip_address(ip.gateway).version: ip.gateway
                for ip in result.ips if ip.gateway}
    specs = []
    for r in result.routes:
        version = ipaddress.ip_network(r.dst, strict=False).version
        if conf.is_default_gateway and r.dst == DEFAULT_ROUTE[version]:
            continue
        specs.append(RouteSpec(dst=r.dst, gw=r.gw or gateways.get(version, "")))
    if conf.is_default_gateway:
        specs += [RouteSpec(dst=DEFAULT_ROUTE[v], gw=gw) for v, gw in gateways.items()]
    return specs


def configure_container(container: Rtnl, iface: Link, result: Result,
                        routes: list[RouteSpec]) -> None:
    for ip in result.ips:
        attach.add_address(container, iface.index, ipaddress.ip_interface(ip.address))
    attach.set_link(container, iface.index, up=True)
    for spec in routes:
        attach.add_route(container, RouteSpec(dst=spec.dst, gw=spec.gw, oif=iface.index))


def teardown_container(netns_path: str, ifname: str) -> None:
    """Take the pod's interface down now and delete it (and so the veth pair) after the reply.

    Down, the pod is off the bridge at once, so its address may be handed out again. The
    deletion keeps the netlink socket it was looked up with: the socket holds the namespace,
    so the index still names this pod's interface even if the runtime has let go of the path.
    """
    try:
        container = netns.raw_netlink(netns_path)
    except Gone:
        return
    try:
        iface = attach.named(container, ifname)
        if iface is not None:
            attach.set_link(container, iface.index, up=False)
    except BaseException:
        container.close()
        raise
    if iface is None:
        container.close()
        return
    after_reply.later(lambda: _delete_and_close(container, iface.index))


def _delete_and_close(rtnl: Rtnl, index: int) -> None:
    with rtnl:
        attach.delete(rtnl, index=index)


def check_container(container: IPRoute, ifname: str, prev: Result) -> None:
    iface = link.get(container, ifname)
    if iface is None:
        raise CheckMismatch(f"container interface {ifname} does not exist")
    wanted = next((i for i in prev.interfaces if i.name == ifname and i.sandbox), None)
    if wanted and wanted.mac and wanted.mac.lower() != iface.mac.lower():
        raise CheckMismatch(f"{ifname} has MAC {iface.mac}, prevResult says {wanted.mac}")
    have = addr.list_(container, iface.index)
    for ip in prev.ips:
        if ipaddress.ip_interface(ip.address) not in have:
            raise CheckMismatch(f"address {ip.address} is missing from {ifname} in the container")
    for r in prev.routes:
        if not route.exists(container, RouteSpec(dst=r.dst, gw=r.gw)):
            raise CheckMismatch(f"route {r.dst} is missing in the container")


def check_host(host: IPRoute, conf: BridgeConfig, prev: Result) -> None:
    bridge = link.get(host, conf.bridge)
    if bridge is None:
        raise CheckMismatch(f"bridge {conf.bridge} does not exist")
    for iface in prev.interfaces:
        if iface.sandbox or iface.name == conf.bridge:
            continue
        veth = link.get(host, iface.name)
        if veth is None:
            raise CheckMismatch(f"host veth {iface.name} does not exist")
        if veth.master != bridge.index:
            raise CheckMismatch(f"host veth {iface.name} is not attached to {conf.bridge}")
