"""Pods of `lab apply` made for real: a node, a sandbox made by the `tartan` plugin, a listener.

A Pod goes on its spec.nodeName, or else on the running node with the fewest pods (the
first of those by index), so consecutive pods go round the nodes. Its sandbox is a network
namespace `<lab>-node<i>-pod<k>` (the next k of that node, so `lab down` finds it by name),
CNI ADD runs with kubelet's CNI_ARGS (the Pod's namespace and name, the sandbox's id), and
one listener process (tartan.debug.lab_serve) serves every port of its containers inside the
namespace. What a failed step made is undone. Removing a pod is CNI DEL, then every process
of its namespace (the listener) is stopped and the namespace removed.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import sys as _sys
import time
from collections.abc import Sequence
from pathlib import Path

from tartan.debug import lab_agents, lab_pods
from tartan.debug.lab_state import LabState, Node, Pod
from tartan.debug.lab_sys import LabError, Sys, alive, in_namespace, in_netns, pids_in, stop
from tartan.netpol.model import Pod as PodModel
from tartan.netpol.model import Protocol

READY_TIMEOUT = 10.0
_POD_INDEX = re.compile(r"-pod(\d+)$")


def place(requested: str, nodes: Sequence[str], pods_on: dict[str, int],
          present: Sequence[str] = ()) -> str:
    """The node for a pod: `requested` (spec.nodeName) when given, among `nodes` (their
    tartand runs) or `present` (there, tartand stopped: its plugin answers in-process, as
    kubelet's would), else the node of `nodes` with the fewest pods, the first of those in
    `nodes` order. LabError when there is none."""
    if requested:
        if requested not in nodes and requested not in present:
            raise LabError(f"spec.nodeName {requested!r} is not a running node of the lab; "
                           f"use one of {', '.join(nodes) or '(none)'}, or leave it out")
        return requested
    if not nodes:
        raise LabError("no node of the lab is running: `tartanctl lab status`")
    return min(nodes, key=lambda name: (pods_on.get(name, 0), nodes.index(name)))


def next_netns(node: Node, pods: Sequence[Pod]) -> str:
    """`<node netns>-pod<k>`, k one more than the highest of the node's pods."""
    used = [int(m.group(1)) for p in pods if p.node == node.name
            if (m := _POD_INDEX.search(p.netns))]
    return f"{node.netns}-pod{max(used, default=0) + 1}"


def ports_of(model: PodModel) -> list[dict[str, object]]:
    """The containers' ports as the lab keeps them: [{port, protocol, name}], in order."""
    return [{"port": p.port, "protocol": p.protocol.value, "name": p.name}
            for p in model.ports]


def listener_argv(pod: Pod, ready: Path, python: str = _sys.executable) -> list[str]:
    """The listener's command line: inside the pod's network namespace, one --tcp/--udp per
    port (SCTP is not served)."""
    argv = [python, "-m", "tartan.debug.lab_serve", "--answer", pod.key, "--ready", str(ready)]
    for port in pod.ports:
        protocol = str(port["protocol"])
        if protocol in (Protocol.TCP.value, Protocol.UDP.value):
            argv += [f"--{protocol.lower()}", str(port["port"])]
    return in_netns(pod.netns, argv)


def ready_file(lab_dir: Path, pod: Pod) -> Path:
    return lab_dir / pod.node / f"{pod.netns.rsplit('-', 1)[-1]}-listener.ready"


def new_pod(state: LabState, model: PodModel) -> Pod:
    """The lab's pod for a Pod object (not made yet): its node, namespace name and id."""
    running = [n.name for n in state.nodes if lab_agents.running(n)]
    counts = {name: len(state.pods_of(name)) for name in running}
    present = [n.name for n in state.nodes if alive(n.holder_pid)]
    node = state.node(place(model.node, running, counts, present))
    assert node is not None
    return Pod(name=model.name, node=node.name, netns=next_netns(node, state.pods),
               container_id=secrets.token_hex(32), namespace=model.namespace,
               labels=dict(model.labels), ports=ports_of(model))


def start(sys: Sys, lab_dir: Path, node: Node, pod: Pod) -> None:
    """The sandbox (namespace, CNI ADD), then its listener; undone if a step fails."""
    try:
        lab_pods.add_pod(sys, node, pod)
        if any(p["protocol"] in ("TCP", "UDP") for p in pod.ports):
            pod.listener_pid = start_listener(sys, lab_dir, pod)
    except LabError:
        with contextlib.suppress(LabError):  # the first failure is the one to report
            remove(sys, node, pod)
        raise


def start_listener(sys: Sys, lab_dir: Path, pod: Pod, timeout: float = READY_TIMEOUT) -> int:
    ready = ready_file(lab_dir, pod)
    ready.unlink(missing_ok=True)
    log = ready.with_suffix(".log")
    pid = sys.spawn(listener_argv(pod, ready), log=log)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if not alive(pid) or time.monotonic() > deadline:
            why = "exited" if not alive(pid) else f"not ready after {timeout:.0f}s"
            raise LabError(f"{pod.key}: the listener {why}; its log {log}: "
                           + " | ".join(_tail(log)))
        time.sleep(0.02)
    return pid


def remove(sys: Sys, node: Node | None, pod: Pod) -> None:
    """CNI DEL while the node is there (idempotent), the listener, the namespace."""
    if node is not None and in_namespace(node.holder_pid, node.netns):
        lab_pods.del_pod(sys, node, pod)
    else:  # the node is gone: its pods' links went with it
        stop(pids_in(pod.netns))
        lab_pods.remove_netns(sys, pod.netns)


def _tail(log: Path, n: int = 3) -> list[str]:
    try:
        return log.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []
