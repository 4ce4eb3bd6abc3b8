"""CNI ADD/DEL latency: Tartan (tartan-bridge + tartan-ipam) against the reference plugins.

Tartan comes as the venv's console scripts (`tartan`, in-process), or as the installed
bundle's CNI executable with the agent's CNI server up (`tartan-agent`, `tartan-meta` for the
meta plugin) or down (`tartan-bundle-fallback`); see cni_agent.py. --concurrency and
--memory add bursts of concurrent pods and the server's memory (cni_load.py).

Everything happens inside a throwaway "node" network namespace: the bridges, veths and
iptables rules of both implementations live there, never in the host's namespace. Each
ADD+DEL pair gets a fresh pod namespace. The implementations alternate pair by pair (and
which one goes first alternates too), with the same config apart from the bridge name and
subnet, with and without ipMasq.

Timing is free of `ip netns exec`: this process enters the node namespace itself with
setns(2) and execs each plugin directly (env + stdin, as a runtime does), so each
measurement is one fork+exec of the plugin, its work, and its exit. `ip netns exec`'s own
cost is measured separately and reported, not added.

Run as root (`make bench`):
    .venv/bin/python bench/cni_latency.py --pairs 40 --report bench/reports/cni_latency.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

# Siblings in bench/ (on sys.path as the script's folder), standard library only.
import cni_agent
from cni_load import (
    Concurrency,
    measure_memory,
    memory_table,
    startup_ceiling,
    throughput_table,
)
from cni_run import (
    CNI_VERSION,
    PLUGIN_PATH,
    REFERENCE_DIR,
    VENV_BIN,
    BenchError,
    Impl,
    Namespaces,
    check_add,
    check_del,
    cni_env,
    entered,
    ip,
    network_config,
    timed_exec,
)
from latency_report import Outcome, Section, write_report
from latency_stats import PairSeries, StartSeries, Stats, pair_table, plain, start_table

IMPLS = ("tartan", "reference", *cni_agent.BUNDLE_IMPLS)
MODES = ("masq", "nomasq")


# --- the measurements -------------------------------------------------------------------


@dataclass
class Bench:
    impls: list[Impl]
    modes: list[str]
    pairs: int
    warmup: int
    namespaces: Namespaces
    data_dir: Path
    counter: int = 0

    def one_pair(self, impl: Impl, mode: str) -> tuple[float, float]:
        """ADD then DEL in a fresh pod namespace; returns (add ms, del ms)."""
        self.counter += 1
        pod = self.namespaces.add(f"pod{self.counter}")
        cid = f"bench-{impl.name}-{mode}-{self.counter}"
        stdin = network_config(impl, mode, self.data_dir)
        try:
            add = timed_exec([str(impl.plugin)], cni_env(impl, "ADD", cid, pod), stdin)
            check_add(impl, add)
            delete = timed_exec([str(impl.plugin)], cni_env(impl, "DEL", cid, pod), stdin)
            check_del(impl, delete)
        finally:
            self.namespaces.remove(pod)
        return add.ms, delete.ms

    def run_mode(self, mode: str) -> list[PairSeries]:
        impls = [impl for impl in self.impls if mode in impl.modes]
        series = {impl.name: PairSeries(impl.name, mode) for impl in impls}
        for i in range(self.warmup + self.pairs):
            order = impls if i % 2 == 0 else list(reversed(impls))
            for impl in order:
                add, delete = self.one_pair(impl, mode)
                if i >= self.warmup:
                    series[impl.name].add.append(add)
                    series[impl.name].delete.append(delete)
            progress(f"{mode}: pair {i + 1}/{self.warmup + self.pairs}")
        return [series[impl.name] for impl in impls]

    def run_pairs(self) -> list[PairSeries]:
        if not self.pairs:
            return []
        return [s for mode in self.modes for s in self.run_mode(mode)]


def repeat(argv: list[str], env: dict[str, str], stdin: bytes, count: int) -> list[float]:
    return interleaved([(argv, env, stdin)], count)[0]


def interleaved(commands: Sequence[tuple[list[str], dict[str, str], bytes]],
                count: int) -> list[list[float]]:
    """`count` timings of each command, taken in turns (this machine's speed drifts over
    seconds: commands timed one after the other would be compared across the drift)."""
    samples: list[list[float]] = [[] for _ in commands]
    for turn in range(count + 1):  # the first turn only warms the page cache
        for argv, env, stdin in commands:
            run = timed_exec(argv, env, stdin)
            if run.code != 0:
                raise BenchError(f"{argv[0]} failed (exit {run.code}): {run.brief()}")
            if turn:
                samples[commands.index((argv, env, stdin))].append(run.ms)
    return samples


def start_label(impl: Impl, binary: Path) -> str:
    """tartan-bridge, tartan-ipam, reference bridge, reference host-local, bundle tartan..."""
    if impl.name in cni_agent.BUNDLE_IMPLS:
        return f"bundle {binary.name}"
    return binary.name if binary.name.startswith(impl.name) else f"{impl.name} {binary.name}"


def measure_starts(impls: Sequence[Impl], count: int) -> list[StartSeries]:
    """exec + VERSION of every plugin binary (once each), and Python's floor, in turns."""
    version_stdin = json.dumps({"cniVersion": CNI_VERSION}).encode()
    labels: list[str] = []
    commands: list[tuple[list[str], dict[str, str], bytes]] = []
    for impl in impls:
        for binary in (impl.plugin, impl.ipam_binary()):
            label = f"{start_label(impl, binary)} exec+VERSION"
            if label not in labels:
                labels.append(label)
                commands.append(([str(binary)], cni_env(impl, "VERSION"), version_stdin))
    labels.append("python -I -S -c pass")
    commands.append(([sys.executable, "-I", "-S", "-c", "pass"], {}, b""))
    return [StartSeries(label, samples)
            for label, samples in zip(labels, interleaved(commands, count), strict=True)]


def measure_netns_exec(node: str, count: int) -> StartSeries:
    """What `ip netns exec` would add to every measurement (run from the host namespace)."""
    samples = repeat(["ip", "netns", "exec", node, "/bin/true"], {"PATH": PLUGIN_PATH}, b"",
                     count)
    base = repeat(["/bin/true"], {}, b"", count)
    extra = [s - Stats.of(base).median for s in samples]
    return StartSeries("ip netns exec overhead", extra)


def progress(message: str) -> None:
    if sys.stderr.isatty():
        print(f"\r\033[K{message}", end="", file=sys.stderr, flush=True)


# --- main -------------------------------------------------------------------------------


def _choices(allowed: Sequence[str]):
    def parse(value: str) -> list[str]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in items if v not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}, got {value!r}")
        return list(dict.fromkeys(items))
    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=40, help="measured ADD+DEL pairs per "
                   "implementation and mode (default 40; 0 with --concurrency or --memory "
                   "measures only those)")
    p.add_argument("--warmup", type=int, default=1, help="uncounted pairs first (default 1)")
    p.add_argument("--modes", type=_choices(MODES), default=list(MODES),
                   help="masq,nomasq (default both)")
    p.add_argument("--impl", type=_choices(IMPLS), default=["tartan", "reference"],
                   help=f"any of {','.join(IMPLS)} (default tartan,reference)")
    p.add_argument("--meta", action="store_true", help="also the `tartan` meta plugin with "
                   "the agent up (= --impl ...,tartan-meta; measured in nomasq only)")
    p.add_argument("--tartan-ipam", default="tartan-ipam",
                   help="IPAM type for Tartan (default tartan-ipam; host-local to bench "
                   "tartan-bridge alone)")
    p.add_argument("--concurrency", type=int, default=0, metavar="N",
                   help="also N concurrent ADDs then N concurrent DELs: pods per second")
    p.add_argument("--rounds", type=int, default=3, help="rounds of --concurrency per "
                   "implementation and mode (default 3)")
    p.add_argument("--memory", type=int, default=0, metavar="PAIRS",
                   help="also the CNI server's VmRSS/VmHWM over PAIRS tartan-agent pairs, "
                   "sampled every 100")
    p.add_argument("--agent", choices=("server", "tartand"), default="server",
                   help="what serves tartan-agent's socket: the bare CNI server (python -m "
                   "tartan.cni.server, default) or the bundle's full tartand, as installed")
    p.add_argument("--report", type=Path, help="write a Markdown report (and a PNG next to it)")
    args = p.parse_args(argv)
    if args.meta and "tartan-meta" not in args.impl:
        args.impl.append("tartan-meta")
    extra = args.concurrency or args.memory
    if (args.pairs < 2 and not (args.pairs == 0 and extra)) or args.warmup < 0:
        p.error("--pairs must be at least 2 (or 0 with --concurrency/--memory) and --warmup "
                "at least 0")
    if args.concurrency < 0 or args.memory < 0 or args.rounds < 1:
        p.error("--concurrency and --memory must be positive, --rounds at least 1")
    return args


def preflight(impls: Sequence[Impl]) -> None:
    """Root, and every binary answers VERSION, before any namespace is made."""
    if os.geteuid() != 0:
        raise BenchError("needs root: it creates network namespaces")
    stdin = json.dumps({"cniVersion": CNI_VERSION}).encode()
    for impl in impls:
        for binary in (impl.plugin, impl.ipam_binary()):
            if not os.access(binary, os.X_OK):
                raise BenchError(f"{binary} is missing or not executable (run `make venv`)")
            reply = timed_exec([str(binary)], cni_env(impl, "VERSION"), stdin)
            if reply.code != 0:
                hint = " (or pass --tartan-ipam host-local)" if impl.name == "tartan" else ""
                raise BenchError(f"{binary} VERSION failed (exit {reply.code}): "
                                 f"{reply.brief()}{hint}")


def make_impls(names: Sequence[str], tartan_ipam: str, work: Path) -> list[Impl]:
    """The implementations asked for; the bundle's are skipped when it is not built."""
    known = {
        "tartan": Impl("tartan", VENV_BIN / "tartan-bridge", tartan_ipam,
                       (VENV_BIN, REFERENCE_DIR), "tartan0", "10.250.0.0/24"),
        "reference": Impl("reference", REFERENCE_DIR / "bridge", "host-local",
                          (REFERENCE_DIR,), "refbr0", "10.250.1.0/24"),
    }
    bundled = [n for n in names if n in cni_agent.BUNDLE_IMPLS]
    if bundled and not cni_agent.bundle_available():
        cni_agent.warn(cni_agent.missing_bundle_message())
    elif bundled:
        known.update(cni_agent.bundle_impls(bundled, work))
    impls = [known[n] for n in names if n in known]
    if not impls:
        raise BenchError("no implementation left to measure")
    return impls


AGENTS = {"server": "the bare CNI server (`python -m tartan.cni.server`)",
          "tartand": "the bundle's full tartand (SQLite store, reconcile loop, kernel monitor, "
                     "NetworkPolicy, metrics, --ip-masq)"}


def describe(impl: Impl, agent_kind: str = "server") -> str:
    plugin = f"`{impl.plugin}`"
    if impl.name in cni_agent.BUNDLE_IMPLS:
        plugin = f"`dist/tartan/tartan-cni` called as `{impl.plugin.name}`"
    if impl.subnet_file:
        return (f"{impl.name}: {plugin} (meta plugin, agent up) delegating to "
                f"tartan-bridge + `{impl.ipam}`, bridge `{impl.bridge}`, subnet {impl.subnet} "
                f"from `subnet.env` with FLANNEL_IPMASQ=true (so the delegate has no ipMasq)")
    socket = dict(impl.env).get("TARTAN_CNI_SOCKET")
    agent = ("" if socket is None else f", served by {AGENTS[agent_kind]}"
             if impl.name in cni_agent.AGENT_IMPLS else ", no agent (fallback)")
    return (f"{impl.name}: {plugin} + `{impl.ipam}`, bridge `{impl.bridge}`, "
            f"subnet {impl.subnet}{agent}")


@dataclass
class Measured:
    results: list[PairSeries]
    starts: list[StartSeries]
    sections: list[Section]


def measure(args: argparse.Namespace, impls: list[Impl], work: Path) -> Measured:
    """Make the node namespace, measure inside it, and remove every namespace made."""
    namespaces = Namespaces()
    data_dir = work / "data"
    data_dir.mkdir()
    starts_count = max(args.pairs, 20)
    sections: list[Section] = []
    try:
        node = Path(namespaces.add("node")).name
        overhead = measure_netns_exec(node, starts_count)
        with entered(node), ExitStack() as stack:
            ip("link", "set", "lo", "up")
            # Started here, the server shares this process's network and mount namespace.
            server = None
            if cni_agent.needs_agent(impls) or args.memory:
                kind = cni_agent.Tartand if args.agent == "tartand" else cni_agent.CniServer
                server = stack.enter_context(kind(work))
            starts = measure_starts(impls, starts_count)
            bench = Bench(impls, args.modes, args.pairs, args.warmup, namespaces, data_dir)
            results = bench.run_pairs()
            if args.concurrency:
                sections.append(concurrency_section(args, impls, bench))
            if args.memory and server is not None:
                sections.append(memory_section(args, impls, bench, server))
    finally:
        namespaces.remove_all()
        progress("")
    return Measured(results, [*starts, overhead], sections)


def concurrency_section(args: argparse.Namespace, impls: list[Impl], bench: Bench) -> Section:
    burst = Concurrency(impls, args.modes, args.concurrency, args.rounds, bench.namespaces,
                        bench.data_dir, bench.one_pair)
    results = burst.run(progress)
    ceilings = {i.name: startup_ceiling(i, args.concurrency, args.rounds) for i in impls}
    rows = throughput_table(results, ceilings)
    note = (f"{args.concurrency} ADDs started at once (each its own pod namespace, made "
            f"before timing), then their {args.concurrency} DELs at once; pods per second = "
            f"{args.concurrency} / wall-clock seconds until the last exits, median of "
            f"{args.rounds} rounds; implementations alternate round by round. The start-up "
            f"ceiling: {args.concurrency} execs of the same plugin answering VERSION (no "
            f"kernel work, no agent) at once, twice, as pods per second: on this machine's "
            f"{os.cpu_count()} cores, process start-up alone allows no more.")
    return Section(f"{args.concurrency} concurrent ADDs, then DELs", rows, note)


def memory_section(args: argparse.Namespace, impls: list[Impl], bench: Bench,
                   server: cni_agent.CniServer) -> Section:
    agent = next((i for i in impls if i.name == "tartan-agent"), None)
    if agent is None:
        raise BenchError("--memory needs tartan-agent (the bundle) among --impl")
    samples = measure_memory(server, agent, args.modes, args.memory, bench.one_pair, progress)
    note = (f"VmRSS and VmHWM (peak RSS) from /proc/<pid>/status of the CNI server "
            f"(`python -m tartan.cni.server`, pid {server.pid}) over {args.memory} sequential "
            f"tartan-agent ADD/DEL pairs ({', '.join(args.modes)} taking turns), sampled "
            f"every 100 pairs.")
    return Section(f"CNI server memory over {args.memory} ADD/DEL pairs",
                   memory_table(samples), note)


def run(args: argparse.Namespace) -> Outcome:
    work = Path(tempfile.mkdtemp(prefix="tartan-bench-"))
    try:
        impls = make_impls(args.impl, args.tartan_ipam, work)
        preflight(impls)
        measured = measure(args, impls, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Outcome(
        command=shlex.join([sys.executable, *sys.argv]), cni_version=CNI_VERSION,
        warmup=args.warmup, pairs=args.pairs, setup=[describe(i, args.agent) for i in impls],
        results=measured.results, starts=measured.starts, sections=measured.sections,
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM both unwind through the finally blocks that remove the namespaces
    # (SIGINT too when a shell started us in the background with it ignored).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        outcome = run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; its namespaces are removed", file=sys.stderr)
        return 130
    if outcome.results:
        print(plain(pair_table(outcome.results)))
        print()
    print(plain(start_table(outcome.starts)))
    for section in outcome.sections:
        print(f"\n{section.title}\n{plain(section.rows)}")
    if args.report:
        png = write_report(outcome, args.report)
        print(f"\nreport: {args.report}" + (f" (chart: {png})" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
