"""A Tartan cluster on VMs, made as the Vagrantfile makes one: the same provisioning script on
every VM (etcd on the first), then pods made on the VMs by the real plugins (`tartanctl pod
add`) and the cross-VM ping matrix between them. The pods and the matrix work on any `Nodes`:
the VM lab's machines, or the machines `vagrant up` made (vmlab.vagrant)."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vmlab.machines import Lab, Vm, VmError, copy_to, ssh

PROVISION = Path(__file__).resolve().parent.parent / "provision.sh"
# until tartand's /readyz answers 200 (bash's /dev/tcp; no Python started per poll)
WAIT_READY = ("for i in $(seq 1 240); do if exec 3<>/dev/tcp/127.0.0.1/9808; then "
              "printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3; read -r _ code _ <&3; "
              "exec 3>&-; [ \"$code\" = 200 ] && exit 0; fi 2>/dev/null; sleep 0.5; done; "
              "exit 1")
BACKENDS = ("vxlan", "host-gw", "directrouting")


class Nodes(Protocol):
    """The machines a cluster runs on, each reached as root by its name."""

    @property
    def nodes(self) -> list[str]: ...

    def run(self, node: str, command: str, timeout: float = 300) -> str:
        """The command's output; an error (VmError) when it fails."""
        ...


@dataclass(frozen=True)
class PodOnVm:
    vm: str
    key: str  # NS/NAME
    ip: str

    @property
    def netns(self) -> str:
        return self.key.replace("/", "-")


def provision(lab: Lab, backend: str, say: Callable[[str], None] = print) -> dict[str, float]:
    """Run provision.sh on every VM at once (the others' tartand retries until etcd on the
    first answers, as on a cluster booting together); seconds each took until its tartand
    was ready."""
    if backend not in BACKENDS:
        raise VmError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    first = lab.vms[0]

    def one(vm: Vm) -> float:
        started = time.monotonic()
        copy_to(lab, vm, PROVISION, "/root/tartan")
        ssh(lab, vm, f"bash /root/tartan/provision.sh --node-ip {vm.ip} --etcd-ip {first.ip} "
                     f"--backend {shlex.quote(backend)}", timeout=600)
        took = time.monotonic() - started
        say(f"  {vm.name}: provisioned ({backend}) in {took:.1f} s")
        return took

    with ThreadPoolExecutor(len(lab.vms)) as pool:
        return dict(zip((vm.name for vm in lab.vms), pool.map(one, lab.vms), strict=True))


def wait_ready(nodes: Nodes, node: str) -> None:
    nodes.run(node, WAIT_READY, timeout=180)


def unprovision(lab: Lab) -> None:
    """Back to a node without Tartan's state: tartand stopped, `tartanctl reset`, and the
    cluster's keys gone from etcd (so the next provisioning may choose another backend)."""
    def one(vm: Vm) -> None:
        ssh(lab, vm, "systemctl stop tartand; tartanctl reset --force >/dev/null", timeout=120)

    with ThreadPoolExecutor(len(lab.vms)) as pool:
        list(pool.map(one, lab.vms))
    ssh(lab, lab.vms[0], "systemctl stop etcd; rm -rf /var/lib/etcd/tartan", timeout=60)


def add_pod(nodes: Nodes, node: str, key: str) -> PodOnVm:
    """`tartanctl pod add` on the node: the conflist's plugins, run as a runtime runs them."""
    out = nodes.run(node, f"tartanctl pod add {shlex.quote(key)}", timeout=300).split()
    return PodOnVm(node, key, out[1])


def add_pods(nodes: Nodes, per_vm: int = 1, name: str = "pod") -> list[PodOnVm]:
    """`per_vm` pods on every node, default/<node>-<name><k>."""
    def one(node: str) -> list[PodOnVm]:
        return [add_pod(nodes, node, f"default/{node}-{name}{k}")
                for k in range(1, per_vm + 1)]

    with ThreadPoolExecutor(len(nodes.nodes)) as pool:
        return [pod for pods in pool.map(one, nodes.nodes) for pod in pods]


def delete_all_pods(nodes: Nodes) -> None:
    """Every pod `tartanctl pod` made on the nodes."""
    def one(node: str) -> None:
        nodes.run(node, "for p in $(tartanctl pod list | cut -d' ' -f1); do "
                        "tartanctl pod del $p >/dev/null; done", timeout=300)

    with ThreadPoolExecutor(len(nodes.nodes)) as pool:
        list(pool.map(one, nodes.nodes))


def ping_matrix(nodes: Nodes, pods: list[PodOnVm],
                tries: int = 3) -> dict[tuple[str, str], bool]:
    """(from, to) -> answered, for every ordered pair of pods, each node pinging from its own
    pods in one session; a pair gets `tries` pings of 2 s."""
    def one(node: str) -> dict[tuple[str, str], bool]:
        mine = [p for p in pods if p.vm == node]
        lines = [f"if ip netns exec {src.netns} ping -n -q -c {tries} -W 2 -A {dst.ip} "
                 f">/dev/null 2>&1; then echo 'ok {src.key} {dst.key}'; "
                 f"else echo 'no {src.key} {dst.key}'; fi"
                 for src in mine for dst in pods if dst.key != src.key]
        out = nodes.run(node, "\n".join(lines) or "true", timeout=600)
        return {(words[1], words[2]): words[0] == "ok"
                for words in (line.split() for line in out.splitlines()) if len(words) == 3}

    matrix: dict[tuple[str, str], bool] = {}
    with ThreadPoolExecutor(len(nodes.nodes)) as pool:
        for part in pool.map(one, nodes.nodes):
            matrix.update(part)
    return matrix


def render_matrix(pods: list[PodOnVm], matrix: dict[tuple[str, str], bool]) -> str:
    names = [p.key.split("/")[1] for p in pods]
    width = max(len(n) for n in names)
    lines = [" " * (width + 2) + "  ".join(n.rjust(width) for n in names)]
    for src, name in zip(pods, names, strict=True):
        cells = ["-" if src.key == dst.key else ("ok" if matrix.get((src.key, dst.key))
                                                  else "LOST")
                 for dst in pods]
        lines.append(name.ljust(width + 2) + "  ".join(c.rjust(width) for c in cells))
    return "\n".join(lines)
