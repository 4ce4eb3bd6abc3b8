"""tartand on every lab node: start it in the node's namespaces, wait for /readyz, stop it.

tartand runs in the node's network and mount namespaces (`nsenter --target <holder>`), so
its /run/tartan/subnet.env, /var/lib/tartan and 127.0.0.1:9808 are the node's own. Its
stderr (one structured line per event) goes to the node's tartand.log.
"""

from __future__ import annotations

import sys as _sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tartan.cni import subnet_env
from tartan.debug import lab_plan as plan
from tartan.debug.lab_http import Unreachable, json_in, request_in
from tartan.debug.lab_state import Node, node_dir, node_log, tail
from tartan.debug.lab_sys import LabError, Sys, alive, in_namespace, in_node, stop

VENV_BIN = Path(_sys.executable).parent


@dataclass
class AgentOptions:
    store_args: list[str]
    net_conf: Path
    reconcile_interval: float = 5.0
    tartand: Path = VENV_BIN / "tartand"


def tartand_argv(node: Node, opts: AgentOptions) -> list[str]:
    return [str(opts.tartand), *opts.store_args, "--net-config", str(opts.net_conf),
            "--iface", "eth0", "--public-ip", node.ip, "--ip-masq",
            "--node-name", node.name,  # the nodes share the host's hostname
            "--http-addr", plan.AGENT_HTTP,
            "--reconcile-interval", f"{opts.reconcile_interval:g}"]


def start(sys: Sys, lab: str, node: Node, opts: AgentOptions) -> int:
    log = node_log(lab, node.name)
    with open(log, "a") as out:
        out.write(f"# lab: {' '.join(tartand_argv(node, opts))}\n")
    return sys.spawn(in_node(node.holder_pid, tartand_argv(node, opts)), log=log)


def running(node: Node) -> bool:
    return alive(node.tartand_pid) and in_namespace(node.tartand_pid, node.netns)


def stop_agent(node: Node, grace: float = 10.0) -> None:
    if running(node):
        stop([node.tartand_pid], grace)


def ready(node: Node) -> bool:
    try:
        status, _ = request_in(node.netns, f"http://{plan.AGENT_HTTP}/readyz", timeout=1.0)
    except Unreachable:
        return False
    return status == 200


def status(node: Node) -> dict | None:
    """The node's GET /status, or None when its tartand does not answer."""
    try:
        return json_in(node.netns, f"http://{plan.AGENT_HTTP}/status")
    except (Unreachable, ValueError):
        return None


def wait_until(lab: str, nodes: list[Node], check: Callable[[Node], bool], what: str,
               say: Callable[[str], None], timeout: float) -> float:
    """Poll until check(node) holds for every node; the seconds it took. LabError naming
    the first node that did not get there (with the end of its log)."""
    start_time = time.monotonic()
    waiting, last_report = list(nodes), 0.0
    while True:
        _fail_if_exited(lab, waiting)
        waiting = [n for n in waiting if not check(n)]
        elapsed = time.monotonic() - start_time
        if not waiting:
            return elapsed
        if elapsed > timeout:
            raise LabError(_not_ready(lab, waiting[0], f"not {what} after {timeout:.0f}s"))
        if elapsed - last_report >= 5:
            say(f"  waiting for {', '.join(n.name for n in waiting)} ({elapsed:.0f}s)")
            last_report = elapsed
        time.sleep(0.2)


def wait_ready(lab: str, nodes: list[Node], say: Callable[[str], None],
               timeout: float = 60.0) -> None:
    """Until every node's /readyz is 200."""
    took = wait_until(lab, nodes, ready, "ready", say, timeout)
    say(f"  {len(nodes)} node(s) ready ({took:.1f}s)")


def leased_subnet(lab: str, node: Node) -> str | None:
    """The node's subnet from its subnet.env (there also while its tartand is stopped)."""
    subnet = subnet_env.previous_subnet(node_dir(lab, node.name) / "run-tartan" / "subnet.env")
    return str(subnet) if subnet else None


def knows_exactly(node: Node, subnets: set[str]) -> bool:
    """The node's /status lists every other subnet, each programmed (or skipped), no more."""
    doc = status(node) or {}
    peers = {p.get("subnet"): p.get("state") for p in doc.get("peers", [])}
    own = (doc.get("node") or {}).get("subnet")
    return (own is not None and set(peers) == subnets - {own}
            and all(state in ("programmed", "skipped") for state in peers.values()))


def wait_converged(lab: str, nodes: list[Node], say: Callable[[str], None],
                   timeout: float = 30.0) -> None:
    """Until every running node has programmed exactly the other nodes' subnets."""
    leased = {n.name: leased_subnet(lab, n) for n in nodes}
    subnets = {subnet for subnet in leased.values() if subnet is not None}
    if len(subnets) < len(leased):
        raise LabError("a node has no subnet.env: " + ", ".join(
            name for name, subnet in leased.items() if subnet is None))
    running_nodes = [n for n in nodes if running(n)]
    took = wait_until(lab, running_nodes, lambda n: knows_exactly(n, subnets), "converged",
                      say, timeout)
    say(f"  every node has its {len(nodes) - 1} peer(s) programmed ({took:.1f}s)")


def _fail_if_exited(lab: str, nodes: list[Node]) -> None:
    for node in nodes:
        if not alive(node.tartand_pid):
            raise LabError(_not_ready(lab, node, "tartand exited"))


def _not_ready(lab: str, node: Node, what: str) -> str:
    log = node_log(lab, node.name)
    lines = [f"{node.name}: {what}; the end of {log}:"]
    return "\n".join(lines + [f"    {line}" for line in tail(log)])
