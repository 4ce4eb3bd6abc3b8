"""Taking a CRI node (cri_node.py) away, and proving it is gone.

`take_down` runs every step whatever the others did (a test may have failed half-way, or
containerd may have died with its pods running): the pods through CRI (Stop + Remove, as
kubelet would), containerd, its shims and whatever still runs in the pods' cgroup parent,
tartand, then by hand what containerd and libcni keep outside the node (the pods' netns
under /var/run/netns, shim sockets under /run/containerd/s, libcni's result cache, overlay
and shm mounts, cgroups, the folders they created), and the node namespace with its bridges,
veths and rules. `leftovers` lists anything of the node still there: processes, netns,
mounts, cgroups, shim sockets, cache entries, and links or iptables rules of the node's in
the host's own namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal

import containerd_env
from containerd_env import CNI_RESULTS, Pod
from cri_node import (
    BRIDGES,
    CLUSTER,
    FALLBACK_SUBNET,
    OUTSIDE,
    REFERENCE_SUBNET,
    UPLINK,
    VXLAN,
    CriNode,
    podman_env,
    run,
    uninstall_plugins,
)

from harness import remove_netns, stop_process


def take_down(node: CriNode) -> list[str]:
    """Take the node away; returns what could not be undone. Every step runs."""
    problems: list[str] = []
    for step in (_remove_pods, _stop_containerd, _stop_agent, _remove_outside, _remove_node):
        try:
            problems += step(node)
        except Exception as exc:  # report it, and go on cleaning
            problems.append(f"{step.__name__}: {type(exc).__name__}: {exc}")
    return problems


def _remove_pods(node: CriNode) -> list[str]:
    proc = node.containerd.proc if node.containerd is not None else None
    if proc is None or proc.poll() is not None:  # never started, or died: nobody to ask
        return []
    problems = []
    with contextlib.suppress(containerd_env.CriError):
        for sandbox_id in node.sandbox_ids():
            node.pods.setdefault(sandbox_id, Pod(sandbox_id, "", "", "", "", ""))
    for pod in list(node.pods.values()):
        try:
            if not pod.netns:  # its status was never read: read it now, for cleanup
                node.pods[pod.id] = pod = containerd_env.pod_of(
                    node.containerd.client(), pod.id, pod.handler)
        except containerd_env.CriError:
            pass
        try:
            node.remove_pod(pod)
        except containerd_env.CriError as exc:
            if exc.code.name != "NOT_FOUND":
                problems.append(f"pod {pod.id}: {exc}")
    return problems


def _stop_containerd(node: CriNode) -> list[str]:
    if node.containerd is None:
        return []
    node.containerd.stop()
    problems = node.containerd.kill_shims()
    for pid in podman_env.cgroup_pids(node.cgroup_parent):
        problems.append(f"process {pid} still in {node.cgroup_parent}: killed")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return problems


def _stop_agent(node: CriNode) -> list[str]:
    if node.tartand is not None:
        stop_process(node.tartand)
    return []


def _remove_outside(node: CriNode) -> list[str]:
    """The pod netns, shim sockets, CNI cache entries, mounts and cgroups of the node's
    pods, and the folders containerd and libcni made when they were not there."""
    problems = []
    for pod in node.pods.values():
        if pod.netns and os.path.lexists(pod.netns):
            problems.append(f"netns {pod.netns} left")
            run(["ip", "netns", "del", os.path.basename(pod.netns)])
        for path in CNI_RESULTS.glob(f"*-{pod.id}-*"):
            problems.append(f"{path} left")
            path.unlink(missing_ok=True)
        if node.containerd is not None:
            node.containerd.shim_socket(pod.id).unlink(missing_ok=True)
    for point in podman_env.mounts_under(node.home):
        if run(["umount", point]).returncode:
            run(["umount", "--lazy", point])
    problems += podman_env.remove_cgroups(node.cgroup_parent)
    for directory in OUTSIDE:  # deepest first; only when empty
        if not node.existed.get(directory, True):
            with contextlib.suppress(OSError):
                directory.rmdir()
    return problems


def _remove_node(node: CriNode) -> list[str]:
    remove_netns(node.name)
    if node.installed and node.staged is not None:
        uninstall_plugins(node.staged)
    shutil.rmtree(node.home, ignore_errors=True)
    return []


def leftovers(node: CriNode) -> list[str]:
    """Everything of the node still there after cleanup (must be nothing)."""
    left = []
    if node.containerd is not None:
        if node.containerd.proc is not None and node.containerd.proc.poll() is None:
            left.append("containerd still running")
        left += [f"containerd-shim {pid}" for pid in node.containerd.shim_pids()]
        left += [f"shim socket {node.containerd.shim_socket(i)}" for i in node.pods
                 if node.containerd.shim_socket(i).exists()]
    if node.tartand is not None and node.tartand.poll() is None:
        left.append("tartand still running")
    left += [f"netns {p.netns}" for p in node.pods.values() if p.netns
             and os.path.lexists(p.netns)]
    if os.path.lexists(node.netns):
        left.append(f"node netns {node.netns}")
    left += [f"cache {p}" for i in node.pods for p in CNI_RESULTS.glob(f"*-{i}-*")]
    left += [f"mount {m}" for m in podman_env.mounts_under(node.home)]
    left += [f"cgroup {d}" for d in podman_env.cgroup_dirs(node.cgroup_parent)]
    left += _host_changes(node)
    if node.home.exists():
        left.append(f"folder {node.home}")
    return left


def _host_changes(node: CriNode) -> list[str]:
    """Links, rules and folders of this node that appeared in the host's namespace."""
    left = [f"host link {name}" for name in (*BRIDGES.values(), UPLINK[0], VXLAN)
            if name not in node.links_before and podman_env.link_exists(name)]
    marks = [*node.pods, str(CLUSTER), str(FALLBACK_SUBNET.network),
             str(REFERENCE_SUBNET.network), node.name]
    for command in podman_env.IPT_COMMANDS:
        for table in podman_env.IPT_TABLES:
            left += [f"host rule {r}" for r in podman_env.rules_of(
                podman_env.ipt_save(command, table)) if any(m in r for m in marks)]
    left += [f"folder {d}" for d, existed in node.existed.items()
             if not existed and os.path.lexists(d)]
    return left
