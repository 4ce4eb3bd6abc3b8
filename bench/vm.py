"""Tartan on Debian 12 VMs under qemu: boot to ready, time to a full cross-VM ping matrix, and
pod-to-pod TCP across VMs against VM-to-VM TCP on the same links.

    .venv/bin/python bench/vm.py [--nodes 3] [--backends vxlan,host-gw] [--rounds 3]
                                 [--seconds 5] [--report PATH]

The VM lab (vagrant/vmlab): the cached image, VMs booted at once, each provisioned by
vagrant/provision.sh (the installed bundle and tartand's systemd unit, etcd on node1), one pod
per VM by `tartanctl pod add`. Boot to ready is from qemu's start until that VM's tartand is
ready; the matrix time is from the first qemu start until every pod answered every other.
Each further backend is provisioned on the same VMs after `tartanctl reset` (its matrix time
counts from that provisioning). Throughput: iperf3 (one stream) from node1 to node2, in turn
between the VMs' own addresses (the baseline) and between their pods, in the same run. Under
software emulation (no usable KVM here) absolute figures say little about a real machine; the
ratio is the figure.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "vagrant"))

import report  # noqa: E402
from pngchart import Bar, Panel, bar_chart  # noqa: E402
from vmlab import cluster, image, machines  # noqa: E402


@dataclass
class BackendFigures:
    matrix_at: float = 0.0  # seconds until the full matrix answered
    pairs: int = 0
    vm_gbits: list[float] = field(default_factory=list)
    pod_gbits: list[float] = field(default_factory=list)


@dataclass
class Figures:
    accel: str = ""
    kernel: str = ""
    ssh: dict[str, float] = field(default_factory=dict)  # qemu start -> ssh answers
    ready: dict[str, float] = field(default_factory=dict)  # qemu start -> tartand ready
    backends: dict[str, BackendFigures] = field(default_factory=dict)


def iperf(lab: machines.Lab, server: machines.Vm, client: machines.Vm, target: str,
          seconds: int, server_ns: str = "", client_ns: str = "") -> float:
    """Gbit/s from `client` to `target` on `server` (inside the pods' namespaces if given)."""
    def inside(ns: str, command: str) -> str:
        return f"ip netns exec {ns} {command}" if ns else command

    machines.ssh(lab, server, inside(server_ns, f"iperf3 -s -1 -D -B {target}"))
    try:
        for _ in range(20):
            run = machines.ssh(lab, client, inside(client_ns, f"iperf3 -c {target} -t "
                                                              f"{seconds} -J"),
                               check=False, timeout=seconds + 120)
            doc = json.loads(run.stdout or "{}")
            if run.returncode == 0 and "sum_received" in doc.get("end", {}):
                return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9
            time.sleep(0.5)
        raise RuntimeError(f"iperf3 to {target} failed: {run.stdout[-300:]}")
    finally:
        machines.ssh(lab, server, "pkill -x iperf3", check=False)


def say(line: str) -> None:
    print(line, flush=True)


def run(args: argparse.Namespace) -> Figures:
    figures = Figures(accel=machines.accel())
    built = image.build(ROOT / "dist/tartan", ROOT)
    figures.kernel = built.kernel_version
    started = time.time()
    lab = machines.up("bench", built, args.nodes, say=say)
    try:
        figures.ssh = {vm.name: vm.answered_after for vm in lab.vms}
        for index, backend in enumerate(args.backends):
            if index:
                cluster.delete_all_pods(lab)
                cluster.unprovision(lab)
                started = time.time()
            took = cluster.provision(lab, backend, say=say)
            if not index:
                figures.ready = {vm.name: figures.ssh[vm.name] + took[vm.name]
                                 for vm in lab.vms}
            figures.backends[backend] = measure(lab, args, started)
        return figures
    finally:
        machines.down(lab)


def measure(lab: machines.Lab, args: argparse.Namespace, started: float) -> BackendFigures:
    """Pods, the full matrix, then the rounds of VM-to-VM and pod-to-pod TCP."""
    figures = BackendFigures()
    pods = cluster.add_pods(lab)
    matrix = cluster.ping_matrix(lab, pods)
    figures.matrix_at = time.time() - started
    figures.pairs = len(matrix)
    if not all(matrix.values()):
        raise RuntimeError("the ping matrix is not full:\n" + cluster.render_matrix(pods, matrix))
    vm1, vm2 = lab.vms[0], lab.vms[1]
    pod1, pod2 = pods[0], pods[1]
    for round_ in range(args.rounds):
        figures.vm_gbits.append(iperf(lab, vm2, vm1, vm2.ip, args.seconds))
        figures.pod_gbits.append(iperf(lab, vm2, vm1, pod2.ip, args.seconds,
                                       server_ns=pod2.netns, client_ns=pod1.netns))
        print(f"  round {round_ + 1}: VM to VM {figures.vm_gbits[-1]:.3f} Gbit/s, "
              f"pod to pod {figures.pod_gbits[-1]:.3f} Gbit/s", flush=True)
    return figures


def table(f: Figures) -> str:
    rows = [f"Accelerator: {f.accel}; guest kernel {f.kernel}; backends "
            f"{', '.join(f.backends)}.", "",
            f"| VM | qemu start → ssh answers | → tartand ready ({next(iter(f.backends))}) |",
            "|---|---:|---:|"]
    rows += [f"| {name} | {f.ssh[name]:.1f} s | {f.ready[name]:.1f} s |" for name in f.ready]
    rows.append("")
    for index, (backend, b) in enumerate(f.backends.items()):
        since = "the first qemu start" if not index else "its provisioning"
        rows.append(f"{backend}: full cross-VM ping matrix ({b.pairs} pairs) answered "
                    f"{b.matrix_at:.1f} s after {since}.")
    rows += ["", "| backend | node1 → node2, TCP | Gbit/s (median) | rounds | of VM to VM |",
             "|---|---|---:|---|---:|"]
    for backend, b in f.backends.items():
        base = statistics.median(b.vm_gbits)
        for what, values in (("VM to VM (the underlay)", b.vm_gbits),
                             ("pod to pod across the VMs", b.pod_gbits)):
            rows.append(f"| {backend} | {what} | {statistics.median(values):.3f} | "
                        f"{', '.join(f'{v:.3f}' for v in values)} | "
                        f"{statistics.median(values) / base:.2f}x |")
    return "\n".join(rows)


def backends(text: str) -> list[str]:
    chosen = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in cluster.BACKENDS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"use some of {', '.join(cluster.BACKENDS)}")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--backends", type=backends, default=["vxlan", "host-gw"],
                        help="comma-separated, provisioned in turn on the same VMs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the VMs come down
    figures = run(args)
    text = table(figures)
    print(text)
    if args.report:
        png = args.report.with_suffix(".png")
        bars = []
        for backend, b in figures.backends.items():
            for what, values in (("VM to VM", b.vm_gbits), ("pod to pod", b.pod_gbits)):
                median = statistics.median(values)
                bars.append(Bar(f"{backend} {what}", (median,), note=f"{median:.3f}"))
        bar_chart([Panel("NODE1 TO NODE2 TCP UNDER EMULATION, GBIT/S", bars)], png)
        report.write(args.report, "Tartan on VMs", __doc__, text, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
