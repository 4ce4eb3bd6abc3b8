"""`tartanctl lab apply|delete`: Namespaces, Pods and NetworkPolicies in the lab's store, and
the Pods made for real on the lab's nodes.

The objects are read and validated by `tartanctl apply`'s code (debug/objects_cli.py: an
invalid object is one line on stderr and skipped, the rest is applied, the exit code is 1) and
written into the lab's own store (lab_store.with_store: its SQLite file, or its etcd inside
the router namespace). A new Pod gets its sandbox and listener (debug/lab_workloads.py)
before the object is stored; a Pod that is there already only has its object updated (new
labels), as the API server does; its node and ports cannot change. Deleting a Pod removes
its sandbox first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO, TypeVar

from tartan.debug import lab_agents, lab_store, lab_workloads
from tartan.debug import lab_state as files
from tartan.debug.kube import POD, CtlError, Resource, object_key
from tartan.debug.lab import Lab
from tartan.debug.lab_state import LabState, Node, Pod
from tartan.debug.lab_sys import LabError, netns_path
from tartan.debug.objects_cli import Inputs, Valid, read_inputs, resource_or_usage
from tartan.debug.objects_cli import apply as store_apply
from tartan.debug.objects_cli import delete as store_delete
from tartan.ipam.objects import POD_IPS, Objects, ObjectStore
from tartan.netpol.manifest import load_objects
from tartan.netpol.model import Pod as PodModel

T = TypeVar("T")
Say = Callable[[str], None]


def with_store(lab: Lab, state: LabState, work: Callable[[ObjectStore], T]) -> T:
    """work(the lab's store); LabError when it fails (lab_store.with_store)."""
    return lab_store.with_store(state.store, lab.name, lab.dir, work)


def stored_objects(lab: Lab, state: LabState) -> dict[str, Objects]:
    return with_store(lab, state, lambda store: store.list_objects()[0])


def _inputs(paths: Sequence[str], stdin: TextIO) -> Inputs:
    try:
        return read_inputs(list(paths), stdin)
    except CtlError as exc:
        raise LabError(str(exc)) from None


def _model(obj: Valid) -> PodModel:
    return load_objects([obj.manifest], "-").pods[0]  # valid: read_inputs checked it


def _name(res: Resource, key: str) -> str:
    return res.ref(key.rpartition("/")[2])


# -- apply ----------------------------------------------------------------------------


def apply(lab: Lab, paths: Sequence[str], stdin: TextIO, out: Say, err: Say) -> int:
    """Every valid object into the store, new Pods made first; 1 when something was left out."""
    state = lab.load()
    inputs = _inputs(paths, stdin)
    for line in inputs.problems:
        err(line)
    failed = bool(inputs.problems)
    ready: list[Valid] = []
    made: list[str] = []
    for obj in inputs.objects:
        try:
            if obj.resource is POD and _ensure_pod(lab, state, obj, out):
                made.append(obj.key)
            ready.append(obj)
        except LabError as exc:
            err(f"{_name(obj.resource, obj.key)}: {exc}")
            failed = True
    if ready:
        wait_recorded(lab, state, _on_running_nodes(lab, made, out))
        for line in with_store(lab, state, lambda store: list(
                store_apply(store, ready, time.time()))):
            out(line)
        wait_enforced(lab, state, out)
    return 1 if failed else 0


def _on_running_nodes(lab: Lab, pods: Sequence[str], out: Say) -> list[str]:
    """The pods whose node's tartand runs (and records them now); of the others, a line."""
    state = lab.load()
    running = []
    for key in pods:
        pod = state.pod(key)
        node = state.node(pod.node) if pod is not None else None
        if node is not None and lab_agents.running(node):
            running.append(key)
        else:
            out(f"  {key}: the tartand of its node is not running; it records the pod when "
                "it starts (from the CNI journal)")
    return running


def wait_recorded(lab: Lab, state: LabState, pods: Sequence[str],
                  timeout: float = 15.0) -> None:
    """Until the nodes recorded the new pods' addresses (their tartand writes the record
    just after answering the CNI ADD): then a policy applied next already knows them."""
    deadline = time.monotonic() + timeout
    while pods and time.monotonic() < deadline:
        records = stored_objects(lab, state)[POD_IPS]
        if all(key in records for key in pods):
            return
        time.sleep(0.05)
    if pods:
        raise LabError(f"no tartand recorded the addresses of {', '.join(pods)} in "
                       f"{timeout:g}s: see the nodes' tartand.log")


def wait_enforced(lab: Lab, state: LabState, out: Say, timeout: float = 15.0) -> None:
    """Until every running node's enforcer has synced what the store holds now, so that a
    probe made next meets the policies just applied."""
    revision = with_store(lab, state, lambda store: store.list_objects()[1])
    started = time.monotonic()
    nodes = [n for n in state.nodes if lab_agents.running(n)]
    waiting = list(nodes)
    while waiting and time.monotonic() - started < timeout:
        waiting = [n for n in waiting if _synced(n) < revision]
        if waiting:
            time.sleep(0.05)
    if waiting:
        raise LabError(f"{', '.join(n.name for n in waiting)} did not enforce store revision "
                       f"{revision} in {timeout:g}s: see `tartanctl lab status` and the "
                       "nodes' tartand.log")
    out(f"  enforced on {len(nodes)} node(s) in {time.monotonic() - started:.1f}s")


def _synced(node: Node) -> int:
    doc = lab_agents.status(node) or {}
    revision = (doc.get("networkPolicy") or {}).get("revision")
    return revision if isinstance(revision, int) else -1


def _ensure_pod(lab: Lab, state: LabState, obj: Valid, out: Say) -> bool:
    """Make the pod's sandbox unless it has one; True when it was made now."""
    model = _model(obj)
    pod = state.pod(obj.key)
    if pod is not None:
        check_update(pod, model)
        pod.labels = dict(model.labels)
        files.save(state, lab.root)
        return False
    pod = lab_workloads.new_pod(state, model)
    node = state.node(pod.node)
    assert node is not None
    state.pods.append(pod)
    files.save(state, lab.root)  # before the kernel work: `down` finds what it made
    try:
        lab_workloads.start(lab.sys, lab.dir, node, pod)
    except LabError:
        state.pods.remove(pod)
        files.save(state, lab.root)
        raise
    files.save(state, lab.root)
    serving = " ".join(f"{p['port']}/{p['protocol']}" for p in pod.ports) or "no ports"
    out(f"  {pod.key}: {pod.address} on {pod.node}, netns {pod.netns}, serving {serving}")
    return True


def check_update(pod: Pod, model: PodModel) -> None:
    """A Pod that runs may get new labels; its node and its ports stay (as the API server
    forbids changing them)."""
    if model.node and model.node != pod.node:
        raise LabError(f"spec.nodeName cannot change (the pod runs on {pod.node}); delete "
                       "the pod and apply it again")
    if lab_workloads.ports_of(model) != pod.ports:
        raise LabError("the containers' ports of a running pod cannot change; delete the "
                       "pod and apply it again")


# -- delete ---------------------------------------------------------------------------


def targets(paths: Sequence[str], names: Sequence[str], namespace: str,
            stdin: TextIO) -> tuple[list[tuple[Resource, str]], list[str]]:
    """What to delete, from -f or TYPE NAME..., and the lines of invalid objects."""
    if bool(paths) == bool(names):
        raise LabError("give either -f FILE or TYPE NAME...")
    if paths:
        inputs = _inputs(paths, stdin)
        return [(o.resource, o.key) for o in inputs.objects], inputs.problems
    if len(names) < 2:
        raise LabError("give -f FILE, or a resource type and the names to delete")
    try:
        res = resource_or_usage(names[0])
    except CtlError as exc:
        raise LabError(str(exc)) from None
    return [(res, object_key(res, namespace, name)) for name in names[1:]], []


def delete(lab: Lab, wanted: list[tuple[Resource, str]], ignore_not_found: bool,
           out: Say, err: Say) -> bool:
    """Pods' sandboxes first, then the objects; True when everything went."""
    state = lab.load()
    ok = True
    removed: set[tuple[str, str]] = set()  # pods whose sandbox went
    gone: list[tuple[Resource, str]] = []
    for res, key in wanted:
        pod = state.pod(key) if res is POD else None
        if pod is not None:
            try:
                lab_workloads.remove(lab.sys, state.node(pod.node), pod)
            except LabError as exc:
                err(f"{_name(res, key)}: {exc}")
                ok = False
                continue
            state.pods.remove(pod)
            files.save(state, lab.root)
            removed.add((res.kind, key))
        gone.append((res, key))

    def work(store: ObjectStore) -> list[tuple[Resource, str, list[tuple[bool, str]]]]:
        return [(res, key, list(store_delete(store, [(res, key)],
                                             ignore_not_found or (res.kind, key) in removed)))
                for res, key in gone]

    for res, key, lines in with_store(lab, state, work) if gone else []:
        name = key.rpartition("/")[2]
        for done, line in lines or [(True, f'{res.singular} "{name}" deleted')]:
            (out if done else err)(line)
            ok = ok and done
    if gone:
        wait_enforced(lab, state, out)
    return ok


def summary(pod: Pod) -> dict[str, Any]:
    """A pod as `lab pods -o json` shows it."""
    return {"namespace": pod.namespace, "name": pod.name, "node": pod.node,
            "ips": [pod.ip] if pod.address else [], "labels": dict(pod.labels),
            "ports": list(pod.ports), "netns": netns_path(pod.netns),
            "containerID": pod.container_id, "listenerPid": pod.listener_pid or None}
