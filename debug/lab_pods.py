"""Pods on lab nodes, made by the real `tartan` CNI plugin as a runtime makes them.

A pod is a network namespace `<lab>-node<i>-pod<k>` (made in the host's /run/netns, which
the node's mount namespace sees through slave propagation). The plugin runs inside the
node's network and mount namespaces with the CNI environment, kubelet-like CNI_ARGS and the
network config on stdin, exactly as a runtime runs it from /opt/cni/bin.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tartan.debug import lab_plan as plan
from tartan.debug.lab_agents import VENV_BIN
from tartan.debug.lab_state import Node, Pod
from tartan.debug.lab_sys import (
    PATH,
    LabError,
    Sys,
    in_netns,
    in_node,
    netns_path,
    pids_in,
    stop,
)
from tartan.kernel.files import write_atomic

# As packaging/10-tartan.conflist (kube-flannel's cni-conf.json) makes pods: hairpin on, and a
# default route through the bridge, so a pod answers clients outside the cluster network (a
# hostPort's) and reaches past it.
DELEGATE = {"hairpinMode": True, "isDefaultGateway": True}
CNI_CONFIG = {"cniVersion": "1.0.0", "name": plan.CNI_NETWORK, "type": "tartan",
              "delegate": DELEGATE}
PORTMAP = {"type": "tartan-portmap", "capabilities": {"portMappings": True}}
CONFLIST = "10-tartan.conflist"


def write_network_config(node_dir: Path) -> Path:
    """The node's /etc/cni/net.d/10-tartan.conflist, as `make install` writes it on a real
    node: what its pods are made with, and where doctor and reset find the network."""
    folder = node_dir / "etc-cni" / "net.d"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFLIST
    write_atomic(path, network_config_text())
    return path


def network_config_text() -> str:
    """The conflist's text: the installed one's plugins under the lab's network name."""
    doc = {"cniVersion": CNI_CONFIG["cniVersion"], "name": CNI_CONFIG["name"],
           "plugins": [{"type": CNI_CONFIG["type"], "delegate": DELEGATE}, PORTMAP]}
    return json.dumps(doc, indent=2) + "\n"
PING_WORKERS = 16


def cni_env(command: str, pod: Pod, plugin_dir: Path = VENV_BIN) -> dict[str, str]:
    return {
        "PATH": PATH,
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod.container_id,
        "CNI_NETNS": netns_path(pod.netns),
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(plugin_dir),
        "CNI_ARGS": (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace};"
                     f"K8S_POD_NAME={pod.name};"
                     f"K8S_POD_INFRA_CONTAINER_ID={pod.container_id}"),
    }


def cni(sys: Sys, node: Node, pod: Pod, command: str,
        plugin_dir: Path = VENV_BIN, config: dict | None = None) -> subprocess.CompletedProcess:
    """Run a plugin (the `tartan` plugin unless `config` names another) for the pod inside the
    node, as the runtime would; LabError with the CNI error."""
    config = config or CNI_CONFIG
    proc = sys.run(in_node(node.holder_pid, [str(plugin_dir / str(config["type"]))]),
                   input=json.dumps(config), env=cni_env(command, pod, plugin_dir),
                   check=False, what=f"CNI {command} {config['type']} {pod.name}")
    if proc.returncode != 0:
        raise LabError(f"CNI {command} {config['type']} {pod.name} on {node.name}: "
                       f"{_cni_error(proc)}")
    return proc


def _cni_error(proc: subprocess.CompletedProcess) -> str:
    try:
        err = json.loads(proc.stdout)
        return f"code {err.get('code')}: {err.get('msg')}" + (
            f" ({err['details']})" if err.get("details") else "")
    except ValueError:
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        return lines[-1] if lines else f"exit {proc.returncode}"


def new_pod(node: Node, k: int) -> Pod:
    netns = f"{node.netns}-pod{k}"
    return Pod(name=f"{node.name}-pod{k}", node=node.name, netns=netns,
               container_id=secrets.token_hex(32))


def add_pod(sys: Sys, node: Node, pod: Pod) -> None:
    """Make the pod's namespace and run CNI ADD; pod.address is set from the result."""
    sys.ip("netns", "add", pod.netns, what=f"create namespace {pod.netns}")
    sys.ip("link", "set", "lo", "up", netns=pod.netns)
    result = json.loads(cni(sys, node, pod, "ADD").stdout or "{}")
    ips = result.get("ips") or []
    if not ips:
        raise LabError(f"CNI ADD {pod.name} returned no address: {result}")
    pod.address = ips[0]["address"]


def del_pod(sys: Sys, node: Node, pod: Pod) -> None:
    """CNI DEL (idempotent), then the pod's processes (its listener) and its namespace go."""
    try:
        cni(sys, node, pod, "DEL")
    finally:
        stop(pids_in(pod.netns))
        remove_netns(sys, pod.netns)


def remove_netns(sys: Sys, name: str) -> None:
    if Path(netns_path(name)).exists():
        sys.run(["ip", "netns", "del", name], check=False)


# ------------------------------------------------------------------------ ping matrix


def ping(sys: Sys, src: Pod, dst: Pod, wait: float = 1.0) -> bool:
    argv = in_netns(src.netns, ["ping", "-n", "-q", "-c", "1", "-W", f"{wait:g}", dst.ip])
    return sys.ok(argv, timeout=wait + 5)


def pairs(pods: list[Pod]) -> list[tuple[Pod, Pod]]:
    return [(a, b) for a in pods for b in pods if a is not b]


def ping_all(sys: Sys, pods: list[Pod], workers: int = PING_WORKERS,
             attempt: Callable[[Sys, Pod, Pod], bool] = ping) -> dict[tuple[str, str], bool]:
    """Every pod pings every other pod once, `workers` pairs at a time."""
    todo = pairs(pods)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda pair: attempt(sys, *pair), todo))
    return {(label(a), label(b)): ok for (a, b), ok in zip(todo, results, strict=True)}


def label(pod: Pod) -> str:
    """`up`'s pods by name (node1-pod2), applied pods by namespace/name."""
    return pod.name if pod.namespace == "default" else pod.key


def short(pod_name: str) -> str:
    """node12-pod3 -> n12p3 (the matrix's column headers); other names stay."""
    node, _, pod = pod_name.partition("-")
    if not (node.startswith("node") and pod.startswith("pod")):
        return pod_name
    return f"n{node.removeprefix('node')}p{pod.removeprefix('pod')}"


def format_matrix(names: list[str], results: dict[tuple[str, str], bool]) -> list[str]:
    """Rows = from, columns = to: ok / FAIL, '-' on the diagonal."""
    heads = [short(n) for n in names]
    width = max([4, *map(len, heads)])
    first = max([len("from \\ to"), *map(len, names)])
    lines = ["from \\ to".ljust(first) + "".join(f"  {h:>{width}}" for h in heads)]
    for src in names:
        cells = ["-" if src == dst else ("ok" if results.get((src, dst)) else "FAIL")
                 for dst in names]
        lines.append(src.ljust(first) + "".join(f"  {c:>{width}}" for c in cells))
    return lines


def summary(results: dict[tuple[str, str], bool]) -> str:
    failed = sorted(pair for pair, ok in results.items() if not ok)
    if not failed:
        return f"all {len(results)} pairs ok"
    shown = ", ".join(f"{a}->{b}" for a, b in failed[:8])
    more = f" (+{len(failed) - 8} more)" if len(failed) > 8 else ""
    return f"{len(failed)} of {len(results)} pairs FAILED: {shown}{more}"
