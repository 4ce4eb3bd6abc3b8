"""`tartanctl doctor`: check this node for the failures operators really hit; for each problem
found, its cause and its fix. Exit 1 when any is found; `-o json` for tools.

Each check reads the node (links, routes, sysctls, iptables, files, the store) and says
nothing when all is well. A check that cannot look (no iptables, the store down) says so as a
problem of its own only when that is the problem (tartand's store unreachable); otherwise it
is skipped quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from tartan.backends.masq import FORWARD_CHAIN
from tartan.backends.routes import PROTO_TARTAN
from tartan.backends.vxlan import find_device, vxlan_entries
from tartan.cni import subnet_env
from tartan.debug import doctor_datapath
from tartan.debug.doctor_base import Check, Finding, Node
from tartan.debug.node import (
    CNI_CONF_DIR,
    agents_here,
    config_files,
    find_network,
    runtime_namespaces,
)
from tartan.kernel import addr, link, neigh, route
from tartan.kernel.errors import TartanError
from tartan.kernel.iptables import BACKENDS, Iptables, LiveTable

CONNTRACK_FULL = 0.9  # of nf_conntrack_max
LEASE_EXPIRING = 0.1  # of the TTL left: tartand renews long before


# -- the checks ---------------------------------------------------------------------------


def check_tartand(node: Node, ipr: IPRoute) -> Iterator[Finding]:
    if not agents_here():
        yield Finding("tartand", "tartand is not running on this node",
                      "without it the node has no lease renewal, no routes to new nodes, no "
                      "NetworkPolicy, and pods are served by the plugin alone",
                      "systemctl start tartand (journalctl -u tartand says why it stopped)")
    if node.env is None:
        yield Finding("subnet-file", node.env_error,
                      "tartand writes the subnet file once it holds a lease; the plugin "
                      "cannot give pods addresses without it",
                      "start tartand and check its log for the lease")


def check_lease(node: Node, ipr: IPRoute) -> Iterator[Finding]:
    if node.env is None or node.store_args is None:
        return
    try:
        leases = node.leases()
    except Exception as exc:  # StartupError, StoreUnavailable: what the agent would meet
        yield Finding("store", f"the lease store cannot be read: {exc}",
                      "tartand cannot renew its lease or learn about other nodes",
                      "check the --store flags and that the store (SQLite file, etcd) is up")
        return
    subnet = node.env.subnet.network
    mine = next((lease for lease in leases if lease.subnet == subnet), None)
    if mine is None:
        yield Finding("lease", f"no lease holds this node's subnet {subnet}",
                      "the lease expired or was taken: pods keep addresses another node may "
                      "now get", "restart tartand: it takes a lease and rewrites the subnet file")
    elif mine.expiration != float("inf"):
        left = mine.expiration - time.time()
        ttl = max(left, 1.0)
        if left < LEASE_EXPIRING * ttl or left < 60:
            yield Finding("lease", f"the lease of {subnet} expires in {left:.0f} s",
                          "tartand renews leases long before they end: it is not renewing",
                          "check that tartand runs and reaches the store")
    yield from _routes_without_lease(ipr, {str(lease.subnet) for lease in leases}, subnet)
    yield from _vxlan_entries(ipr, [lease for lease in leases if lease.subnet != subnet])


def _vxlan_entries(ipr: IPRoute, peers: list[Any]) -> Iterator[Finding]:
    """The neighbour and FDB entries of the VXLAN device against the peers' leases (the
    peers routed through the device: DirectRouting sends same-segment peers around it)."""
    device = find_device(link.all_links(ipr))
    if device is None:
        return
    via_device = {r.dst for r in route.by_protocol(ipr, PROTO_TARTAN, socket.AF_INET)
                  if r.oif == device.index}
    wanted = vxlan_entries([p for p in peers if str(p.subnet) in via_device], device.index)
    wanted_neigh, wanted_fdb = set(wanted.neighbours), set(wanted.fdb)
    live_neigh = set(neigh.permanent_neighbours(ipr, device.index))
    live_fdb = set(neigh.remote_fdb(ipr, device.index))
    missing = sorted(f"neighbour {e.ip} lladdr {e.mac}" for e in wanted_neigh - live_neigh)
    missing += sorted(f"fdb {e.mac} dst {e.dst}" for e in wanted_fdb - live_fdb)
    stale = sorted(f"neighbour {e.ip} lladdr {e.mac}" for e in live_neigh - wanted_neigh)
    stale += sorted(f"fdb {e.mac} dst {e.dst}" for e in live_fdb - wanted_fdb)
    if missing:
        yield Finding("vxlan-peers", f"{device.name} lacks entries for leased peers: "
                      f"{'; '.join(missing)}", "packets to those peers' pods find no VTEP: "
                      "they are dropped or flooded nowhere",
                      "restart tartand (its reconcile writes them); check its log for errors")
    if stale:
        yield Finding("vxlan-peers", f"{device.name} has entries no lease explains: "
                      f"{'; '.join(stale)}", "a peer left or changed its VTEP, and the old "
                      "entry sends its traffic to the wrong node",
                      "restart tartand (its reconcile removes them)")


def _routes_without_lease(ipr: IPRoute, leased: set[str], own: Any) -> Iterator[Finding]:
    for spec in route.by_protocol(ipr, PROTO_TARTAN, socket.AF_INET):
        if spec.dst not in leased and spec.network != own:
            yield Finding("routes", f"route to {spec.dst} (proto {PROTO_TARTAN}) but no node "
                          "holds a lease for it",
                          "a node left and its route stayed (tartand removes them at its next "
                          "reconcile; if it is not running, nothing does)",
                          f"start tartand, or ip route del {spec.dst}")


def check_bridge(node: Node, ipr: IPRoute) -> Iterator[Finding]:
    bridge = link.get(ipr, node.network.bridge)
    if bridge is None or node.env is None:
        return
    gateway = node.env.subnet
    found = [a for a in addr.list_(ipr, bridge.index, 4)]
    wrong = [a for a in found if a.network != gateway.network]
    if wrong:
        yield Finding("bridge-address",
                      f"{bridge.name} has {', '.join(map(str, wrong))}, outside this node's "
                      f"subnet {gateway.network}",
                      "the node got a new subnet and the bridge kept the old gateway "
                      f"(\"{bridge.name} already has an IP address different from ...\")",
                      f"ip addr flush dev {bridge.name} (the next pod ADD sets {gateway}), "
                      "or tartanctl reset and restart tartand")


def check_mtu(node: Node, ipr: IPRoute) -> Iterator[Finding]:
    if node.env is None:
        return
    mtu = node.env.mtu
    links = link.all_links(ipr)
    vxlan = find_device(links)
    if vxlan is not None:
        parent = int(link.vxlan_info(ipr, vxlan.index).get("link") or 0)
        if parent:
            uplink = link.by_index(ipr, parent)
            if vxlan.mtu > uplink.mtu - 50:
                yield Finding("mtu", f"{vxlan.name} MTU {vxlan.mtu} > {uplink.name} MTU "
                              f"{uplink.mtu} - 50", "VXLAN adds 50 bytes: full-size packets "
                              "are dropped or fragmented on the underlay",
                              f"ip link set {vxlan.name} mtu {uplink.mtu - 50}, or restart "
                              "tartand (it sets it from the uplink)")
        if mtu > vxlan.mtu:
            yield Finding("mtu", f"pods get MTU {mtu} (subnet file) but {vxlan.name} has "
                          f"{vxlan.mtu}", "pods send packets the tunnel cannot carry",
                          "restart tartand: it writes FLANNEL_MTU from the tunnel's MTU")
    bridge = next((li for li in links if li.name == node.network.bridge), None)
    if bridge is None:
        return
    over = [li for li in links if li.master == bridge.index and li.mtu > mtu]
    if bridge.mtu > mtu or over:
        names = ", ".join(f"{li.name} {li.mtu}" for li in ([bridge] if bridge.mtu > mtu
                                                            else []) + over)
        yield Finding("mtu", f"larger than the pods' MTU {mtu}: {names}",
                      "pods made before an MTU change keep the old one: big packets between "
                      "them and the tunnel are dropped",
                      "recreate those pods (their ADD sets the current MTU)")


def check_forwarding(node: Node, ipr: IPRoute) -> Iterator[Finding]:
    if node.sysctl("net.ipv4.ip_forward") == "0":
        yield Finding("ip-forward", "net.ipv4.ip_forward is 0",
                      "the node does not route: pods reach nothing beyond their bridge",
                      "sysctl -w net.ipv4.ip_forward=1 (tartand sets it at start)")
    tables = _filter_tables()
    for backend, live in tables.items():
        policy = live.policies.get("FORWARD")
        jumps = live.jumps_to(FORWARD_CHAIN) if FORWARD_CHAIN in live.chains else []
        if policy == "DROP" and not jumps:
            yield Finding("forward-drop", f"FORWARD's policy is DROP (iptables-{backend}) and "
                          f"no rule jumps to {FORWARD_CHAIN}",
                          "another component (docker, a firewall) set the policy; pod traffic "
                          "between nodes is dropped",
                          "restart tartand (it adds its FORWARD accepts), or accept the "
                          "cluster network in FORWARD")
    legacy, nft = tables.get("legacy"), tables.get("nft")
    if legacy is not None and nft is not None and _rules(legacy) and _rules(nft):
        yield Finding("iptables-split", "rules in both iptables-legacy and nf_tables",
                      "two iptables backends both filter: a packet must pass both, and each "
                      "tool shows only its own rules",
                      "make every component use one backend (update-alternatives --config "
                      "iptables), then remove the other's rules")


def check_bridge_netfilter(node: Node, ipr: IPRoute) -> Iterator[Finding]:
    live = _filter_tables().get(_host_backend())
    if live is None or not any(name.startswith("TARTAN-NP") and name not in (
            "TARTAN-NP-FWD", "TARTAN-NP-IN", "TARTAN-NP-OUT") for name in live.chains):
        return  # no pod is isolated here
    value = node.sysctl("net.bridge.bridge-nf-call-iptables")
    if value != "1":
        state = "br_netfilter is not loaded" if value is None else "bridge-nf-call-iptables is 0"
        yield Finding("bridge-netfilter", f"{state} while NetworkPolicy isolates pods here",
                      "traffic between pods of this node is bridged past iptables: policy "
                      "does not hold between them",
                      "modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1")


def check_conntrack(node: Node, ipr: IPRoute) -> Iterator[Finding]:
    count, limit = (node.sysctl("net.netfilter.nf_conntrack_count"),
                    node.sysctl("net.netfilter.nf_conntrack_max"))
    if count and limit and int(limit) and int(count) >= CONNTRACK_FULL * int(limit):
        yield Finding("conntrack", f"conntrack table at {count} of {limit} entries",
                      "new connections are dropped when it is full (\"nf_conntrack: table "
                      "full, dropping packet\" in dmesg)",
                      "raise net.netfilter.nf_conntrack_max, or find what opens so many flows")


def check_cni_config(node: Node, ipr: IPRoute) -> Iterator[Finding]:
    files = config_files(node.conf_dir)
    if not files:
        yield Finding("cni-config", f"no network config in {node.conf_dir}",
                      "the runtime has no network to give pods", "make install writes "
                      "10-tartan.conflist; or copy packaging/10-tartan.conflist there")
        return
    first = files[0]
    ours = node.network.source
    if str(first) != ours:
        yield Finding("cni-config", f"{first.name} sorts before Tartan's config "
                      f"({Path(ours).name if ours.startswith('/') else 'none found'})",
                      "the runtime uses the first config by name: pods get that network",
                      f"remove {first} (left by another CNI), or rename Tartan's to sort first")


def check_reservations(node: Node, ipr: IPRoute) -> Iterator[Finding]:
    folder = Path(node.network.ipam_dir)
    if not folder.is_dir():
        return
    held = _addresses_in_namespaces()
    for network in sorted(p for p in folder.iterdir() if p.is_dir()):
        leaked = []
        for entry in sorted(network.iterdir()):
            with contextlib.suppress(ValueError):
                if str(ipaddress.ip_address(entry.name)) not in held:
                    leaked.append(entry.name)
        if leaked:
            yield Finding("ipam-leak", f"{len(leaked)} address(es) reserved in {network} with no "
                          f"pod holding them: {', '.join(leaked[:5])}"
                          f"{' ...' if len(leaked) > 5 else ''}",
                          "a DEL never came (the runtime or the node crashed): the addresses "
                          "are lost to new pods", "tartanctl reset on an empty node, or remove "
                          "the files of addresses no pod has (the runtime's GC does it too)")


CHECKS: tuple[tuple[str, Check], ...] = (
    ("tartand", check_tartand), ("lease", check_lease), ("bridge", check_bridge),
    ("mtu", check_mtu), ("forwarding", check_forwarding),
    ("bridge-netfilter", check_bridge_netfilter), ("conntrack", check_conntrack),
    ("cni-config", check_cni_config), ("reservations", check_reservations),
    ("rp-filter", doctor_datapath.check_rp_filter), ("ipsets", doctor_datapath.check_ipsets),
    ("tunnel-checksum", doctor_datapath.check_tunnel_checksum),
)


# -- what the checks share --------------------------------------------------------------


def _host_backend() -> str:
    from tartan.kernel.iptables_backend import host_backend

    return host_backend()


def _filter_tables() -> dict[str, LiveTable]:
    out = {}
    for backend in BACKENDS:
        with contextlib.suppress(TartanError, OSError):
            out[backend] = Iptables(4, backend=backend).read("filter")
    return out


def _rules(live: LiveTable) -> int:
    return sum(len(rules) for rules in live.chains.values())


def _addresses_in_namespaces() -> set[str]:
    """Every address of every network namespace a runtime made (and of this one)."""
    from tartan.kernel.netns import netlink

    held: set[str] = set()
    for path in [None, *runtime_namespaces()]:
        with contextlib.suppress(OSError, TartanError):
            ipr = netlink(path)
            try:
                held |= {str(a.get("IFA_ADDRESS")) for a in ipr.get_addr()}
            finally:
                ipr.close()
    return held


# -- the command --------------------------------------------------------------------------


def diagnose(node: Node, only: set[str] | None = None) -> list[Finding]:
    findings: list[Finding] = []
    with contextlib.closing(IPRoute()) as ipr:
        for name, check in CHECKS:
            if only and name not in only:
                continue
            try:
                findings += list(check(node, ipr))
            except (TartanError, OSError) as exc:
                findings.append(Finding(name, f"the check could not look: {exc}",
                                        "see the message", "run doctor as root on the node"))
    return findings


def register(sub: argparse._SubParsersAction) -> None:
    from tartan.backends.agent import add_store_flags

    p = sub.add_parser("doctor", help="check this node; each problem with its cause and fix",
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--cni-conf-dir", default=CNI_CONF_DIR)
    p.add_argument("--subnet-file", help="default: the one Tartan's network config names")
    p.add_argument("--no-store", action="store_true",
                   help="skip the checks that read the store (leases, pods)")
    p.add_argument("--node-name", default=os.uname().nodename,
                   help="this node's name, as tartand's --node-name (its pods' records)")
    p.add_argument("--check", action="append", choices=[name for name, _ in CHECKS],
                   help="run only this check (repeatable)")
    add_store_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    network = find_network(args.cni_conf_dir)
    path = args.subnet_file or network.subnet_file
    try:
        env, env_error = subnet_env.read(path), ""
    except TartanError as exc:
        env, env_error = None, str(exc)
    node = Node(network, args.cni_conf_dir, env, env_error, None if args.no_store else args,
                name=args.node_name)
    started = time.monotonic()
    findings = diagnose(node, set(args.check or ()))
    took = time.monotonic() - started
    if args.output == "json":
        print(json.dumps({"problems": [asdict(f) for f in findings], "seconds": round(took, 2),
                          "checks": [name for name, _ in CHECKS
                                     if not args.check or name in args.check]}, indent=2))
    else:
        for f in findings:
            print(f"✗ {f.check}: {f.problem}\n    cause: {f.cause}\n    fix:   {f.fix}")
        print(f"doctor: {len(findings)} problem(s) found in {took:.1f}s" if findings
              else f"doctor: no problem found ({len(CHECKS)} checks, {took:.1f}s)")
    return 1 if findings else 0
