"""`tartanctl capture` (on a node) and `tartanctl lab capture` (in the lab).

    capture NS/POD [--to NS/POD|IP] [--hops pod,veth,bridge,vxlan,uplink] [-w FILE.pcapng]
            [--count N] [--duration S] [FILTER...]

Every hop of the pod's path at once (capture_hops.py says which), and with `--to` the same
hops on the destination's node. One line per packet on stdout; `-w` writes all of them to one
pcapng with an interface per hop, named `node/hop`. FILTER is tcpdump's syntax, applied to
the pod's own frame (inside VXLAN, on the hops that carry it).

On a node, a pod is found by its record in the store (the addresses its ADD got) and the
network namespace that holds one of them (in /run/netns or /var/run/netns, where runtimes
put them), or given with `--netns`; `--to` then adds the hops on this node only (the
destination's node is another machine: run capture there too). In the lab every node is
here: `lab capture` listens on both nodes' hops.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import sys
from collections.abc import Iterator
from typing import BinaryIO

from tartan.debug import bpf, capture_hops
from tartan.debug.capture_hops import Hop, HopError
from tartan.debug.lab import Lab
from tartan.debug.lab_probe import find
from tartan.debug.lab_sys import LabError, netns_path
from tartan.debug.node import RUNTIME_NETNS_DIRS, runtime_namespaces
from tartan.kernel.errors import Gone, TartanError
from tartan.kernel.iptables import BACKENDS
from tartan.kernel.netns import netlink


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("pod", metavar="NS/POD", help="the pod whose path to capture")
    p.add_argument("--to", metavar="NS/POD|IP",
                   help="also the destination's hops (its node's, in the lab)")
    p.add_argument("--hops", type=_hops, default=capture_hops.HOPS,
                   help=f"which hops (default all: {','.join(capture_hops.HOPS)})")
    p.add_argument("-w", "--write", metavar="FILE.pcapng", help="write the packets here")
    p.add_argument("-c", "--count", type=int, default=0, help="stop after N packets")
    p.add_argument("--duration", type=float, default=0.0, help="stop after S seconds")
    p.add_argument("filter", nargs="*", metavar="FILTER",
                   help="tcpdump filter on the pod's own packets, e.g. icmp or tcp port 80")


def _hops(text: str) -> tuple[str, ...]:
    try:
        return capture_hops.parse_hops(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[BinaryIO | None]:
    if not path:
        yield None
        return
    with open(path, "wb") as stream:
        yield stream


def _capture(hops: list[Hop], args: argparse.Namespace) -> int:
    from tartan.debug import capture  # scapy's import takes half a second: only here

    expression = " ".join(args.filter)
    bpf.compile_filter(expression)  # a bad filter is one line, before anything listens
    bounds = [f"{args.count} packet(s)"] if args.count else []
    bounds += [f"{args.duration:g} s"] if args.duration else []
    with _output(args.write) as stream:
        summary = capture.run(
            hops, expression, lambda text: print(text, flush=True), stream, args.count,
            args.duration, ready=lambda: print(
                f"capture: listening on {', '.join(h.label for h in hops)} until "
                f"{' or '.join([*bounds, 'Ctrl-C'])}", file=sys.stderr, flush=True))
    dropped = sum(summary.dropped.values())
    note = f", {dropped} dropped by the kernel (capture too slow)" if dropped else ""
    where = f", written to {args.write}" if args.write else ""
    print(f"capture: {summary.packets} packet(s) on {len(hops)} hop(s){note}{where}",
          file=sys.stderr, flush=True)
    return 0


# -- in the lab -----------------------------------------------------------------------


def lab_hops(lab: Lab, args: argparse.Namespace) -> list[Hop]:
    state = lab.load()
    src = find(state, args.pod)
    node = state.node(src.node)
    assert node is not None
    dst = find(state, args.to) if args.to and "/" in args.to else None
    if args.to and dst is None and _address(args.to) is None:
        raise LabError(f"--to {args.to!r} is neither a pod (NS/POD) nor an IP address")
    towards = dst.ip if dst else args.to
    hops = capture_hops.pod_hops(node.name, netns_path(node.netns), src.key,
                                 netns_path(src.netns), towards=towards, wanted=args.hops)
    if dst is not None:
        far = state.node(dst.node)
        assert far is not None
        there = capture_hops.pod_hops(far.name, netns_path(far.netns), dst.key,
                                      netns_path(dst.netns), towards=src.ip, wanted=args.hops)
        if far.name == node.name:
            there = capture_hops.of_second_pod(there, dst.key)
        hops += list(reversed(there))
    return hops


def cmd_lab_capture(lab: Lab, args: argparse.Namespace) -> int:
    try:
        return _capture(lab_hops(lab, args), args)
    except (bpf.FilterError, TartanError, Gone, OSError, ValueError) as exc:
        raise LabError(str(exc)) from None


# -- on a node ------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    from tartan.backends.agent import add_store_flags

    p = sub.add_parser("capture", help="capture a pod's packets on every hop of its path",
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_flags(p)
    p.add_argument("--netns", help="the pod's network namespace (default: found by address)")
    p.add_argument("--ifname", default="eth0", help="the pod's interface (default eth0)")
    p.add_argument("--node-name", default=os.uname().nodename, help="this node's name")
    add_store_flags(p)
    p.set_defaults(run=run)
    t = sub.add_parser("trace", help="follow one probe from a pod hop by hop on this node: "
                       "delivered, or where it vanished and why (the rule, the policy)")
    add_trace_flags(t)
    t.add_argument("--node-name", default=os.uname().nodename, help="this node's name")
    add_store_flags(t)
    t.set_defaults(run=run_trace)


def run(args: argparse.Namespace) -> int:
    try:
        netns = args.netns or pod_netns(args)
        hops = capture_hops.pod_hops(args.node_name, None, args.pod, netns, args.ifname,
                                     towards=_address(args.to), wanted=args.hops)
        return _capture(hops, args)
    except (TartanError, Gone, bpf.FilterError, OSError, ValueError) as exc:
        print(f"tartanctl capture: {exc}", file=sys.stderr)
        return 1


def _address(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None  # a pod on another node: its hops are there


def pod_netns(args: argparse.Namespace) -> str:
    """The namespace holding the pod's recorded address, among the runtimes' ones."""
    records = _records(args)
    key = args.pod if "/" in args.pod else f"default/{args.pod}"
    record = records.get(key)
    if not record:
        raise ValueError(f"no record of pod {key} in the store (is it on a Tartan node, "
                         "created by kubelet?); give --netns")
    wanted = {str(ip) for ip in record.get("ips", [])}
    found = holding(wanted)
    if found is None:
        raise ValueError(f"no network namespace in {', '.join(map(str, RUNTIME_NETNS_DIRS))} "
                         f"holds {', '.join(sorted(wanted))} (pod {key}); give --netns")
    return found


def holding(addresses: set[str]) -> str | None:
    """The runtime namespace that has one of `addresses`."""
    for path in runtime_namespaces():
        with contextlib.suppress(OSError, TartanError, Gone):
            ipr = netlink(path)
            try:
                held = {str(a.get("IFA_ADDRESS")) for a in ipr.get_addr()}
            finally:
                ipr.close()
            if held & addresses:
                return path
    return None


# -- trace, in the lab ----------------------------------------------------------------------


def add_trace_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="NS/POD")
    p.add_argument("dst", metavar="NS/POD|IP")
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--protocol", choices=("tcp", "udp", "icmp"), default="tcp")
    p.add_argument("--size", type=int, default=0, metavar="BYTES",
                   help="the probe's IP packet length, sent with DF set (udp, icmp): finds "
                        "MTU trouble")
    p.add_argument("--iptables", choices=BACKENDS, default=None,
                   help="the iptables backend the nodes' rules are in (default: the host's)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")


def cmd_lab_trace(lab: Lab, args: argparse.Namespace) -> int:
    import json

    from tartan.debug import trace

    state = lab.load()
    src = find(state, args.src)
    dst = find(state, args.dst) if "/" in args.dst else None
    try:
        dst_ip = dst.ip if dst else str(ipaddress.ip_address(args.dst))
    except ValueError:
        raise LabError(f"{args.dst!r} is neither a pod (NS/POD) nor an IP address") from None
    here = state.node(src.node)
    assert here is not None
    try:
        src_hops = capture_hops.pod_hops(here.name, netns_path(here.netns), src.key,
                                         netns_path(src.netns), towards=dst_ip)
        nodes = [(here.name, netns_path(here.netns))]
        dst_hops: list[Hop] = []
        if dst is not None:
            there = state.node(dst.node)
            assert there is not None
            dst_hops = capture_hops.pod_hops(there.name, netns_path(there.netns), dst.key,
                                             netns_path(dst.netns), towards=src.ip)
            if there.name == here.name:  # one node: the bridge takes it from veth to veth
                src_hops = [h for h in src_hops if h.name in ("pod", "veth")]
                dst_hops = capture_hops.of_second_pod(dst_hops, dst.key)
            else:
                nodes.append((there.name, netns_path(there.netns)))
        probe = trace.new_probe(src.ip, dst_ip, args.protocol, args.port, args.size)
        port = "" if args.protocol == "icmp" else f" port {args.port}"
        flow = (f"{src.key} -> {dst.key if dst else dst_ip} {args.protocol}{port} "
                f"(probe from {src.ip}"
                f"{'' if args.protocol == 'icmp' else ':' + str(probe.source_port)}"
                f"{f', {probe.length} bytes DF' if args.size else ''})")
        result = trace.run(netns_path(src.netns), probe, src_hops, dst_hops, nodes, flow,
                           args.iptables)
    except (HopError, Gone, OSError, TartanError) as exc:
        raise LabError(str(exc)) from None
    sys.stdout.write(json.dumps(result.json(), indent=2) + "\n" if args.output == "json"
                     else trace.render(result))
    return 0 if result.delivered else 1


def run_trace(args: argparse.Namespace) -> int:
    """`tartanctl trace` on a node: the source pod's hops here, and the destination's when
    it is a pod of this node (else the probe is followed until it leaves the node)."""
    import json

    from tartan.debug import trace

    here = "/proc/self/ns/net"
    try:
        records = _records(args)
        src_ip, src_netns = _local_pod(records, args.src)
        if "/" in args.dst:
            dst_key = args.dst
            record = records.get(dst_key) or {}
            if not record.get("ips"):
                raise ValueError(f"no record of pod {dst_key} in the store")
            dst_ip = str(record["ips"][0])
        else:
            dst_key, dst_ip = args.dst, str(ipaddress.ip_address(args.dst))
        src_hops = capture_hops.pod_hops(args.node_name, None, args.src, src_netns,
                                         towards=dst_ip)
        dst_hops: list[Hop] = []
        if "/" in args.dst and records[dst_key].get("node") == args.node_name:
            _, dst_netns = _local_pod(records, dst_key)
            src_hops = [h for h in src_hops if h.name in ("pod", "veth")]
            dst_hops = capture_hops.of_second_pod(capture_hops.pod_hops(
                args.node_name, None, dst_key, dst_netns, towards=src_ip), dst_key)
        probe = trace.new_probe(src_ip, dst_ip, args.protocol, args.port, args.size)
        flow = f"{args.src} -> {dst_key} {args.protocol}" + (
            "" if args.protocol == "icmp" else f" port {args.port}") + (
            f" ({probe.length} bytes DF)" if args.size else "")
        result = trace.run(src_netns, probe, src_hops, dst_hops, [(args.node_name, here)], flow,
                           args.iptables)
        if not dst_hops and result.outcome in ("connected", "answered"):
            result.delivered = True  # it left this node and was answered
    except (TartanError, Gone, OSError, ValueError) as exc:
        print(f"tartanctl trace: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(result.json(), indent=2) + "\n" if args.output == "json"
                     else trace.render(result))
    return 0 if result.delivered else 1


def _records(args: argparse.Namespace) -> dict:
    from tartan.backends.agent import open_store

    store = open_store(args)
    try:
        return dict(store.list_objects()[0]["podips"])
    finally:
        store.close()


def _local_pod(records: dict, key: str) -> tuple[str, str]:
    """(address, namespace path) of a pod of this node, from its record."""
    record = records.get(key)
    if not record or not record.get("ips"):
        raise ValueError(f"no record of pod {key} in the store (is it on a Tartan node, "
                         "created by kubelet?)")
    wanted = {str(ip) for ip in record["ips"]}
    found = holding(wanted)
    if found is not None:
        return sorted(wanted)[0], found
    raise ValueError(f"pod {key} ({', '.join(sorted(wanted))}) is not on this node: no "
                     "network namespace here holds its address")
