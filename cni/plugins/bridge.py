"""tartan-bridge: the reference `bridge` plugin's behaviour and config, on Tartan's layers.

ADD: bridge -> veth pair (peer straight into the pod's netns) -> IPAM -> gateway on the
bridge -> pod addresses and routes -> forwarding -> masquerade. Every step that creates
something registers its undo; the undos run unless ADD succeeds.
DEL: pod interface, IPAM release, masquerade chain; "already gone" is success at each step,
and each step runs even when an earlier one failed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING

from tartan.cni import after_reply, errors, invoke, skel
from tartan.cni.plugins.bridge_config import BridgeConfig, parse
from tartan.cni.types import DNS, Interface, Result

if TYPE_CHECKING:  # bridge_ops loads pyroute2: only commands that do kernel work import it
    from tartan.cni.plugins.bridge_ops import Attachment
    from tartan.kernel.addr import IfAddr


def _ipam(command: str, args: skel.CmdArgs, conf: BridgeConfig) -> Result | None:
    return invoke.delegate(command, conf.ipam_type, args.stdin, args.env, args.path)


def _addresses_from(result: Result | None, conf: BridgeConfig) -> Result:
    if result is None or not result.ips:
        raise errors.DelegateFailure(f"IPAM plugin {conf.ipam_type} returned no addresses")
    return result


def _result(ipam: Result, att: Attachment, netns_path: str, conf: BridgeConfig) -> Result:
    ipam.interfaces = [
        Interface(name=att.bridge.name, mac=att.bridge.mac),
        Interface(name=att.host_veth.name, mac=att.host_veth.mac),
        Interface(name=att.container.name, mac=att.container.mac, sandbox=netns_path),
    ]
    for ip in ipam.ips:
        ip.interface = 2
    if conf.dns:
        ipam.dns = DNS.from_dict(conf.dns)
    return ipam


def _addresses(result: Result) -> list[IfAddr]:
    return [ipaddress.ip_interface(ip.address) for ip in result.ips]


def cmd_add(args: skel.CmdArgs) -> Result:
    conf = parse(args.config)
    from tartan.cni.plugins import bridge_ops as ops
    from tartan.kernel import netns, sysctl

    try:
        container = netns.raw_netlink(args.netns)
    except errors.NetnsGone as exc:
        raise errors.ContainerUnknown(str(exc)) from None
    with container, netns.raw_netlink() as host, ExitStack() as undo:
        bridge = ops.setup_bridge(host, conf)
        att = ops.setup_veth(host, container, args.netns, conf, bridge, args.container_id,
                             args.ifname, undo)
        reply = _ipam("ADD", args, conf)
        ops.on_failure(undo, f"the address reservation ({conf.ipam_type})", _ipam, "DEL",
                       args, conf)
        result = _addresses_from(reply, conf)
        if conf.is_gateway:
            ops.fill_gateways(result)
            target = ops.gateway_link(conf, bridge)
            for gateway in ops.gateway_addresses(result):
                ops.ensure_gateway(host, target, gateway, conf.force_address)
        routes = ops.container_routes(result, conf)
        ops.configure_container(container, att.container, result, routes)
        for version in {a.version for a in _addresses(result)}:
            sysctl.enable_forwarding(version)
        if conf.ip_masq:
            from tartan.cni.plugins import bridge_masq as masq

            masq.setup(conf.name, args.container_id, _addresses(result))
            ops.on_failure(undo, "the masquerade rules", masq.teardown, conf.name,
                           args.container_id)
        result = _result(result, att, args.netns, conf)
        undo.pop_all()
    return result


def cmd_del(args: skel.CmdArgs) -> None:
    conf = parse(args.config)
    from tartan.cni.plugins import bridge_ops as ops

    failures: list[errors.CniError] = []
    steps: list[Callable[[], object]] = []
    if args.netns:  # first: once the pod is off the bridge its address may be reused
        steps.append(lambda: ops.teardown_container(args.netns, args.ifname))
    steps.append(lambda: _ipam("DEL", args, conf))
    if conf.ip_masq:
        from tartan.cni.plugins import bridge_masq as masq

        # After the reply, as the veth's deletion: two families' iptables-save and -restore
        # are 25 ms, and the pod is already off the bridge. A chain left a moment longer
        # is harmless: its rules match only the released address, with the same verdicts a
        # new pod given that address gets from its own chain.
        def teardown() -> None:
            masq.teardown(conf.name, args.container_id)

        steps.append(lambda: after_reply.later(teardown))
    for step in steps:
        try:
            step()
        except errors.CniError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


def cmd_check(args: skel.CmdArgs) -> None:
    conf = parse(args.config)
    prev = args.prev_result()
    if prev is None:
        raise errors.InvalidConfig("CHECK needs prevResult in the config")
    from tartan.cni.plugins import bridge_ops as ops
    from tartan.kernel import netns

    _ipam("CHECK", args, conf)
    try:
        container = netns.netlink(args.netns)
    except errors.NetnsGone as exc:
        raise errors.ContainerUnknown(str(exc)) from None
    with container, netns.netlink() as host:
        ops.check_container(container, args.ifname, prev)
        ops.check_host(host, conf, prev)
    if conf.ip_masq:
        from tartan.cni.plugins import bridge_masq as masq

        masq.check(conf.name, args.container_id, _addresses(prev))


def _valid_container_ids(config: dict) -> set[str]:
    attachments = config.get("cni.dev/valid-attachments", config.get("cni.dev/attachments"))
    if not isinstance(attachments, list):
        raise errors.InvalidConfig("GC needs cni.dev/valid-attachments (a list) in the config")
    return {str(a.get("containerID", "")) for a in attachments if isinstance(a, dict)}


def cmd_gc(args: skel.CmdArgs) -> None:
    conf = parse(args.config)
    valid = _valid_container_ids(args.config)
    _ipam("GC", args, conf)
    if conf.ip_masq:
        from tartan.cni.plugins import bridge_masq as masq

        masq.gc(conf.name, valid)


def cmd_status(args: skel.CmdArgs) -> None:
    conf = parse(args.config)
    _ipam("STATUS", args, conf)


PLUGIN = skel.Plugin("tartan-bridge", add=cmd_add, delete=cmd_del, check=cmd_check,
                     gc=cmd_gc, status=cmd_status)


def main() -> int:
    return skel.main(PLUGIN)
