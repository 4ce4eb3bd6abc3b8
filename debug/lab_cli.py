"""`tartanctl lab ...`: the subcommands' flags and what each one runs."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from collections.abc import Callable

from tartan.debug import capture_cli, lab_demo, lab_policy_cli
from tartan.debug import lab_plan as plan
from tartan.debug import lab_views as views
from tartan.debug.lab import Lab, UpOptions
from tartan.debug.lab_sys import LabError, in_node


def say(line: str) -> None:
    print(line, flush=True)


def _up_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--backend", choices=sorted(plan.BACKENDS), default="vxlan")
    p.add_argument("--store", choices=plan.STORES, default="sqlite")
    p.add_argument("--segments", type=int, default=0,
                   help="L2 segments (default 1 for host-gw, 2 otherwise)")
    p.add_argument("--pods-per-node", type=int, default=2)
    p.add_argument("--reconcile-interval", type=float, default=5.0,
                   help="tartand's --reconcile-interval on every node (seconds)")
    p.add_argument("--ready-timeout", type=float, default=60.0,
                   help="seconds to wait for every node's /readyz")
    p.add_argument("--big-tcp", action="store_true",
                   help="underlay links take 192 KiB IPv4 packets (gso_ipv4_max_size), as a "
                        "NIC with BIG TCP enabled would; host-gw pods then use it too")


def _options(args: argparse.Namespace) -> UpOptions:
    return UpOptions(args.backend, args.store, args.nodes, args.segments, args.pods_per_node,
                     args.reconcile_interval, args.ready_timeout, args.big_tcp)


def cmd_up(lab: Lab, args: argparse.Namespace) -> int:
    try:
        lab.up(_options(args))
    except LabError as exc:
        error(args, exc)
        if lab.made_something:
            say(f"the lab is left as it is for a look; remove it with "
                f"`tartanctl lab down --name {lab.name}`")
        return 1
    return 0


def cmd_down(lab: Lab, args: argparse.Namespace) -> int:
    return 1 if lab.down() else 0


def cmd_join(lab: Lab, args: argparse.Namespace) -> int:
    lab.join(args.ready_timeout)
    return 0


def cmd_leave(lab: Lab, args: argparse.Namespace) -> int:
    lab.leave(args.node)
    return 0


def cmd_restart(lab: Lab, args: argparse.Namespace) -> int:
    lab.restart(args.node, args.ready_timeout)
    return 0


def cmd_status(lab: Lab, args: argparse.Namespace) -> int:
    return 0 if views.show_status(lab, say) else 1


def cmd_pods(lab: Lab, args: argparse.Namespace) -> int:
    views.show_pods(lab, say, args.output)
    return 0


def cmd_ping_matrix(lab: Lab, args: argparse.Namespace) -> int:
    return 0 if views.ping_matrix(lab, say) else 1


def cmd_doctor(lab: Lab, args: argparse.Namespace) -> int:
    """`tartanctl doctor` inside the node (its network and mount namespaces, its store)."""
    state = lab.load()
    node = state.node(args.node)
    if node is None:
        raise LabError(f"lab {lab.name} has no node {args.node}: use one of "
                       f"{', '.join(n.name for n in state.nodes)}")
    argv = lab_demo.doctor_argv(lab, node, *args.doctor_args)
    return subprocess.run(in_node(node.holder_pid, argv), check=False).returncode


def cmd_demo(lab: Lab, args: argparse.Namespace) -> int:
    """up, status, ping-matrix, NetworkPolicy applied and probed, and always down: `make
    demo` in one command."""
    ok = False
    try:
        lab.up(_options(args))
        say("---- tartanctl lab status")
        views.show_status(lab, say)
        say("---- tartanctl lab ping-matrix")
        ok = views.ping_matrix(lab, say)
        ok = lab_demo.show(lab, say) and ok
        ok = lab_demo.show_trace(lab, say) and ok
        ok = lab_demo.show_hostport(lab, say) and ok
        ok = lab_demo.show_capture(lab, say) and ok
        ok = lab_demo.show_doctor(lab, say) and ok
    except LabError as exc:
        error(args, exc)
    finally:
        say("---- tartanctl lab down")
        clean = not lab.down()
    say("lab demo: " + ("done" if ok and clean else "FAILED"))
    return 0 if ok and clean else 1


COMMANDS: dict[str, tuple[Callable, str]] = {
    "up": (cmd_up, "start a lab: router, segments, nodes, store, tartand, pods"),
    "down": (cmd_down, "remove everything of the lab (idempotent, also after a crash)"),
    "status": (cmd_status, "nodes' readiness and the store's leases"),
    "pods": (cmd_pods, "the lab's pods with their node and address"),
    "ping-matrix": (cmd_ping_matrix, "ping every pod from every pod"),
    "join": (cmd_join, "add one node (with its pods)"),
    "leave": (cmd_leave, "remove one node: tartand, pods, lease, namespaces"),
    "restart": (cmd_restart, "restart one node's tartand (its datapath stays)"),
    "demo": (cmd_demo, "up, status, ping-matrix, a policy applied and probed and traced, a "
                       "capture, doctor, then always down"),
    "doctor": (cmd_doctor, "run tartanctl doctor on one node (its namespaces and store)"),
    "trace": (capture_cli.cmd_lab_trace, "follow one probe hop by hop: delivered, or where "
              "it vanished and why (the rule, the policy)"),
    **lab_policy_cli.COMMANDS,
    "capture": (capture_cli.cmd_lab_capture, "capture a pod's packets on every hop of its "
                "path (and its peer's), VXLAN decoded"),
}


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="a multi-node cluster in namespaces on this machine")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)
    for name, (handler, text) in COMMANDS.items():
        p = lab_sub.add_parser(name, help=text, description=text)
        p.add_argument("--name", default=plan.DEFAULT_NAME,
                       help=f"the lab's name (default {plan.DEFAULT_NAME})")
        if name in ("up", "demo"):
            _up_flags(p)
        if name in ("join", "restart"):
            p.add_argument("--ready-timeout", type=float, default=60.0)
        if name in ("leave", "restart", "doctor"):
            p.add_argument("node", help="node name, e.g. node2")
        if name == "doctor":
            p.add_argument("doctor_args", nargs=argparse.REMAINDER,
                           help="tartanctl doctor's flags (-o json, --check NAME)")
        if name == "pods":
            p.add_argument("-o", "--output", choices=("table", "json"), default="table")
        lab_policy_cli.add_flags(name, p)
        if name == "capture":
            capture_cli.add_flags(p)
        if name == "trace":
            capture_cli.add_trace_flags(p)
        p.set_defaults(run=run, handler=handler)


def error(args: argparse.Namespace, exc: Exception) -> None:
    print(f"tartanctl lab {args.lab_command}: error: {exc}", file=sys.stderr, flush=True)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Runs the chosen handler; a LabError or a bad option is one error line, exit 1."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.handler(Lab(args.name), args)
    except (LabError, plan.PlanError) as exc:
        error(args, exc)
        return 1
    except KeyboardInterrupt:
        print(f"tartanctl lab {args.lab_command}: interrupted", file=sys.stderr, flush=True)
        return 130
