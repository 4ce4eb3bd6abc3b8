"""NetworkPolicy at scale on the namespace lab: sync times and the per-packet cost.

    .venv/bin/python bench/netpol.py [--namespaces 50] [--pods 5000] [--policies 1000]
                                     [--changes 10] [--pings 400] [--report PATH]

A one-node lab (SQLite store, the real tartand with its enforcer, two real pods on the node)
is brought up, then the store is seeded the way `tartanctl apply` and the nodes' CNI records
fill it: namespaces, pods (labels, a named port; an address and a node each, 1 in 50 of them
on the lab's node, as on a 50-node cluster), and policies selecting them by label and
admitting peers by namespace and pod labels. Measured, in this run:
- full sync: the enforcer's own time for its first sync after tartand starts on the seeded
  store (read everything, validate, compile, apply sets and rules for real), from /status;
- one change: a policy's port changed, and one pod's labels changed: from the store write to
  /status reporting a sync at that revision or later (rules applied), each `--changes` times,
  a lone change each (0.3 s apart); the enforcer's own time for each sync is listed too;
- per-packet cost: ping RTT between the two real pods of the node (not selected by any
  policy), with no policies in the store, with all of them in force, and with none again.
Everything lives in the lab's namespaces, removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import report
from pngchart import Bar, Panel, bar_chart

from tartan.debug import lab_agents, lab_store
from tartan.debug.lab import Lab, UpOptions
from tartan.debug.lab_state import LabState
from tartan.ipam.lease_sqlite import SqliteLeaseStore

NODE = "node1"
FAKE_PODS = ipaddress.ip_network("10.96.0.0/12")  # addresses of pods with no sandbox


@dataclass
class Figures:
    full_sync_ms: float = 0.0
    policy_change_ms: list[float] = field(default_factory=list)
    label_change_ms: list[float] = field(default_factory=list)
    sync_ms: list[float] = field(default_factory=list)  # the enforcer's own, for each change
    rtt_ms: dict[str, list[float]] = field(default_factory=dict)


# -- the objects ----------------------------------------------------------------------


def namespace(i: int) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": f"ns{i}", "labels": {"team": f"t{i % 5}"}}}


def pod(ns: int, k: int, index: int, nodes: int) -> tuple[dict, dict]:
    name, node = f"p{k}", NODE if index % nodes == 0 else f"node{index % nodes + 1}"
    manifest = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": f"ns{ns}", "name": name,
                             "labels": {"app": f"a{k % 10}", "tier": ("web", "db")[k % 2]}},
                "spec": {"nodeName": node, "containers": [
                    {"name": "c", "ports": [{"containerPort": 8080, "name": "http"}]}]}}
    record = {"ips": [str(FAKE_PODS[index + 1])], "node": node, "containerID": f"c{index}"}
    return manifest, record


def policy(ns: int, j: int, port: int = 80) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": f"ns{ns}", "name": f"pol{j}"},
            "spec": {"podSelector": {"matchLabels": {"app": f"a{j % 10}"}},
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                         "team": f"t{j % 5}"}}, "podSelector": {"matchLabels": {
                             "tier": "web"}}}],
                                  "ports": [{"port": port}, {"port": "http"}]}]}}


def seed(store: SqliteLeaseStore, args: argparse.Namespace) -> None:
    per_ns = args.pods // args.namespaces
    for i in range(args.namespaces):
        store.put_object("namespaces", f"ns{i}", namespace(i))
        for k in range(per_ns):
            manifest, record = pod(i, k, i * per_ns + k, args.nodes)
            store.put_object("pods", f"ns{i}/p{k}", manifest)
            store.put_object("podips", f"ns{i}/p{k}", record)
    for n in range(args.policies):
        store.put_object("networkpolicies", f"ns{n % args.namespaces}/pol{n // args.namespaces}",
                         policy(n % args.namespaces, n // args.namespaces))


def unseed(store: SqliteLeaseStore) -> None:
    objects, _ = store.list_objects()
    for key in objects["networkpolicies"]:
        store.delete_object("networkpolicies", key)


# -- what tartand says ----------------------------------------------------------------


def object_revision(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT revision FROM tartan_object_state").fetchone()[0]


def policy_status(state: LabState) -> dict:
    doc = lab_agents.status(state.node(NODE)) or {}
    return doc.get("networkPolicy") or {}


def synced_at(state: LabState, revision: int, timeout: float = 120.0) -> float:
    """Seconds until the node reports a sync of `revision` or later."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if policy_status(state).get("revision", -1) >= revision:
            return time.perf_counter() - started
        time.sleep(0.005)
    raise RuntimeError(f"{NODE} did not sync revision {revision} in {timeout:g}s: "
                       f"{policy_status(state)}")


def change(state: LabState, store: SqliteLeaseStore, db: Path, kind: str, key: str,
           value: dict, figures: Figures) -> float:
    """Write one object; ms until the node reports it applied. Then a pause, so that the
    next change is a lone one (not coalesced with this one by the debounce)."""
    store.put_object(kind, key, value)
    took = synced_at(state, object_revision(db)) * 1000
    figures.sync_ms.append(float(policy_status(state)["lastSyncMs"]))
    time.sleep(0.3)
    return took


# -- per-packet cost ------------------------------------------------------------------


def rtt(state: LabState, pings: int) -> float:
    """Average ping RTT (ms) between the node's two real pods."""
    src, dst = state.pods_of(NODE)[:2]
    out = subprocess.run(["ip", "netns", "exec", src.netns, "ping", "-n", "-q", "-c",
                          str(pings), "-i", "0.002", dst.ip], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    line = next(line for line in out.splitlines() if "rtt" in line)
    return float(line.split("=")[1].split("/")[1])


def rtt_rounds(state: LabState, pings: int, rounds: int = 3) -> list[float]:
    return [rtt(state, pings) for _ in range(rounds)]


# -- the run --------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Figures:
    figures = Figures()
    lab = Lab("benchnp", say=lambda line: print(f"  {line}"))
    try:
        state = lab.up(UpOptions(backend="vxlan", nodes=1, segments=1, pods_per_node=2))
        db = lab_store.sqlite_path(lab.dir)
        store = SqliteLeaseStore(db)
        figures.rtt_ms["no policies"] = rtt_rounds(state, args.pings)
        lab_agents.stop_agent(state.node(NODE))
        seed(store, args)
        lab.restart(NODE)
        state = lab.load()
        synced_at(state, object_revision(db))
        figures.full_sync_ms = float(policy_status(state)["lastSyncMs"])
        figures.rtt_ms[f"{args.policies} policies"] = rtt_rounds(state, args.pings)
        for i in range(args.changes):
            figures.policy_change_ms.append(change(
                state, store, db, "networkpolicies", "ns3/pol1", policy(3, 1, 81 + i % 2),
                figures))
            manifest, _ = pod(7, 1, 7 * (args.pods // args.namespaces) + 1, args.nodes)
            manifest["metadata"]["labels"]["round"] = str(i)
            figures.label_change_ms.append(change(state, store, db, "pods", "ns7/p1",
                                                  manifest, figures))
        unseed(store)
        synced_at(state, object_revision(db))
        figures.rtt_ms["none again"] = rtt_rounds(state, args.pings)
        store.close()
        return figures
    finally:
        lab.down()


def table(f: Figures, args: argparse.Namespace) -> str:
    base = statistics.median(f.rtt_ms["no policies"] + f.rtt_ms["none again"])
    loaded = statistics.median(f.rtt_ms[f"{args.policies} policies"])
    rows = [f"Cluster: {args.namespaces} namespaces, {args.pods} pods "
            f"({args.pods // args.nodes} on the measured node), {args.policies} policies.", "",
            "| what | measured | goal |", "|---|---:|---:|",
            f"| full sync (first sync after start) | {f.full_sync_ms:.0f} ms | 2000 ms |",
            f"| one policy changed, write to applied (median of {len(f.policy_change_ms)}) | "
            f"{statistics.median(f.policy_change_ms):.0f} ms | 100 ms |",
            f"| one pod's labels changed, write to applied (median of "
            f"{len(f.label_change_ms)}) | {statistics.median(f.label_change_ms):.0f} ms | "
            "100 ms |",
            f"| pod-to-pod ping RTT with the policies / without | {loaded / base:.2f}x | "
            "1.10x |", "", "| ping RTT (ms, average of each round) | rounds |", "|---|---|"]
    rows += [f"| {name} | {', '.join(f'{v:.3f}' for v in values)} |"
             for name, values in f.rtt_ms.items()]
    rows += ["", f"Changes, ms: policy {', '.join(f'{v:.0f}' for v in f.policy_change_ms)}; "
             f"labels {', '.join(f'{v:.0f}' for v in f.label_change_ms)}.",
             "The enforcer's own time for each of these syncs (snapshot, compile, apply; "
             f"from /status), ms: {', '.join(f'{v:.0f}' for v in f.sync_ms)}"]
    return "\n".join(rows)


def chart(f: Figures, path: Path) -> None:
    bars = [Bar("full sync", (f.full_sync_ms,), note=f"{f.full_sync_ms:.0f} ms"),
            Bar("policy change", (statistics.median(f.policy_change_ms),),
                note=f"{statistics.median(f.policy_change_ms):.0f} ms"),
            Bar("label change", (statistics.median(f.label_change_ms),),
                note=f"{statistics.median(f.label_change_ms):.0f} ms")]
    rtts = [Bar(name, (statistics.median(v),), note=f"{statistics.median(v):.3f}")
            for name, v in f.rtt_ms.items()]
    bar_chart([Panel("NETWORKPOLICY SYNC, MS (STORE WRITE TO RULES APPLIED)", bars),
               Panel("POD TO POD PING RTT, MS", rtts)], path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--nodes", type=int, default=50, help="nodes the pods spread over")
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--pings", type=int, default=400)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the lab comes down
    figures = run(args)
    text = table(figures, args)
    print(text)
    if args.report:
        png = args.report.with_suffix(".png")
        chart(figures, png)
        report.write(args.report, "NetworkPolicy: sync times and per-packet cost", __doc__, text,
                     png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
