"""`tartanctl policy explain`: who may connect to whom, from manifests alone.

No cluster and no store: the Namespaces, Pods (their labels, IPs and ports) and
NetworkPolicies of the files are the whole world. Without --from/--to it prints the truth
table (netpol.explain: one grid per port/protocol, `.` allowed, `X` denied, rows from,
columns to); with them, one connection's verdict and what decided it, a line each. Invalid
objects are reported on stderr as `apply` reports them and left out (exit code 1).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Sequence
from typing import Any

from tartan.debug.kube import CtlError, edge
from tartan.netpol.explain import Endpoint, Side, Verdict, render, to_json, truth_table, verdict
from tartan.netpol.manifest import load_files
from tartan.netpol.model import Cluster, Pod, Protocol

PROG = "tartanctl policy explain"


def port(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return number


def protocol(text: str) -> Protocol:
    try:
        return Protocol(text.upper())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a protocol; use tcp, udp or sctp") from None


def ports(text: str) -> tuple[int, ...]:
    return tuple(port(part.strip()) for part in text.split(","))


def protocols(text: str) -> tuple[Protocol, ...]:
    return tuple(protocol(part.strip()) for part in text.split(","))


def endpoint(cluster: Cluster, text: str, flag: str) -> Endpoint:
    """A pod of the manifests (`ns/pod`, or `pod` in default) or an address outside."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    key = text if "/" in text else f"default/{text}"
    found = next((p for p in cluster.pods if p.key == key), None)
    if found is None:
        known = ", ".join(sorted(p.key for p in cluster.pods)) or "none"
        raise CtlError(f"{flag} {text}: no such pod in the manifests (pods: {known}); give "
                       "NS/POD or an IP address")
    return found


def _name(end: Endpoint) -> str:
    return end.key if isinstance(end, Pod) else str(end)


def flow_lines(src: Endpoint, dst: Endpoint, port: int, protocol: Protocol,
               result: Verdict) -> list[str]:
    """The verdict, then one line for each rule that allowed it, or for each policy that
    isolates a side and denied it."""
    word = "allowed" if result.allowed else "denied"
    lines = [f"{_name(src)} -> {_name(dst)} {port}/{protocol.value}: {word}"]
    lines += [f"{word} by {reason}" for reason in result.by]
    if not result.by:
        lines.append(f"no policy isolates {_name(src)} (egress) or {_name(dst)} (ingress)")
    return lines


def _side(side: Side) -> dict[str, Any]:
    return {"isolated": side.isolated, "allowed": side.allowed, "by": list(side.by)}


def flow_json(src: Endpoint, dst: Endpoint, port: int, protocol: Protocol,
              result: Verdict) -> dict[str, Any]:
    return {"from": _name(src), "to": _name(dst), "port": port, "protocol": protocol.value,
            "allowed": result.allowed, "by": list(result.by),
            "egress": _side(result.egress), "ingress": _side(result.ingress)}


def explain(cluster: Cluster, args: argparse.Namespace) -> str:
    if (args.src is None) != (args.dst is None):
        raise CtlError("give --from and --to together (or neither, for the whole table)", 2)
    if args.src is not None:
        src, dst = endpoint(cluster, args.src, "--from"), endpoint(cluster, args.dst, "--to")
        result = verdict(cluster, src, dst, args.port, args.protocol)
        if args.output == "json":
            return json.dumps(flow_json(src, dst, args.port, args.protocol, result),
                              indent=2) + "\n"
        return "\n".join(flow_lines(src, dst, args.port, args.protocol, result)) + "\n"
    table = truth_table(cluster, args.ports, args.protocols)
    if not table.pods:
        raise CtlError("no pods in the manifests: nothing to explain")
    return json.dumps(to_json(table), indent=2) + "\n" if args.output == "json" else (
        render(table))


def report(problems: Sequence[object]) -> None:
    for problem in problems:
        print(f"{PROG}: {problem}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    loaded = load_files(args.filename, sys.stdin)
    report([*loaded.errors, *loaded.unknown])
    sys.stdout.write(explain(loaded.cluster(), args))
    return 1 if loaded.errors or loaded.unknown else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="NetworkPolicy: explain who may connect to whom")
    tools = p.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    e = tools.add_parser("explain", help="the truth table of manifests, or one connection")
    e.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                   help="a manifest (YAML or JSON), a directory of them, or -; repeatable")
    e.add_argument("--ports", type=ports, default=(80, 81),
                   help="ports of the table, comma-separated (default 80,81)")
    e.add_argument("--protocols", type=protocols, default=(Protocol.TCP, Protocol.UDP),
                   help="protocols of the table, comma-separated (default tcp,udp)")
    e.add_argument("-o", "--output", choices=("table", "json"), default="table")
    e.add_argument("--from", dest="src", metavar="NS/POD|IP", help="one connection's source")
    e.add_argument("--to", dest="dst", metavar="NS/POD|IP", help="its destination")
    e.add_argument("--port", type=port, default=80, help="its port (default 80)")
    e.add_argument("--protocol", type=protocol, default=Protocol.TCP,
                   help="its protocol (default tcp)")
    e.set_defaults(run=edge(PROG)(run))
