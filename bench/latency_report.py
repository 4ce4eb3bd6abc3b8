"""The Markdown report and its PNG chart for the CNI latency benchmark."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from latency_stats import PairSeries, StartSeries, Stats, markdown, pair_table, start_table
from pngchart import Bar, Panel, bar_chart


@dataclass
class Section:
    """A further table of the report (concurrency, memory), with how it was measured."""

    title: str
    rows: list[list[str]]
    note: str


@dataclass
class Outcome:
    """What a run measured, and how it was set up."""

    command: str
    cni_version: str
    warmup: int
    pairs: int
    setup: list[str]  # one line per implementation
    results: list[PairSeries]
    starts: list[StartSeries]
    sections: list[Section] = field(default_factory=list)


def chart(results: Sequence[PairSeries], starts: Sequence[StartSeries], path: Path) -> None:
    pairs = [Bar(f"{s.impl} {s.mode}", (Stats.of(s.add).median, Stats.of(s.delete).median),
                 Stats.of(s.pair).p95, f"{Stats.of(s.pair).median:.0f} ms") for s in results]
    procs = [Bar(s.label.replace(" exec+VERSION", ""), (Stats.of(s.samples).median,),
                 Stats.of(s.samples).p95, f"{Stats.of(s.samples).median:.1f} ms") for s in starts]
    bar_chart([
        Panel("ADD + DEL pair, medians in ms (whisker: p95 of the pair)", pairs, ("ADD", "DEL")),
        Panel("Process start (plugins: exec + VERSION), median in ms (whisker: p95)", procs),
    ], path)


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError:
        return "unknown"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _tartan_version() -> str:
    try:
        return metadata.version("tartan")
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_facts() -> dict[str, str]:
    reference = _first_line(["dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins"])
    return {
        "cpu": f"{_cpu()}, nproc {os.cpu_count()}",
        "kernel": platform.release(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "tartan": _tartan_version(),
        "reference plugins": f"containernetworking-plugins {reference} (/usr/lib/cni)",
        "iptables": _first_line(["iptables", "-V"]),
    }


METHOD = """\
All plugins run inside a network namespace made for the run (the "node"), so bridges, veths
and iptables rules never touch the host's namespace; every pair is an ADD then a DEL in a
fresh pod namespace. Implementations alternate pair by pair, and which one goes first
alternates too. {warmup} warm-up pair(s) per implementation and mode (the first creates the
bridge) are not counted; then {pairs} pairs each.

The bench process enters the node namespace itself with setns(2) and execs the plugin
directly with the CNI environment and the config on stdin, timing `subprocess.run` with
`time.perf_counter`: fork + exec + the plugin's work + exit, and no `ip netns exec` (its
own cost is listed under process start, measured from the host namespace against
`/bin/true`). Pod namespaces are made and removed outside the timed region. "pair" is the
ADD + DEL of one pod; Tartan/ref is the ratio of pair medians. Times in milliseconds."""


def report_text(outcome: Outcome, png_name: str) -> str:
    facts = "\n".join(f"- {k}: {v}" for k, v in machine_facts().items())
    setup = "\n".join(f"- {line}" for line in outcome.setup)
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    method = METHOD.format(warmup=outcome.warmup, pairs=outcome.pairs)
    pairs = ""
    if outcome.results:
        pairs = (f"## ADD and DEL\n\n{markdown(pair_table(outcome.results))}\n\n"
                 f"![ADD and DEL medians]({png_name})\n\n")
    sections = "".join(f"\n## {s.title}\n\n{s.note}\n\n{markdown(s.rows)}\n"
                       for s in outcome.sections)
    return f"""# CNI ADD/DEL latency: Tartan against the reference plugins

Date: {when}

Machine:
{facts}

Command (as root): `{outcome.command}`

Implementations (cniVersion {outcome.cni_version}, isGateway true, one bridge and one /24
per implementation, IPAM data dir in a temporary directory; each mode with and without
ipMasq):
{setup}

## Method

{method}

{pairs}## Process start

{markdown(start_table(outcome.starts))}
{sections}"""


def write_report(outcome: Outcome, path: Path) -> Path | None:
    """Write the report at `path` and, when there are pairs, its chart next to it; returns
    the chart's path (None without pairs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    png = path.with_suffix(".png")
    if outcome.results:
        chart(outcome.results, outcome.starts, png)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(report_text(outcome, png.name))
    tmp.replace(path)
    return png if outcome.results else None
