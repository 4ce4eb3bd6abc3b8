"""What `tartanctl lab demo` (and so `make demo`) shows after the ping matrix: NetworkPolicy
(pods with real listeners in two namespaces, probed before and after a policy that admits
only one namespace on one port, each matrix checked against `policy explain`), two probes
traced (one delivered, one denied by that policy), a hostPort mapped by tartan-portmap and
reached from a pod of another node, a ping captured at every hop of its path, and doctor on a
healthy node."""

from __future__ import annotations

import argparse
import io
import subprocess
import threading
from collections.abc import Callable

from tartan.debug import lab_agents, lab_objects, lab_pods, lab_policy_cli, lab_probe, lab_store
from tartan.debug import lab_plan as plan
from tartan.debug.lab import Lab
from tartan.debug.lab_state import Node, Pod
from tartan.debug.lab_sys import LabError, in_node, netns_path
from tartan.netpol.model import Protocol

WORKLOADS = """\
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- {apiVersion: v1, kind: Namespace, metadata: {name: office}}
- apiVersion: v1
  kind: Pod
  metadata: {namespace: shop, name: web, labels: {app: web}}
  spec: {containers: [{name: web, ports: [{containerPort: 80, name: http},
                                          {containerPort: 81}]}]}
- apiVersion: v1
  kind: Pod
  metadata: {namespace: shop, name: cart, labels: {app: cart}}
  spec: {containers: [{name: cart, ports: [{containerPort: 80}, {containerPort: 81}]}]}
- apiVersion: v1
  kind: Pod
  metadata: {namespace: office, name: laptop, labels: {app: laptop}}
  spec: {containers: [{name: laptop, ports: [{containerPort: 80}, {containerPort: 81}]}]}
"""

POLICY = """\
# shop/web takes connections only from the office namespace, and only on its http port
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: shop, name: web-from-office}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: office}}}]
    ports: [{port: http}]
"""

PORTS = (80, 81)
PROTOCOLS = (Protocol.TCP,)


def show(lab: Lab, say: Callable[[str], None]) -> bool:
    """Apply the workloads, probe, apply the policy, probe again; True when every probe
    agreed with the model."""
    ok = True
    for title, manifest in (("workloads", WORKLOADS), ("a policy", POLICY)):
        say(f"---- tartanctl lab apply -f - ({title})")
        if title == "a policy":
            for line in manifest.splitlines():
                say(f"  {line}")
        ok &= lab_objects.apply(lab, ["-"], io.StringIO(manifest), say, say) == 0
        say("---- tartanctl lab probe-matrix --ports 80,81 --protocols tcp")
        matrix = lab_policy_cli.run_matrix(lab, PORTS, PROTOCOLS, workers=16)
        for line in lab_policy_cli.render(matrix, 16).splitlines():
            say(line)
        ok &= matrix.ok
    return ok


HOST_PORT = 30080  # on the node of office/laptop, to its port 80


def portmap_config(pod: Pod, host_port: int, container_port: int) -> dict:
    """What the runtime hands tartan-portmap after `tartan` made the pod: the mapping
    (runtimeConfig, from capabilities.portMappings) and the pod's result as prevResult."""
    return {"cniVersion": "1.0.0", "name": plan.CNI_NETWORK, "type": "tartan-portmap",
            "runtimeConfig": {"portMappings": [
                {"hostPort": host_port, "containerPort": container_port, "protocol": "tcp"}]},
            "prevResult": {"cniVersion": "1.0.0",
                           "interfaces": [{"name": "eth0", "sandbox": netns_path(pod.netns)}],
                           "ips": [{"address": pod.address, "interface": 0}]}}


def show_hostport(lab: Lab, say: Callable[[str], None]) -> bool:
    """office/laptop's port 80 published as a hostPort of its node by tartan-portmap, reached
    from another node through the node's address (the way a client outside the cluster comes
    in), and gone again after DEL."""
    state = lab.load()
    pod = lab_probe.find(state, "office/laptop")
    node = state.node(pod.node)
    client = next((n for n in state.nodes if n.name != pod.node), None)
    if node is None or client is None:
        raise LabError("the hostPort demo needs two nodes: give --nodes 2 or more")
    target = f"{node.ip.split('/')[0]}:{HOST_PORT}"
    config = portmap_config(pod, HOST_PORT, 80)
    say(f"---- tartan-portmap ADD: hostPort {HOST_PORT} of {node.name} -> {pod.key}:80")
    try:
        lab_pods.cni(lab.sys, node, pod, "ADD", config=config)
        saved = lab.sys.run(in_node(node.holder_pid, ["iptables-save", "-t", "nat"]),
                            what="iptables-save").stdout
        for line in saved.splitlines():
            if line.startswith("-A CNI-") and "DNAT" in line:
                say(f"  {line}")
        reached = _connect(client.netns, target)
        say(f"  {client.name} -> {target}: {reached.reason}"
            + (f" (answered by {reached.answer})" if reached.answer else ""))
    finally:
        say(f"---- tartan-portmap DEL: hostPort {HOST_PORT} of {node.name}")
        lab_pods.cni(lab.sys, node, pod, "DEL", config=config)
    after = _connect(client.netns, target)
    say(f"  {client.name} -> {target}: {after.reason}")
    return reached.allowed and reached.answer == pod.key and not after.allowed


def _connect(netns: str, target: str) -> lab_probe.Outcome:
    ip, _, port = target.rpartition(":")
    return lab_probe.attempt(netns, ip, int(port), Protocol.TCP, timeout=2.0)


def show_capture(lab: Lab, say: Callable[[str], None]) -> bool:
    """One ping from a pod of node1 to a pod of node2, seen at every hop of its path."""
    from tartan.debug import capture, capture_cli, capture_hops

    state = lab.load()
    src, dst = state.pods_of("node1")[0], state.pods_of("node2")[0]
    hops = capture_cli.lab_hops(lab, argparse.Namespace(pod=src.key, to=dst.key,
                                                        hops=capture_hops.HOPS))
    say(f"---- tartanctl lab capture {src.key} --to {dst.key} --count {2 * len(hops)} icmp  "
        f"(and one ping from {src.key})")

    def ping() -> None:
        threading.Thread(target=subprocess.run, daemon=True, args=(
            ["ip", "netns", "exec", src.netns, "ping", "-c", "1", "-W", "2", dst.ip],),
            kwargs={"capture_output": True}).start()

    summary = capture.run(hops, "icmp", lambda line: say(f"  {line}"), count=2 * len(hops),
                          duration=10, ready=ping)
    say(f"capture: {summary.packets} packet(s) on {len(hops)} hop(s)")
    return summary.packets == 2 * len(hops)


def doctor_argv(lab: Lab, node: Node, *flags: str) -> list[str]:
    """`tartanctl doctor` as the node's tartand sees it: its store and its name."""
    return [str(lab_agents.VENV_BIN / "tartanctl"), "doctor", "--node-name", node.name,
            *lab_store.tartand_store_args(lab.load().store, lab.dir), *flags]


def show_doctor(lab: Lab, say: Callable[[str], None]) -> bool:
    """`tartanctl doctor` on node1: a healthy node has no problem."""
    state = lab.load()
    node = state.node("node1")
    assert node is not None
    say("---- tartanctl lab doctor node1")
    run = subprocess.run(in_node(node.holder_pid, doctor_argv(lab, node)), capture_output=True,
                         text=True,
                         check=False, timeout=60)
    for line in run.stdout.splitlines():
        say(f"  {line}")
    return run.returncode == 0


def show_trace(lab: Lab, say: Callable[[str], None]) -> bool:
    """Two probes to shop/web under the demo's policy: one from the office, delivered; one
    from shop/cart, denied, with the policy that denied it."""
    from tartan.debug import capture_cli

    codes = []
    for src in ("office/laptop", "shop/cart"):
        say(f"---- tartanctl lab trace {src} shop/web --port 80")
        flags = argparse.ArgumentParser()
        capture_cli.add_trace_flags(flags)
        codes.append(capture_cli.cmd_lab_trace(lab, flags.parse_args([src, "shop/web",
                                                                      "--port", "80"])))
    return codes == [0, 1]
