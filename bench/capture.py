"""What `tartanctl lab capture` costs the datapath: pod-to-pod TCP throughput across nodes
with and without a capture on every hop, and what the capture kept.

    .venv/bin/python bench/capture.py [--rounds 3] [--seconds 5] [--report PATH]

A 2-node VXLAN lab (SQLite store, the real tartand on each node, one pod per node). Each
round measures iperf3 from node1's pod to node2's three ways, in turn: no capture; the
installed `tartanctl lab capture` on all ten hops (both nodes), writing every packet to a
pcapng (stdout to /dev/null); and the same with the filter `icmp`, which keeps nothing of
the TCP stream (the cost of listening alone). Reported: the median throughput of each and
its ratio to no capture, the packets written and the ones the kernel dropped for the
capture's sockets (the capture falls behind; the node's traffic does not wait for it).
Everything lives in the lab's namespaces, removed at the end.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import report
from dataplane import iperf
from pngchart import Bar, Panel, bar_chart

from tartan.debug.lab import Lab, UpOptions

TARTANCTL = str(Path(sys.executable).parent / "tartanctl")
MODES = ("no capture", "capture, every packet written", "capture, filter keeps none")


@dataclass
class Figures:
    gbits: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MODES})
    summaries: list[str] = field(default_factory=list)


def capture(lab: Lab, src: str, dst: str, path: Path, filter_words: list[str]
            ) -> subprocess.Popen:
    proc = subprocess.Popen([TARTANCTL, "lab", "capture", "--name", lab.name, src, "--to", dst,
                             "-w", str(path), *filter_words], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if not line.startswith("capture: listening"):
        proc.kill()
        raise RuntimeError(f"capture did not start: {line}{proc.stderr.read()}")
    return proc


def run(args: argparse.Namespace) -> Figures:
    figures = Figures()
    lab = Lab("benchcap", say=lambda line: print(f"  {line}"))
    try:
        state = lab.up(UpOptions(backend="vxlan", nodes=2, segments=1, pods_per_node=1))
        src, dst = state.pods_of("node1")[0], state.pods_of("node2")[0]
        with tempfile.TemporaryDirectory() as tmp:
            for round_ in range(args.rounds):
                for mode in MODES:
                    proc = None
                    if mode != MODES[0]:
                        words = ["icmp"] if mode == MODES[2] else []
                        proc = capture(lab, src.key, dst.key, Path(tmp) / f"{round_}.pcapng",
                                       words)
                    try:
                        gbits = iperf(dst.netns, dst.ip, src.netns, args.seconds)
                    finally:
                        if proc is not None:
                            proc.send_signal(signal.SIGINT)
                            _, err = proc.communicate(timeout=60)
                            figures.summaries.append(f"{mode}: {err.strip().splitlines()[-1]}")
                    figures.gbits[mode].append(gbits)
                    print(f"  round {round_ + 1} {mode}: {gbits:.2f} Gbit/s", flush=True)
                    time.sleep(0.5)
        return figures
    finally:
        lab.down()


def table(f: Figures) -> str:
    base = statistics.median(f.gbits[MODES[0]])
    rows = ["| what | pod-to-pod TCP, Gbit/s (median) | rounds | of no capture |",
            "|---|---:|---|---:|"]
    for mode in MODES:
        values = f.gbits[mode]
        rows.append(f"| {mode} | {statistics.median(values):.2f} | "
                    f"{', '.join(f'{v:.2f}' for v in values)} | "
                    f"{statistics.median(values) / base:.2f}x |")
    rows += ["", "What each capture said when it was stopped:", ""]
    rows += [f"- {line}" for line in f.summaries]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the lab comes down
    figures = run(args)
    text = table(figures)
    print(text)
    if args.report:
        png = args.report.with_suffix(".png")
        bar_chart([Panel("POD TO POD TCP ACROSS NODES, GBIT/S", [
            Bar(mode, (statistics.median(v),), note=f"{statistics.median(v):.2f}")
            for mode, v in figures.gbits.items()])], png)
        report.write(args.report, "Capture overhead", __doc__, text, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
