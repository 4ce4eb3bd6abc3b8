"""Data-plane benchmark on the namespace lab: throughput per backend and join convergence.

    .venv/bin/python bench/dataplane.py [--seconds 4] [--rounds 3] [--runs R,..] [--report PATH]

For every run (vxlan, host-gw, directrouting, and host-gw over an underlay that takes BIG
TCP packets, `lab up --big-tcp`) a lab is brought up (SQLite store), and in the same run:
- pod -> pod TCP throughput across nodes (iperf3) against the underlay between the same two
  node namespaces, alternating round by round; DirectRouting is measured for a peer on the
  same segment (host-gw route) and one across the router (VXLAN), each against its underlay;
- for vxlan, two more baselines between the same node namespaces (dataplane_paths.py): the
  kernel's own VXLAN device (no pods, no bridge) and the objects flannel builds (reference
  `bridge` plugin pods, a VXLAN device with flannel's settings, its routes, neighbours and
  FDB entries), in turns with the underlay and Tartan; then each try of what the kernel
  offers (offloads, br_netfilter, conntrack), applied to both nodes, against the bare device;
- same-node pod -> pod (through the bridge) against a raw veth pair between two namespaces
  with the kernel's defaults;
- join convergence: a node joins; from the moment its lease exists in the store, every
  other node pings an address in the new subnet every 10 ms; the time to each node's first
  reply is measured (the address is put on the new node's loopback as soon as the lease
  shows, so pod creation is not part of it).
Everything lives in namespaces the lab and this script make, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dataplane_paths import BareVxlan, FlannelBuilt, Try, tries
from dataplane_paths import Node as PathNode
from pngchart import Bar, Panel, bar_chart

from tartan.debug.lab import Lab, UpOptions
from tartan.debug.lab_state import LabState, Node, Pod
from tartan.ipam.lease_sqlite import SqliteLeaseStore

# A run: a lab's backend, and whether its underlay takes BIG TCP packets (--big-tcp).
RUNS = {"vxlan": ("vxlan", False), "host-gw": ("host-gw", False),
        "directrouting": ("directrouting", False), "host-gw+bigtcp": ("host-gw", True)}
SHORT = {"vxlan": "vxlan", "host-gw": "host-gw", "directrouting": "DR",
         "host-gw+bigtcp": "big TCP"}  # chart labels


@dataclass
class Pair:
    label: str
    short: str  # for the chart: a few words, no symbols
    underlay: list[float] = field(default_factory=list)  # Gbit/s per round
    overlay: list[float] = field(default_factory=list)
    baseline_name: str = "underlay"

    @property
    def ratio(self) -> float:
        return statistics.median(self.overlay) / statistics.median(self.underlay)


def netns_run(ns: str, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)


def iperf(server_ns: str, server_ip: str, client_ns: str, seconds: int) -> float:
    """TCP throughput client -> server in Gbit/s (one stream, like a pod's connection)."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B",
                               server_ip], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            out = netns_run(client_ns, ["iperf3", "-c", server_ip, "-t", str(seconds), "-J"],
                            timeout=seconds + 30)
            result = json.loads(out.stdout or "{}")
            if out.returncode == 0 and "sum_received" in result.get("end", {}):
                return result["end"]["sum_received"]["bits_per_second"] / 1e9
            time.sleep(0.1)  # the server is not listening yet
        raise RuntimeError(f"iperf3 {client_ns} -> {server_ip} failed: "
                           f"{result.get('error') or out.stdout[-300:]}")
    finally:
        server.kill()
        server.wait()


def measure_pair(pair: Pair, base: tuple[str, str, str], over: tuple[str, str, str],
                 rounds: int, seconds: int) -> Pair:
    for _ in range(rounds):
        pair.underlay.append(iperf(*base, seconds))
        pair.overlay.append(iperf(*over, seconds))
    return pair


def first_pod(state: LabState, node: Node) -> Pod:
    return state.pods_of(node.name)[0]


def cross_node_pairs(state: LabState, run: str) -> list[tuple[str, str, Node, Node]]:
    one = state.nodes[0]
    if run != "directrouting":
        return [(f"{run}: pod -> pod across nodes", SHORT[run], one, state.nodes[1])]
    same = next(n for n in state.nodes[1:] if n.segment == one.segment)
    other = next(n for n in state.nodes[1:] if n.segment != one.segment)
    return [("directrouting, same segment (host-gw route)", "DR same segment", one, same),
            ("directrouting, across the router (vxlan)", "DR across router", one, other)]


def throughput(state: LabState, run: str, rounds: int, seconds: int) -> list[Pair]:
    out = []
    for label, short, src, dst in cross_node_pairs(state, run):
        pod_src, pod_dst = first_pod(state, src), first_pod(state, dst)
        out.append(measure_pair(Pair(label, short), (dst.netns, dst.ip, src.netns),
                                (pod_dst.netns, pod_dst.ip, pod_src.netns), rounds, seconds))
    return out


def vxlan_baselines(state: LabState, rounds: int, seconds: int) -> list[Pair]:
    """Tartan's pod path against the underlay, the bare VXLAN device and the flannel-built
    path, in turns; then each try against the bare device."""
    one, two = state.nodes[0], state.nodes[1]
    a, b = PathNode(one.netns, one.ip), PathNode(two.netns, two.ip)
    pod_a, pod_b = first_pod(state, one), first_pod(state, two)
    tartan = (pod_b.netns, pod_b.ip, pod_a.netns)
    bare, flannel = BareVxlan(a, b), FlannelBuilt(a, b)
    try:
        _, bare_b = bare.build()
        (fl_a, _), (fl_b, fl_b_ip) = flannel.build()
        paths = {"underlay": (two.netns, two.ip, one.netns),
                 "bare VXLAN device": (two.netns, bare_b, one.netns),
                 "flannel-built path": (fl_b, fl_b_ip, fl_a), "tartan": tartan}
        got = turns(paths, rounds, seconds)
        out = [Pair(f"vxlan: pod -> pod across nodes, against the {name}", short,
                    got[name], got["tartan"], name)
               for name, short in (("underlay", "vxlan"), ("bare VXLAN device", "vs bare"),
                                   ("flannel-built path", "vs flannel"))]
        out += [tried(one_try, [one.netns, two.netns], paths, rounds, seconds)
                for one_try in tries(cluster_cidr(state))]
        return out
    finally:
        flannel.remove()
        bare.remove()


def turns(paths: dict[str, tuple[str, str, str]], rounds: int,
          seconds: int) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            got[name].append(iperf(*path, seconds))
    return got


def tried(one_try: Try, nodes: list[str], paths: dict[str, tuple[str, str, str]], rounds: int,
          seconds: int) -> Pair:
    for ns in nodes:
        one_try.apply(ns)
    try:
        got = turns({k: paths[k] for k in ("bare VXLAN device", "tartan")}, rounds, seconds)
    finally:
        for ns in nodes:
            one_try.undo(ns)
    return Pair(f"vxlan with {one_try.name}", "try", got["bare VXLAN device"], got["tartan"],
                "bare VXLAN device")


def cluster_cidr(state: LabState) -> str:
    """The lab's pod network (its pods' addresses are in 10.244.0.0/16 unless told)."""
    first = state.pods[0].ip.split(".")
    return f"{first[0]}.{first[1]}.0.0/16"


def raw_veth() -> tuple[str, str]:
    """Two namespaces joined by a bare veth pair: the same-node baseline."""
    a, b = f"tbv{uuid.uuid4().hex[:6]}a", f"tbv{uuid.uuid4().hex[:6]}b"
    for ns in (a, b):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "link", "add", "eth0", "netns", a, "type", "veth", "peer", "name",
                    "eth0", "netns", b], check=True)
    for ns, ip in ((a, "192.0.0.201/30"), (b, "192.0.0.202/30")):
        netns_run(ns, ["ip", "addr", "add", ip, "dev", "eth0"])
        netns_run(ns, ["ip", "link", "set", "eth0", "up"])
    return a, b


def same_node(state: LabState, run: str, rounds: int, seconds: int) -> Pair:
    p1, p2 = state.pods_of(state.nodes[0].name)[:2]
    a, b = raw_veth()
    try:
        pair = Pair(f"{run}: same node, pod -> pod via the bridge", f"{SHORT[run]} same node",
                    baseline_name="raw veth pair")
        return measure_pair(pair, (b, "192.0.0.202", a), (p2.netns, p2.ip, p1.netns),
                            rounds, seconds)
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], check=False)


# ----------------------------------------------------------------------- convergence

def new_lease(store: SqliteLeaseStore, known: set, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leases, _ = store.list_leases()
        fresh = [x for x in leases if x.subnet not in known]
        if fresh:
            return fresh[0]
        time.sleep(0.002)
    raise RuntimeError("the joining node's lease did not appear")


def first_reply(pod: Pod, target: str, started: float, results: dict) -> None:
    out = netns_run(pod.netns, ["ping", "-D", "-n", "-i", "0.01", "-W", "0.05", "-c", "500",
                                target], timeout=30)
    for line in out.stdout.splitlines():
        if line.startswith("[") and "bytes from" in line:
            results[pod.node] = float(line[1:line.index("]")]) - started
            return
    results[pod.node] = float("inf")


def join_convergence(lab: Lab, state: LabState, ttl: float = 24 * 3600.0) -> dict[str, float]:
    store = SqliteLeaseStore(lab.dir / "leases.db")
    known = {x.subnet for x in store.list_leases()[0]}
    joiner = threading.Thread(target=lab.join, daemon=True)
    joiner.start()
    lease = new_lease(store, known)
    created = lease.expiration - ttl  # the lease's own birth time, from the store
    target = str(lease.subnet.network_address + 1)
    node = next(n for n in lab.load().nodes if n.ip == lease.attrs.public_ip)
    netns_run(node.netns, ["ip", "addr", "add", f"{target}/32", "dev", "lo"])
    results: dict[str, float] = {}
    pingers = [threading.Thread(target=first_reply, args=(first_pod(state, n), target, created,
                                                          results)) for n in state.nodes]
    for t in pingers:
        t.start()
    for t in pingers + [joiner]:
        t.join()
    return results


# ---------------------------------------------------------------------------- labs

def lab_options(run: str) -> UpOptions:
    backend, big_tcp = RUNS[run]
    if backend == "host-gw":
        return UpOptions(backend=backend, nodes=2, segments=1, pods_per_node=2, big_tcp=big_tcp)
    nodes = 3 if backend == "directrouting" else 2
    return UpOptions(backend=backend, nodes=nodes, segments=2, pods_per_node=2)


def run_backend(run: str, args: argparse.Namespace) -> tuple[list[Pair], dict[str, float]]:
    name = "bench" + "".join(c for c in run if c.isalnum())[:7]
    lab = Lab(name, say=lambda line: print(f"  {line}"))
    try:
        state = lab.up(lab_options(run))
        if run == "vxlan":
            pairs = vxlan_baselines(state, args.rounds, args.seconds)
        else:
            pairs = throughput(state, run, args.rounds, args.seconds)
        pairs.append(same_node(state, run, args.rounds, args.seconds))
        convergence = join_convergence(lab, state)
        return pairs, convergence
    finally:
        lab.down()


def table(pairs: list[Pair], joins: dict[str, dict[str, float]]) -> str:
    rows = ["| path | baseline | baseline Gbit/s | Tartan Gbit/s | Tartan/baseline |",
            "|---|---|---:|---:|---:|"]
    for p in pairs:
        rows.append(f"| {p.label} | {p.baseline_name} | {statistics.median(p.underlay):.2f} | "
                    f"{statistics.median(p.overlay):.2f} | {p.ratio * 100:.1f} % |")
    rows += ["", "| lab | join convergence, slowest peer | every peer (s) |", "|---|---:|---|"]
    for run, res in joins.items():
        each = ", ".join(f"{k} {v:.3f}" for k, v in sorted(res.items()))
        rows.append(f"| {run} | {max(res.values()):.3f} s | {each} |")
    return "\n".join(rows)


def chart(pairs: list[Pair], path: Path) -> None:
    bars = []
    for p in pairs:
        bars.append(Bar(f"{p.short} base", (statistics.median(p.underlay),)))
        bars.append(Bar(f"{p.short} tartan", (statistics.median(p.overlay),),
                        note=f"{p.ratio * 100:.0f} %"))
    bar_chart([Panel("TCP THROUGHPUT, MEDIAN GBIT/S (BASE = UNDERLAY OR RAW VETH)", bars)], path)


def write_report(path: Path, text: str, pairs: list[Pair], command: str) -> None:
    png = path.with_suffix(".png")
    chart(pairs, png)
    header = (f"# Data plane: throughput per backend and join convergence\n\n"
              f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
              f"Command (as root): `{command}`\n\n{__doc__.split(chr(10), 2)[2]}\n")
    path.write_text(f"{header}\n{text}\n\n![throughput]({png.name})\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", default=",".join(RUNS),
                        help=f"comma-separated, from {', '.join(RUNS)}")
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    pairs, joins = [], {}
    for run in args.runs.split(","):
        if run not in RUNS:
            parser.error(f"unknown run {run!r}: choose from {', '.join(RUNS)}")
        print(f"{run}:", flush=True)
        got, joins[run] = run_backend(run, args)
        pairs += got
    text = table(pairs, joins)
    print(text)
    if args.report:
        write_report(args.report, text, pairs, " ".join(["bench/dataplane.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

