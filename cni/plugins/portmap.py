"""tartan-portmap: the reference `portmap` chained plugin (hostPort DNAT), on the shared applier.

ADD (needs prevResult: the container's addresses come from it): per address family the pod
has, route_localnet on the host interface towards the pod (IPv4 with snat, so 127.0.0.1 may
be DNATed out of the host), then one iptables-restore of the nat table (portmap_rules.py),
then the UDP conntrack entries to the mapped host ports go, so a flow that existed before
the mapping is not kept away from it. The prevResult is the result, unchanged.
CHECK: the rules are exactly as ADD would make them. DEL: the container's chain and its
jumps go, found by name (no prevResult or netns needed); absent is success. GC: the chains of
this network's containers that are not in cni.dev/valid-attachments go.

No port mappings in runtimeConfig: ADD, CHECK and DEL touch nothing, as the reference.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from functools import partial

from tartan.cni import errors, skel
from tartan.cni.plugins import portmap_rules as rules
from tartan.cni.plugins.portmap_config import PortMapConfig, parse
from tartan.cni.types import Result
from tartan.kernel.iptables import Iptables, LiveTable, Table

Applier = Callable[[int], Iptables]  # family (4 or 6) -> the applier for it
FAMILIES = (4, 6)


def _route_localnet(address: rules.ContainerAddress) -> None:
    """route_localnet=1 on the host interface routing to the pod: a DNATed packet from
    127.0.0.1 may then leave the host (the reference sets it on the same interface)."""
    from tartan.kernel import link, netns, route, sysctl

    with netns.netlink_in() as ipr:
        index = route.output_device(ipr, str(address.ip))
        if not index:
            return
        name = link.by_index(ipr, index).name
    sysctl.write_interface(4, name, "route_localnet", "1")


def _clear_udp(version: int, port: int) -> int:
    from tartan.kernel import conntrack

    return conntrack.delete_to_port(version, "udp", port)


@dataclass(frozen=True)
class Kernel:
    """What the handlers do to the kernel beyond the nat table (a seam for the unit tests)."""

    applier: Applier = Iptables
    route_localnet: Callable[[rules.ContainerAddress], None] = _route_localnet
    clear_udp: Callable[[int, int], int] = _clear_udp


KERNEL = Kernel()


def _prev_result(args: skel.CmdArgs) -> Result:
    prev = args.prev_result()
    if prev is None:
        raise errors.InvalidConfig(
            f"tartan-portmap is a chained plugin: {args.command} needs prevResult (the "
            "container's addresses); list it after the plugin that makes the interface")
    return prev


def cmd_add(args: skel.CmdArgs, kernel: Kernel = KERNEL) -> Result:
    conf = parse(args.config)
    prev = _prev_result(args)
    if not conf.mappings:
        return prev
    addresses = rules.container_addresses(prev, args.ifname)
    with ExitStack() as undo:
        for version, address in sorted(addresses.items()):
            undo.callback(_quiet, teardown, conf.name, args.container_id, kernel, (version,))
            if conf.snat and version == 4:
                kernel.route_localnet(address)
            _forward(conf, args.container_id, address, kernel)
        undo.pop_all()
    for version in sorted(addresses):
        _clear_stale_udp(conf, version, kernel)
    return prev


def _forward(conf: PortMapConfig, container_id: str, address: rules.ContainerAddress,
             kernel: Kernel) -> None:
    state = rules.table(conf, container_id, address)
    try:
        kernel.applier(address.version).apply_with("nat", partial(_with_live, conf, state))
    except errors.IptablesFailure as exc:
        raise _blame_conditions(exc, conf, address.version) from None


def _with_live(conf: PortMapConfig, state: Table, live: LiveTable) -> Table:
    """`state` against the table as it is: the external mark chain must be there, and the
    container's jumps it no longer wants go."""
    external = conf.external_set_mark_chain
    if conf.snat and external is not None and external not in live.chains:
        raise errors.InvalidConfig(
            f"externalSetMarkChain {external} does not exist in the nat table: create it (it "
            "must mark packets for masquerade) before adding containers, or drop the field")
    return rules.without_stale_jumps(state, live)


def _blame_conditions(exc: errors.IptablesFailure, conf: PortMapConfig,
                      version: int) -> errors.IptablesFailure:
    given = conf.conditions_for(version)
    if not given:
        return exc
    return errors.IptablesFailure(
        f"{exc.msg} (conditionsV{version} is {list(given)}: are those valid iptables "
        "match arguments?)", exc.details)


def _clear_stale_udp(conf: PortMapConfig, version: int, kernel: Kernel) -> None:
    """As the reference: after the rules, and a failure is only reported."""
    for port in dict.fromkeys(m.host_port for m in conf.mappings
                              if m.protocol == "udp" and m.applies_to(version)):
        try:
            kernel.clear_udp(version, port)
        except errors.CniError as exc:
            print(f"tartan-portmap: stale UDP conntrack entries to port {port} stay: "
                  f"{exc.msg}", file=sys.stderr)


def cmd_check(args: skel.CmdArgs, kernel: Kernel = KERNEL) -> None:
    conf = parse(args.config)
    prev = _prev_result(args)
    if not conf.mappings:
        return
    for version, address in sorted(rules.container_addresses(prev, args.ifname).items()):
        ipt = kernel.applier(version)
        live = ipt.read("nat")
        state = _with_live(conf, rules.table(conf, args.container_id, address), live)
        if lines := ipt.pending(state, live):
            raise errors.CheckMismatch(
                f"IPv{version} port mappings of container {args.container_id} in network "
                f"{conf.name} are not in place: {lines[0]}", "\n".join(lines))


def cmd_del(args: skel.CmdArgs, kernel: Kernel = KERNEL) -> None:
    conf = parse(args.config)
    if conf.mappings:
        teardown(conf.name, args.container_id, kernel)


def teardown(network: str, container_id: str, kernel: Kernel = KERNEL,
             families: tuple[int, ...] = FAMILIES) -> None:
    """Remove the container's chain and its jumps in every family; absent is success. A
    family whose nat table cannot be read at all (no ip6tables) is skipped, as the
    reference does, unless none can be."""
    doomed = rules.teardown_table(network, [container_id])
    _each_family(families, kernel, lambda ipt, live: ipt.apply(doomed, live))


def cmd_gc(args: skel.CmdArgs, kernel: Kernel = KERNEL) -> None:
    conf = parse(args.config)
    valid = _valid_container_ids(args.config)

    def sweep(ipt: Iptables, live: LiveTable) -> None:
        gone = sorted(rules.containers(live, conf.name) - valid)
        if gone:
            ipt.apply(rules.teardown_table(conf.name, gone), live)

    _each_family(FAMILIES, kernel, sweep)


def _valid_container_ids(config: dict) -> set[str]:
    attachments = config.get("cni.dev/valid-attachments", config.get("cni.dev/attachments"))
    if not isinstance(attachments, list):
        raise errors.InvalidConfig("GC needs cni.dev/valid-attachments (a list) in the config")
    return {str(a.get("containerID", "")) for a in attachments if isinstance(a, dict)}


def _each_family(families: tuple[int, ...], kernel: Kernel,
                 step: Callable[[Iptables, LiveTable], object]) -> None:
    """`step` on each family's live nat table; every family is tried, then the first
    failure is raised. Families whose table cannot be read are left out, unless all are."""
    unreadable, failures = [], []
    for family in families:
        ipt = kernel.applier(family)
        try:
            live = ipt.read("nat")
        except errors.IptablesFailure as exc:
            unreadable.append(exc)
            continue
        try:
            step(ipt, live)
        except errors.CniError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
    if unreadable and len(unreadable) == len(families):
        raise unreadable[0]


def _quiet(step: Callable[..., object], *args: object) -> None:
    """An undo: ADD's own error is the one to report."""
    with suppress(errors.CniError):
        step(*args)


PLUGIN = skel.Plugin("tartan-portmap", add=cmd_add, delete=cmd_del, check=cmd_check,
                     gc=cmd_gc)


def main() -> int:
    return skel.main(PLUGIN)
