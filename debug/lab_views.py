"""What `lab status`, `lab pods` and `lab ping-matrix` print."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from tartan.debug import lab_agents, lab_objects, lab_pods, lab_store
from tartan.debug.fmt import relative, table
from tartan.debug.lab import Lab
from tartan.debug.lab_state import LabState, Node, Pod
from tartan.debug.lab_sys import LabError


def node_row(node: Node, status: dict | None) -> list[object]:
    """name, address, segment, tartand, ready, subnet, peers programmed/total."""
    running = lab_agents.running(node)
    me = (status or {}).get("node", {})
    peers = (status or {}).get("peers", [])
    programmed = sum(1 for p in peers if p.get("state") == "programmed")
    return [node.name, node.ip, node.segment,
            f"pid {node.tartand_pid}" if running else "NOT RUNNING",
            "yes" if status and me.get("ready") else "NO",
            me.get("subnet"), f"{programmed}/{len(peers)}" if status else None]


def lease_rows(leases: list[lab_store.LeaseRow], ips: dict[str, str],
               now: float) -> list[list[object]]:
    return [[lease.subnet, lease.public_ip, ips.get(lease.public_ip, "(not in the lab)"),
             lease.backend, relative(lease.expires - now) if lease.expires else None]
            for lease in leases]


def show_status(lab: Lab, say: Callable[[str], None]) -> bool:
    """Nodes and their readiness, then the store's leases; True when every node is ready."""
    state = lab.load()
    say(f"lab {state.name}: backend {state.backend}, store {state.store}, "
        f"{state.segments} segment(s), {len(state.nodes)} nodes, {len(state.pods)} pods")
    statuses = {n.name: lab_agents.status(n) for n in state.nodes}
    rows = [node_row(n, statuses[n.name]) for n in state.nodes]
    for line in table(["NODE", "ADDRESS", "SEG", "TARTAND", "READY", "SUBNET", "PEERS"],
                      rows, "  "):
        say(line)
    _show_leases(lab, state, say)
    return all(row[4] == "yes" for row in rows)


def _show_leases(lab: Lab, state: LabState, say: Callable[[str], None]) -> None:
    try:
        leases = lab_store.leases(state.store, lab.name, lab.dir)
    except LabError as exc:
        say(f"leases: {exc}")
        return
    say(f"leases in the store ({len(leases)}):")
    ips = {n.ip: n.name for n in state.nodes}
    for line in table(["SUBNET", "PUBLIC IP", "NODE", "BACKEND", "EXPIRES"],
                      lease_rows(leases, ips, time.time()), "  "):
        say(line)


def pod_row(pod: Pod) -> list[object]:
    labels = ",".join(f"{k}={v}" for k, v in sorted(pod.labels.items())) or None
    ports = " ".join(f"{p['port']}/{p['protocol']}" for p in pod.ports) or None
    return [pod.namespace, pod.name, pod.node, pod.address, labels, ports, pod.netns,
            pod.container_id[:12]]


def show_pods(lab: Lab, say: Callable[[str], None], output: str = "table") -> None:
    """The lab's pods; `json`: namespace, name, node, IPs, labels, ports, netns path."""
    state = lab.load()
    if output == "json":
        say(json.dumps([lab_objects.summary(p) for p in state.pods], indent=2))
        return
    rows = [pod_row(p) for p in state.pods]
    for line in table(["NAMESPACE", "POD", "NODE", "ADDRESS", "LABELS", "PORTS", "NETNS",
                       "CONTAINER"], rows):
        say(line)


def ping_matrix(lab: Lab, say: Callable[[str], None]) -> bool:
    """Ping every pod from every pod; print the matrix; True when every pair answered."""
    state = lab.load()
    pods = [p for p in state.pods if p.address]
    if len(pods) < 2:
        raise LabError(f"lab {lab.name} has {len(pods)} pod(s): nothing to ping")
    say(f"ping matrix: {len(pods)} pods, {len(pods) * (len(pods) - 1)} pairs "
        f"(1 packet each, {lab_pods.PING_WORKERS} at a time)")
    start = time.monotonic()
    results = lab_pods.ping_all(lab.sys, pods)
    for line in lab_pods.format_matrix([lab_pods.label(p) for p in pods], results):
        say(f"  {line}")
    say(f"{lab_pods.summary(results)} ({time.monotonic() - start:.1f}s)")
    return all(results.values())
