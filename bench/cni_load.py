"""Load for the CNI benchmarks: N concurrent ADDs then N concurrent DELs (pods per second),
and the CNI server's memory over many ADD/DEL pairs."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cni_agent import CniServer
from cni_run import Impl, Invocation, Namespaces, check_add, check_del, cni_env, network_config
from latency_stats import Stats

OnePair = Callable[[Impl, str], tuple[float, float]]


@dataclass
class Throughput:
    """Wall-clock seconds of each round of N concurrent ADDs, and of the N DELs after them."""

    impl: str
    mode: str
    pods: int
    add_s: list[float] = field(default_factory=list)
    del_s: list[float] = field(default_factory=list)

    def rates(self) -> tuple[float, float, float]:
        """Median pods per second: ADD, DEL, and ADD + DEL (a pod created and removed)."""
        add, delete = Stats.of(self.add_s).median, Stats.of(self.del_s).median
        both = Stats.of([a + d for a, d in zip(self.add_s, self.del_s, strict=True)]).median
        return self.pods / add, self.pods / delete, self.pods / both


def run_all(impl: Impl, command: str, pods: Sequence[tuple[str, str]],
            config: Path) -> tuple[float, list[Invocation]]:
    """Start one plugin process per (container id, netns) at once; seconds until the last
    exits, and each one's outcome."""
    start = time.perf_counter()
    procs = []
    for cid, netns in pods:
        with open(config, "rb") as stdin:
            procs.append(subprocess.Popen([str(impl.plugin)], stdin=stdin,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          env=cni_env(impl, command, cid, netns)))
    outs = [proc.communicate(timeout=300) for proc in procs]
    seconds = time.perf_counter() - start
    runs = [Invocation(0.0, proc.returncode, out.decode(errors="replace"),
                       err.decode(errors="replace")) for proc, (out, err) in zip(procs, outs,
                                                                                  strict=True)]
    return seconds, runs


@dataclass
class Concurrency:
    impls: list[Impl]
    modes: list[str]
    pods: int
    rounds: int
    namespaces: Namespaces
    data_dir: Path
    one_pair: OnePair  # one sequential ADD+DEL, to warm up (the first ADD makes the bridge)
    counter: int = 0

    def one_round(self, impl: Impl, mode: str, series: Throughput) -> None:
        self.counter += 1
        config = self.data_dir / f"concurrent-{impl.name}-{mode}.json"
        config.write_bytes(network_config(impl, mode, self.data_dir))
        pods = [(f"burst-{impl.name}-{mode}-{self.counter}-{i}",
                 self.namespaces.add(f"b{self.counter}-{i}")) for i in range(self.pods)]
        try:
            add_s, adds = run_all(impl, "ADD", pods, config)
            for run in adds:
                check_add(impl, run)
            del_s, dels = run_all(impl, "DEL", pods, config)
            for run in dels:
                check_del(impl, run)
        finally:
            for _, netns in pods:
                self.namespaces.remove(netns)
        series.add_s.append(add_s)
        series.del_s.append(del_s)

    def run(self, progress: Callable[[str], None]) -> list[Throughput]:
        out = []
        for mode in self.modes:
            impls = [i for i in self.impls if mode in i.modes]
            for impl in impls:
                self.one_pair(impl, mode)
            series = {i.name: Throughput(i.name, mode, self.pods) for i in impls}
            for r in range(self.rounds):
                for impl in impls if r % 2 == 0 else list(reversed(impls)):
                    self.one_round(impl, mode, series[impl.name])
                progress(f"{mode}: {self.pods} concurrent, round {r + 1}/{self.rounds}")
            out.extend(series[i.name] for i in impls)
        return out


def throughput_table(results: Sequence[Throughput],
                     ceilings: dict[str, float]) -> list[list[str]]:
    rows = [["impl", "mode", "pods", "ADD pods/s", "DEL pods/s", "ADD+DEL pods/s", "vs ref",
             "start-up ceiling pods/s"]]
    reference = {s.mode: s.rates()[2] for s in results if s.impl == "reference"}
    for s in results:
        add, delete, both = s.rates()
        ref = reference.get(s.mode)
        vs = f"{both / ref:.2f}x" if ref and s.impl != "reference" else ""
        ceiling = ceilings.get(s.impl)
        rows.append([s.impl, s.mode, str(s.pods), f"{add:.1f}", f"{delete:.1f}", f"{both:.1f}",
                     vs, f"{ceiling:.1f}" if ceiling else ""])
    return rows


def startup_ceiling(impl: Impl, pods: int, rounds: int) -> float:
    """Pods per second that process start-up alone allows: `pods` execs of the plugin answering
    VERSION (no kernel work, no agent) started at once, twice (the ADD and the DEL waves);
    the median of `rounds`. No implementation can do ADD+DEL faster than this."""
    waves = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _wave in range(2):
            procs = [subprocess.Popen([str(impl.plugin)], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env=cni_env(impl, "VERSION")) for _ in range(pods)]
            for proc in procs:
                proc.wait(timeout=300)
        waves.append(time.perf_counter() - start)
    return pods / Stats.of(waves).median


@dataclass
class MemorySample:
    pairs: int
    rss_kib: int
    hwm_kib: int
    seconds: float


def measure_memory(server: CniServer, impl: Impl, modes: Sequence[str], pairs: int,
                   one_pair: OnePair, progress: Callable[[str], None],
                   every: int = 100) -> list[MemorySample]:
    """The server's VmRSS and VmHWM (peak) after every `every` ADD/DEL pairs through `impl`,
    the modes taking turns pair by pair; the first sample is after one warm-up pair each."""
    usable = [m for m in modes if m in impl.modes]
    for mode in usable:
        one_pair(impl, mode)
    start = time.perf_counter()
    samples = [MemorySample(0, *server.memory_kib(), 0.0)]
    for i in range(1, pairs + 1):
        one_pair(impl, usable[i % len(usable)])
        if i % every == 0 or i == pairs:
            server.alive()
            samples.append(MemorySample(i, *server.memory_kib(), time.perf_counter() - start))
            progress(f"memory: pair {i}/{pairs}")
    return samples


def memory_table(samples: Sequence[MemorySample]) -> list[list[str]]:
    rows = [["pairs", "VmRSS MiB", "VmHWM MiB", "elapsed s"]]
    for s in samples:
        rows.append([str(s.pairs), f"{s.rss_kib / 1024:.1f}", f"{s.hwm_kib / 1024:.1f}",
                     f"{s.seconds:.1f}"])
    return rows
