"""`tartanctl lab apply|delete|probe|probe-matrix`: NetworkPolicy in the lab, for real.

    apply -f FILE|-         Namespaces, Pods, NetworkPolicies into the lab's store; Pods made
    delete -f FILE|- / TYPE NAME...   Pods' sandboxes removed, then the objects
    probe NS/POD NS/POD --port P --protocol tcp|udp   one connection; exit 1 when denied
    probe-matrix [--ports 80,81] [--protocols tcp,udp] [-o json]   every pod to every pod,
                            beside `policy explain` of the store; exit 1 when a cell differs
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from tartan.debug import lab_objects, lab_probe
from tartan.debug.lab import Lab
from tartan.debug.lab_probe import Matrix, Outcome
from tartan.debug.lab_state import Pod
from tartan.debug.lab_sys import LabError
from tartan.debug.policy_cli import port, ports, protocol, protocols
from tartan.netpol.explain import DENIED, mark, render_diff, to_json
from tartan.netpol.model import Protocol

NOT_PROBED = "-"


def out(line: str) -> None:
    print(line, flush=True)


def erring(command: str) -> Callable[[str], None]:
    def err(line: str) -> None:
        print(f"tartanctl lab {command}: {line}", file=sys.stderr, flush=True)

    return err


def cmd_apply(lab: Lab, args: argparse.Namespace) -> int:
    return lab_objects.apply(lab, args.filename, sys.stdin, out, erring("apply"))


def cmd_delete(lab: Lab, args: argparse.Namespace) -> int:
    wanted, problems = lab_objects.targets(args.filename or [], args.names, args.namespace,
                                           sys.stdin)
    err = erring("delete")
    for line in problems:
        err(line)
    ok = lab_objects.delete(lab, wanted, args.ignore_not_found, out, err)
    return 0 if ok and not problems else 1


# -- probe ----------------------------------------------------------------------------


def source_ports(lab: Lab, count: int) -> lab_probe.SourcePorts:
    """`count` UDP source ports not used by the lab's recent probes."""
    return lab_probe.SourcePorts(lab.dir / "udp-probe-port", count)


def outcome_text(outcome: Outcome) -> str:
    word = "allowed" if outcome.allowed else "denied"
    answer = f"; reply from {outcome.answer}" if outcome.answer else ""
    return f"{word} ({outcome.reason}{answer})"


def cmd_probe(lab: Lab, args: argparse.Namespace) -> int:
    state = lab.load()
    src, dst = lab_probe.find(state, args.src), lab_probe.find(state, args.dst)
    outcome = lab_probe.probe(src, dst, args.port, args.protocol,
                              source_ports=source_ports(lab, lab_probe.TRIES))
    flow = f"{src.key} -> {dst.key} {args.port}/{args.protocol.value}"
    if args.output == "json":
        out(json.dumps({"from": src.key, "to": dst.key, "port": args.port,
                        "protocol": args.protocol.value, "allowed": outcome.allowed,
                        "reason": outcome.reason, "answer": outcome.answer}, indent=2))
    else:
        out(f"{flow}: {outcome_text(outcome)}")
        out(_model_line(lab, src, dst, args.port, args.protocol))
    return 0 if outcome.allowed else 1


def _model_line(lab: Lab, src: Pod, dst: Pod, number: int, proto: Protocol) -> str:
    """What `policy explain` of the lab's store says about the same connection."""
    objects = lab_objects.stored_objects(lab, lab.load())
    table, problems, _ = lab_probe.expected(objects, [src, dst], [number], [proto])
    if problems:
        return "policy explain: cannot tell: " + "; ".join(problems)
    cell = table.cell(src.key, dst.key, number, proto)
    word = "allowed" if cell.allowed else "denied"
    return f"policy explain: {word} ({', '.join(cell.verdict.by) or 'no policy isolates them'})"


# -- probe-matrix ---------------------------------------------------------------------


def run_matrix(lab: Lab, ports: tuple[int, ...], protocols: tuple[Protocol, ...],
               workers: int) -> Matrix:
    state = lab.load()
    pods, others = lab_probe.serving(state)
    if len(pods) < 2:
        raise LabError(f"lab {lab.name} has {len(pods)} pod(s) with ports: apply Pods with "
                       "containers[].ports first (`tartanctl lab apply -f`)")
    start = time.monotonic()
    udp_attempts = lab_probe.TRIES * len(lab_probe.flows(pods, ports, (Protocol.UDP,)))
    next_port = source_ports(lab, udp_attempts if Protocol.UDP in protocols else 0)
    observed = lab_probe.probe_all(pods, ports, protocols, workers, functools.partial(
        lab_probe.probe, source_ports=next_port))
    took = time.monotonic() - start
    table, problems, notes = lab_probe.expected(lab_objects.stored_objects(lab, state), pods,
                                                ports, protocols)
    if others:
        notes.append("left out (no ports, made by `up`): " + ", ".join(p.key for p in others))
    return Matrix([p.key for p in pods], ports, protocols, observed, table, problems, notes,
                  took)


def observed_grids(m: Matrix) -> str:
    """The e2e TruthTable layout, one grid per port/protocol: rows from, columns to."""
    blocks = []
    for number in m.ports:
        for proto in m.protocols:
            lines = [f"{number}/{proto.value}", "\t".join(["-", *m.pods])]
            for src in m.pods:
                row = [_observed_mark(m.observed.get((src, dst, number, proto)))
                       for dst in m.pods]
                lines.append("\t".join([src, *row]))
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _observed_mark(outcome: Outcome | None) -> str:
    return NOT_PROBED if outcome is None else mark(outcome.allowed)


def render(m: Matrix, workers: int) -> str:
    grids = ", ".join(f"{n}/{p.value}" for n in m.ports for p in m.protocols)
    differ = m.differences()
    parts = [f"probe-matrix: {len(m.pods)} pods, {len(m.observed)} connections ({grids}), "
             f"{workers} at a time, {m.seconds:.1f}s",
             *m.notes, "",
             f"observed (rows from, columns to; . allowed, {DENIED} denied, {NOT_PROBED} "
             "not probed):", observed_grids(m),
             *(["expected (`policy explain` of the lab's store), the differences marked:",
                render_diff(m.expected, m.seen())] if differ else
               ["expected (`policy explain` of the lab's store): every observed cell agrees"]),
             *m.problems]
    verdict_line = (f"probe-matrix: {len(differ)} of {len(m.seen())} connections differ from "
                    "the model" if differ else
                    f"probe-matrix: all {len(m.seen())} connections agree with the model")
    return "\n".join([*parts, verdict_line]) + "\n"


def matrix_json(m: Matrix) -> dict[str, Any]:
    return {
        "pods": m.pods, "ports": list(m.ports), "protocols": [p.value for p in m.protocols],
        "seconds": round(m.seconds, 2),
        "observed": [{"from": s, "to": d, "port": n, "protocol": p.value,
                      "allowed": o.allowed, "reason": o.reason, "answer": o.answer}
                     for (s, d, n, p), o in m.observed.items()],
        "expected": to_json(m.expected),
        "differences": [{"from": c.src, "to": c.dst, "port": c.port,
                         "protocol": c.protocol.value, "expected": c.allowed,
                         "observed": not c.allowed, "by": list(c.verdict.by),
                         "reason": seen.reason, "answer": seen.answer}
                        for c in m.differences()
                        for seen in [m.observed[(c.src, c.dst, c.port, c.protocol)]]],
        "problems": m.problems, "notes": m.notes, "ok": m.ok,
    }


def cmd_probe_matrix(lab: Lab, args: argparse.Namespace) -> int:
    m = run_matrix(lab, args.ports, args.protocols, args.workers)
    sys.stdout.write(json.dumps(matrix_json(m), indent=2) + "\n" if args.output == "json"
                     else render(m, args.workers))
    return 0 if m.ok else 1


def add_flags(name: str, p: argparse.ArgumentParser) -> None:
    """The flags of this module's subcommands (lab_cli registers them)."""
    if name in ("apply", "delete"):
        p.add_argument("-f", "--filename", action="append", required=name == "apply",
                       metavar="FILE", help="a manifest, a directory of them, or - (stdin)")
    if name == "delete":
        p.add_argument("names", nargs="*", metavar="TYPE NAME", help="instead of -f")
        p.add_argument("-n", "--namespace", default="default")
        p.add_argument("--ignore-not-found", action="store_true")
    if name == "probe":
        p.add_argument("src", metavar="NS/POD")
        p.add_argument("dst", metavar="NS/POD")
        p.add_argument("--port", type=port, default=80)
        p.add_argument("--protocol", type=protocol, default=Protocol.TCP)
    if name == "probe-matrix":
        p.add_argument("--ports", type=ports, default=(80, 81),
                       help="comma-separated (default 80,81)")
        p.add_argument("--protocols", type=protocols, default=(Protocol.TCP, Protocol.UDP),
                       help="comma-separated (default tcp,udp)")
        p.add_argument("--workers", type=int, default=lab_probe.WORKERS,
                       help=f"probes at a time (default {lab_probe.WORKERS})")
    if name in ("probe", "probe-matrix"):
        p.add_argument("-o", "--output", choices=("table", "json"), default="table")


COMMANDS = {
    "apply": (cmd_apply, "Namespaces, Pods, NetworkPolicies into the lab; Pods made for real"),
    "delete": (cmd_delete, "remove objects from the lab (Pods: sandbox and listener too)"),
    "probe": (cmd_probe, "connect from one pod to another for real: allowed or denied"),
    "probe-matrix": (cmd_probe_matrix, "probe every pod to every pod, beside policy explain"),
}
