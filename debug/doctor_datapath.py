"""doctor's checks of what the kernel does with pod packets in flight: reverse-path filtering
against the routes back to the peers, NetworkPolicy's ipsets against the pods, and the
signature of the VXLAN checksum-offload bug on the tunnel port."""

from __future__ import annotations

import contextlib
import dataclasses
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import IPRoute

from tartan.backends.routes import PROTO_TARTAN
from tartan.backends.vxlan import find_device
from tartan.debug.doctor_base import Finding, Node
from tartan.kernel import link, route
from tartan.kernel.errors import TartanError

CHECKSUM_WINDOW = 1.0  # seconds the tunnel port is watched once bad checksums were counted
SHOWN = 5  # members or subnets named in one finding


def check_rp_filter(node: Node, ipr: IPRoute) -> Iterator[Finding]:
    """A peer's pod traffic arrives on the VXLAN device (host-gw: the uplink that routes to
    the peer). With strict rp_filter the kernel drops it unless the route back to the peer's
    subnet leaves by that same device: a route lost, or another component's more specific
    route, makes a working path fail on arrival only."""
    if node.env is None or node.store_args is None:
        return
    try:
        peers = [lease for lease in node.leases() if lease.subnet != node.env.subnet.network]
    except Exception:  # the lease check reports an unreadable store
        return
    tagged = {r.dst: r.oif for r in route.by_protocol(ipr, PROTO_TARTAN, socket.AF_INET)}
    vxlan = find_device(link.all_links(ipr))
    wrong: dict[str, list[str]] = {}
    for peer in peers:
        arrives = tagged.get(str(peer.subnet)) or (vxlan.index if vxlan else 0)
        if not arrives:
            continue
        device = link.by_index(ipr, arrives)
        if node.rp_filter(device.name) != 1:
            continue
        back = route.output_device(ipr, str(peer.subnet.network_address + 1))
        if back != arrives:
            leaves = link.by_index(ipr, back).name if back else "nowhere"
            wrong.setdefault(device.name, []).append(f"{peer.subnet} (leaves by {leaves})")
    for name, subnets in sorted(wrong.items()):
        yield Finding("rp-filter", f"strict rp_filter on {name}, but the route back to "
                      f"{', '.join(subnets[:SHOWN])}{' ...' if len(subnets) > SHOWN else ''} "
                      f"does not use {name}",
                      "the kernel drops what those peers' pods send as it arrives (strict "
                      "reverse-path filtering), with no rule or log saying so",
                      f"sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{name}.rp_filter=2"
                      " (loose), or restore tartand's routes (restart it)")


def check_ipsets(node: Node, ipr: IPRoute) -> Iterator[Finding]:
    """The members of NetworkPolicy's sets against what the store's pods, namespaces and
    policies make of them for this node (as tartand's enforcer compiles them)."""
    if node.store_args is None:
        return
    from tartan.backends.agent import open_store
    from tartan.backends.policy import node_addresses
    from tartan.kernel.ipset import Ipsets
    from tartan.netpol.compiler import SET_PREFIX, compile_node
    from tartan.netpol.source import StoreSource

    try:
        live = Ipsets(prefix=SET_PREFIX).read()
    except (TartanError, OSError):
        return  # no ipset here: the policy checks say what that means
    try:
        store = open_store(node.store_args)
        try:
            cluster = StoreSource(store).snapshot().cluster
        finally:
            store.close()
    except Exception:  # the lease check reports an unreadable store
        return
    compiled = compile_node(cluster, node.name, node_addresses())
    for want in sorted(compiled.sets, key=lambda s: s.name):
        have = live.get(want.name)
        if have is None:
            yield Finding("ipsets", f"ipset {want.name} ({want.comment}) is missing",
                          "the rules that match on it fail to load or match nothing: policy "
                          "does not hold as written", "restart tartand (its sync makes it)")
            continue
        lacks = sorted(want.members - set(have.entries))
        extra = sorted(set(have.entries) - want.members)
        if lacks or extra:
            parts = ([f"lacks {_few(lacks)}"] if lacks else []) + (
                [f"has {_few(extra)} that no pod explains"] if extra else [])
            yield Finding("ipsets", f"ipset {want.name} ({want.comment}) {' and '.join(parts)}",
                          "the set is out of step with the pods: traffic a policy allows is "
                          "dropped, or traffic it denies is let through",
                          "restart tartand (its full sync refills the set); if it comes back, "
                          "check tartand's log for sync failures")


def check_tunnel_checksum(node: Node, ipr: IPRoute) -> Iterator[Finding]:
    """The VXLAN checksum-offload bug (kubernetes#88986, flannel#1279): a sender's kernel
    puts a wrong UDP checksum on tunnel packets (seen with NAT'd traffic and offload on the
    VXLAN device), and the receiver drops them, counted in Udp InCsumErrors. Only when that
    counter is not zero is the tunnel port watched, for `CHECKSUM_WINDOW` seconds."""
    vxlan = find_device(link.all_links(ipr))
    if vxlan is None or not (before := udp_checksum_errors()):
        return
    from tartan.debug import capture, capture_hops
    from tartan.debug.bpf import compile_filter
    from tartan.debug.capture_decode import udp_checksum_bad

    uplinks = capture_hops.node_hops(node.name, None, wanted=("uplink",))
    if not uplinks:
        return
    port = uplinks[0].vxlan_port
    hop = dataclasses.replace(uplinks[0], vxlan_port=0)  # the outer packet is looked at
    senders: dict[str, int] = {}
    sock = capture.open_socket(hop, compile_filter(f"udp dst port {port}"))
    try:
        deadline = time.monotonic() + CHECKSUM_WINDOW
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            with contextlib.suppress(BlockingIOError):
                frame, address = sock.recvfrom(capture.SNAPLEN)
                packet = frame[14:]
                if address[2] != capture.PACKET_OUTGOING and udp_checksum_bad(packet):
                    sender = socket.inet_ntoa(packet[12:16])
                    senders[sender] = senders.get(sender, 0) + 1
    finally:
        sock.close()
    counted = (udp_checksum_errors() or before) - before
    if senders and counted:
        who = ", ".join(f"{ip} ({n})" for ip, n in sorted(senders.items()))
        yield Finding("tunnel-checksum", f"VXLAN packets to port {port} on {hop.ifname} arrive "
                      f"with bad UDP checksums from {who} in {CHECKSUM_WINDOW:.0f} s; the "
                      f"kernel counted {counted} (Udp InCsumErrors)",
                      "the VXLAN checksum-offload bug on the sending node: the receiver drops "
                      "those packets, so connections through the tunnel stall or take a "
                      "minute to open",
                      f"on the sending node(s): ethtool -K {vxlan.name} tx-checksum-ip-generic "
                      "off (or a kernel with the fix)")


def udp_checksum_errors(snmp: Path = Path("/proc/net/snmp")) -> int:
    """Udp InCsumErrors of this network namespace (0: none, or not readable)."""
    try:
        lines = [line.split() for line in snmp.read_text().splitlines()
                 if line.startswith("Udp:")]
    except OSError:
        return 0
    if len(lines) < 2 or "InCsumErrors" not in lines[0]:
        return 0
    return int(lines[1][lines[0].index("InCsumErrors")])


def _few(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more"
                                       if len(items) > SHOWN else "")

