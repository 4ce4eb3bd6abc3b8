"""CRI pod sandbox start and stop: Tartan against the reference plugins under one containerd.

    .venv/bin/python bench/cri.py [--pods 20] [--warmup 2] [--report PATH]

One node, made as the CRI tests make it (tests/cri/cri_node.py): a network namespace of its
own holding containerd 1.6 with its CRI plugin, the bundle installed in its CNI bin dir as
`make install` lays it out, the bundle's real tartand up (the plugins hand every request to
its socket), and a pause image built from busybox. Two CRI runtime handlers, both runc,
differ only in their CNI conflist: Tartan's (packaging/10-tartan.conflist: the `tartan` meta
plugin, then `tartan-portmap`, in kube-flannel's shape) and the reference's (`bridge` +
`host-local` + `portmap` from /usr/lib/cni; no ipMasq on the bridge, as flannel's has none
while flanneld masquerades for the node, as tartand does here). Timed through the CRI's gRPC
as kubelet calls it, one pod at a time:
- start: RunPodSandbox until it returns (containerd makes the netns, runs CNI ADD of
  `loopback` and then of the network's plugins, starts the pause container);
- stop: StopPodSandbox + RemovePodSandbox until both returned (CNI DEL at Stop, and again at
  Remove without a netns, as containerd 1.6 does);
- host network: the same sandbox on the node's network, which runs no CNI at all: what
  containerd and runc take alone. A network's CNI share is its time minus this one's.
Every pod has one TCP hostPort and its address is checked after the start (not timed). The
three kinds take turns pod by pod, which one goes first rotating, after --warmup uncounted
rounds. Figures: median and p95 (ms) of --pods each; Tartan/reference as the ratio of the
medians, of the whole call and of the CNI's share; tartand's own time for the Tartan pods'
requests (its log); and what one exec + VERSION of each network's first plugin costs (the
installed `tartan` and the reference `bridge`), --pods times each.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "cri")]

import report  # noqa: E402
from cri_node import DEFAULT_HANDLER, REFERENCE_HANDLER, CriNode  # noqa: E402
from cri_teardown import leftovers, take_down  # noqa: E402
from latency_stats import Stats, markdown, plain  # noqa: E402
from pngchart import Bar, Panel, bar_chart  # noqa: E402

HOST_NETWORK = "host network"
KINDS = {"tartan": DEFAULT_HANDLER, "reference": REFERENCE_HANDLER, HOST_NETWORK: ""}
HOST_PORT = (8080, 31080)  # (containerPort, hostPort)


@dataclass
class Series:
    kind: str
    start: list[float] = field(default_factory=list)  # ms
    stop: list[float] = field(default_factory=list)
    agent_add: list[float] = field(default_factory=list)  # tartand's own ms per request
    agent_del: list[float] = field(default_factory=list)  # its DELs of one pod, summed


def agent_ms(node: CriNode, sandbox_id: str, command: str) -> float:
    """tartand's own time (its log's ms=) for the pod's requests of `command`, summed."""
    total = 0.0
    for line in node.agent_requests(sandbox_id):
        if f"command={command}" in line and (match := re.search(r"\bms=([\d.]+)", line)):
            total += float(match.group(1))
    return total


def timed(call: Callable[[], object]) -> tuple[object, float]:
    began = time.perf_counter()
    value = call()
    return value, (time.perf_counter() - began) * 1000


def exec_version(node: CriNode, plugin: str) -> float:
    """ms of one exec + CNI VERSION of the installed `plugin`: what a call of it costs before
    any work (containerd execs each plugin of a conflist once per ADD and per DEL)."""
    env = {"CNI_COMMAND": "VERSION", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    path = str(node.bin_dir / plugin)
    _, ms = timed(lambda: subprocess.run([path], input=b"{}", env=env, capture_output=True,
                                         check=True))
    return ms


def one_pod(node: CriNode, kind: str, index: int) -> tuple[float, float, str]:
    """Start and stop one sandbox of `kind`: (start ms, stop ms, its id)."""
    host = kind == HOST_NETWORK
    options: dict = {"host_network": True} if host else {
        "handler": KINDS[kind], "ports": (("TCP", *HOST_PORT),)}
    sandbox_id, start = timed(lambda: node.run_sandbox(f"bench-{index}", **options))
    pod = node.pod(str(sandbox_id))
    if not host:
        gateway = node.gateway(KINDS[kind])
        if ipaddress.ip_address(pod.ip) not in gateway.network:
            raise RuntimeError(f"{kind} pod got {pod.ip!r}, not an address of {gateway}")
    _, stop = timed(lambda: node.remove_pod(pod))
    return start, stop, pod.id


def starts(node: CriNode, count: int) -> dict[str, float]:
    """exec + VERSION medians of the plugin each network's conflist starts with, taking
    turns."""
    samples: dict[str, list[float]] = {"tartan": [], "bridge": []}
    for _ in range(count):
        for plugin, out in samples.items():
            out.append(exec_version(node, plugin))
    return {plugin: Stats.of(out).median for plugin, out in samples.items()}


def measure(node: CriNode, pods: int, warmup: int) -> list[Series]:
    series = {kind: Series(kind) for kind in KINDS}
    kinds = list(KINDS)
    for round_ in range(warmup + pods):
        order = kinds[round_ % len(kinds):] + kinds[:round_ % len(kinds)]
        for kind in order:
            start, stop, sandbox_id = one_pod(node, kind, round_)
            if round_ >= warmup:
                series[kind].start.append(start)
                series[kind].stop.append(stop)
                if kind == "tartan":
                    series[kind].agent_add.append(agent_ms(node, sandbox_id, "ADD"))
                    series[kind].agent_del.append(agent_ms(node, sandbox_id, "DEL"))
    return list(series.values())


def medians(series: list[Series]) -> dict[str, tuple[float, float]]:
    return {s.kind: (Stats.of(s.start).median, Stats.of(s.stop).median) for s in series}


def rows(series: list[Series]) -> list[list[str]]:
    med = medians(series)
    floor = med[HOST_NETWORK]
    out = [["network", "start med", "start p95", "stop med", "stop p95", "CNI start",
            "CNI stop", "start Tartan/ref", "stop Tartan/ref"]]
    for s in series:
        start, stop = Stats.of(s.start), Stats.of(s.stop)
        cni = ("", "") if s.kind == HOST_NETWORK else (
            f"{start.median - floor[0]:.1f}", f"{stop.median - floor[1]:.1f}")
        ratio = [f"{med['tartan'][i] / med['reference'][i]:.2f}x" if s.kind == "tartan"
                 else "" for i in (0, 1)]
        out.append([s.kind, f"{start.median:.1f}", f"{start.p95:.1f}", f"{stop.median:.1f}",
                    f"{stop.p95:.1f}", *cni, *ratio])
    return out


def summary(series: list[Series], pods: int, execs: dict[str, float]) -> str:
    med = medians(series)
    floor = med[HOST_NETWORK]
    share = [(med["tartan"][i] - floor[i]) / (med["reference"][i] - floor[i]) for i in (0, 1)]
    tartan = next(s for s in series if s.kind == "tartan")
    agent = (f" tartand's own time for the Tartan pods' requests (its log), median: ADD "
             f"{Stats.of(tartan.agent_add).median:.1f} ms, the DELs of one pod "
             f"{Stats.of(tartan.agent_del).median:.1f} ms.") if tartan.agent_add else ""
    started = (f" One exec + VERSION, median: the installed `tartan` {execs['tartan']:.1f} ms "
               f"(the bundle's CNI executable), the reference `bridge` {execs['bridge']:.1f} "
               "ms.") if execs else ""
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"Load average when the table was written: {load} (2 cores). "
            f"Median of {pods} sandboxes each, in ms. Tartan/reference: start "
            f"{med['tartan'][0] / med['reference'][0]:.2f}x, stop "
            f"{med['tartan'][1] / med['reference'][1]:.2f}x; the CNI's share alone (minus the "
            f"host-network sandbox): start {share[0]:.2f}x, stop {share[1]:.2f}x.{agent}"
            f"{started}")


def chart(series: list[Series], path: Path) -> None:
    def bars(pick: Callable[[Series], list[float]]) -> list[Bar]:
        out = []
        for s in series:
            st = Stats.of(pick(s))
            out.append(Bar(s.kind, (st.median,), whisker=st.p95, note=f"{st.median:.0f} ms"))
        return out

    bar_chart([Panel("CRI RUNPODSANDBOX, MS (MEDIAN, WHISKER P95)", bars(lambda s: s.start)),
               Panel("CRI STOP + REMOVEPODSANDBOX, MS", bars(lambda s: s.stop))], path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=20, help="measured sandboxes per kind")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted rounds first")
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the node comes down
    node = CriNode(Path(tempfile.mkdtemp(prefix="tartan-bench-cri-")), agent=True)
    try:
        node.up()
        series = measure(node, args.pods, args.warmup)
        execs = starts(node, args.pods)
    finally:
        problems = take_down(node) + [f"still there: {x}" for x in leftovers(node)]
    if problems:
        print("the node was not removed cleanly:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    table = rows(series)
    print(plain(table))
    print(summary(series, args.pods, execs))
    if args.report:
        png = args.report.with_suffix(".png")
        chart(series, png)
        report.write(args.report, "CRI pod sandbox start and stop: Tartan and the reference",
                     __doc__, f"{markdown(table)}\n\n{summary(series, args.pods, execs)}", png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
