"""CNI ADD/DEL latency: Tartan (tartan-bridge + tartan-ipam) against the reference plugins.

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
import ctypes
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# Siblings in bench/ (on sys.path as the script's folder), standard library only.
from latency_report import Outcome, write_report
from latency_stats import PairSeries, StartSeries, Stats, pair_table, plain, start_table

VENV_BIN = Path(sys.executable).parent
REFERENCE_DIR = Path("/usr/lib/cni")
NETNS_DIR = Path("/run/netns")
CNI_VERSION = "1.0.0"  # the newest version both the reference v1.1.1 and Tartan speak
PLUGIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLONE_NEWNET = 0x40000000
IMPLS = ("tartan", "reference")
MODES = ("masq", "nomasq")


class BenchError(Exception):
    """A failure that ends the benchmark with a one-line message."""


# --- namespaces -------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


def netns_add(name: str) -> str:
    _ip("netns", "add", name)
    return str(NETNS_DIR / name)


def netns_del(name: str) -> None:
    if (NETNS_DIR / name).exists():
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise BenchError(f"setns failed: {os.strerror(err)}")


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body (and every child it starts) inside network namespace `name`.

    Only the network namespace changes: the mount namespace stays the host's, so
    `ip netns add` from inside still makes pod namespaces everyone can see.
    """
    target = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    origin = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(origin)
    finally:
        os.close(target)
        os.close(origin)


@dataclass
class Namespaces:
    """Every namespace the bench made, so that all of them go away at the end."""

    prefix: str = field(default_factory=lambda: f"tbench-{uuid.uuid4().hex[:6]}")
    made: list[str] = field(default_factory=list)

    def add(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        self.made.append(name)
        return netns_add(name)

    def remove(self, path: str) -> None:
        name = Path(path).name
        netns_del(name)
        if name in self.made:
            self.made.remove(name)

    def remove_all(self) -> None:
        for name in reversed(self.made):
            netns_del(name)
        self.made.clear()


# --- plugins ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Impl:
    """One implementation: its bridge plugin, IPAM type, and where the runtime looks."""

    name: str
    plugin: Path
    ipam: str
    cni_path: tuple[Path, ...]
    bridge: str
    subnet: str

    def ipam_binary(self) -> Path:
        found = shutil.which(self.ipam, path=os.pathsep.join(map(str, self.cni_path)))
        if not found:
            raise BenchError(f"{self.name}: IPAM plugin {self.ipam} not found on CNI_PATH")
        return Path(found)


def make_impls(names: Sequence[str], tartan_ipam: str) -> list[Impl]:
    known = {
        "tartan": Impl("tartan", VENV_BIN / "tartan-bridge", tartan_ipam,
                       (VENV_BIN, REFERENCE_DIR), "tartan0", "10.250.0.0/24"),
        "reference": Impl("reference", REFERENCE_DIR / "bridge", "host-local",
                          (REFERENCE_DIR,), "refbr0", "10.250.1.0/24"),
    }
    return [known[n] for n in names]


def network_config(impl: Impl, mode: str, data_dir: Path) -> bytes:
    config = {
        "cniVersion": CNI_VERSION,
        "name": f"bench-{impl.name}-{mode}",
        "type": impl.plugin.name,
        "bridge": impl.bridge,
        "isGateway": True,
        "ipMasq": mode == "masq",
        "ipam": {"type": impl.ipam, "subnet": impl.subnet, "dataDir": str(data_dir)},
    }
    return json.dumps(config).encode()


@dataclass
class Invocation:
    ms: float
    code: int
    stdout: str
    stderr: str

    def brief(self) -> str:
        text = (self.stdout.strip() or self.stderr.strip() or "no output").splitlines()
        return text[0][:300] if text else "no output"


def timed_exec(argv: list[str], env: dict[str, str], stdin: bytes) -> Invocation:
    """Run argv once with env and stdin; the time covers fork, exec, the work and exit."""
    start = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False,
                          timeout=120)
    ms = (time.perf_counter() - start) * 1000
    return Invocation(ms, proc.returncode, proc.stdout.decode(errors="replace"),
                      proc.stderr.decode(errors="replace"))


def cni_env(impl: Impl, command: str, container_id: str = "", netns: str = "") -> dict[str, str]:
    env = {
        "PATH": PLUGIN_PATH,
        "CNI_COMMAND": command,
        "CNI_PATH": os.pathsep.join(map(str, impl.cni_path)),
        "CNI_IFNAME": "eth0",
    }
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns:
        env["CNI_NETNS"] = netns
    return env


def check_add(impl: Impl, run: Invocation) -> None:
    try:
        ips = json.loads(run.stdout).get("ips") if run.code == 0 else None
    except (ValueError, AttributeError):
        ips = None
    if run.code != 0 or not ips:
        raise BenchError(f"{impl.name} ADD failed (exit {run.code}): {run.brief()}")


def check_del(impl: Impl, run: Invocation) -> None:
    if run.code != 0:
        raise BenchError(f"{impl.name} DEL failed (exit {run.code}): {run.brief()}")


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
        series = {impl.name: PairSeries(impl.name, mode) for impl in self.impls}
        for i in range(self.warmup + self.pairs):
            order = self.impls if i % 2 == 0 else list(reversed(self.impls))
            for impl in order:
                add, delete = self.one_pair(impl, mode)
                if i >= self.warmup:
                    series[impl.name].add.append(add)
                    series[impl.name].delete.append(delete)
            progress(f"{mode}: pair {i + 1}/{self.warmup + self.pairs}")
        return [series[impl.name] for impl in self.impls]

    def run_pairs(self) -> list[PairSeries]:
        return [s for mode in self.modes for s in self.run_mode(mode)]


def repeat(argv: list[str], env: dict[str, str], stdin: bytes, count: int) -> list[float]:
    samples = []
    for _ in range(count + 1):  # the first run only warms the page cache
        run = timed_exec(argv, env, stdin)
        if run.code != 0:
            raise BenchError(f"{argv[0]} failed (exit {run.code}): {run.brief()}")
        samples.append(run.ms)
    return samples[1:]


def start_label(impl: Impl, binary: Path) -> str:
    """tartan-bridge, tartan-ipam, reference bridge, reference host-local."""
    return binary.name if binary.name.startswith(impl.name) else f"{impl.name} {binary.name}"


def measure_starts(impls: Sequence[Impl], count: int) -> list[StartSeries]:
    """exec + VERSION of every plugin binary, and Python's floor."""
    out = []
    version_stdin = json.dumps({"cniVersion": CNI_VERSION}).encode()
    for impl in impls:
        for binary in (impl.plugin, impl.ipam_binary()):
            samples = repeat([str(binary)], cni_env(impl, "VERSION"), version_stdin, count)
            out.append(StartSeries(f"{start_label(impl, binary)} exec+VERSION", samples))
    floor = [sys.executable, "-I", "-S", "-c", "pass"]
    out.append(StartSeries("python -I -S -c pass", repeat(floor, {}, b"", count)))
    return out


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
                   "implementation and mode (default 40)")
    p.add_argument("--warmup", type=int, default=1, help="uncounted pairs first (default 1)")
    p.add_argument("--modes", type=_choices(MODES), default=list(MODES),
                   help="masq,nomasq (default both)")
    p.add_argument("--impl", type=_choices(IMPLS), default=list(IMPLS),
                   help="tartan,reference (default both)")
    p.add_argument("--tartan-ipam", default="tartan-ipam",
                   help="IPAM type for Tartan (default tartan-ipam; host-local to bench "
                   "tartan-bridge alone)")
    p.add_argument("--report", type=Path, help="write a Markdown report (and a PNG next to it)")
    args = p.parse_args(argv)
    if args.pairs < 2 or args.warmup < 0:
        p.error("--pairs must be at least 2 and --warmup at least 0")
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


def describe(impl: Impl) -> str:
    return (f"{impl.name}: `{impl.plugin}` + `{impl.ipam}`, bridge `{impl.bridge}`, "
            f"subnet {impl.subnet}")


def measure(args: argparse.Namespace, impls: list[Impl]) -> tuple[list[PairSeries],
                                                                   list[StartSeries]]:
    """Make the node namespace, measure inside it, and remove every namespace made."""
    namespaces = Namespaces()
    data_dir = Path(tempfile.mkdtemp(prefix="tartan-bench-"))
    starts_count = max(args.pairs, 20)
    try:
        node = Path(namespaces.add("node")).name
        overhead = measure_netns_exec(node, starts_count)
        with entered(node):
            _ip("link", "set", "lo", "up")
            starts = measure_starts(impls, starts_count)
            bench = Bench(impls, args.modes, args.pairs, args.warmup, namespaces, data_dir)
            results = bench.run_pairs()
    finally:
        namespaces.remove_all()
        shutil.rmtree(data_dir, ignore_errors=True)
        progress("")
    return results, [*starts, overhead]


def run(args: argparse.Namespace) -> Outcome:
    impls = make_impls(args.impl, args.tartan_ipam)
    preflight(impls)
    results, starts = measure(args, impls)
    return Outcome(
        command=shlex.join([sys.executable, *sys.argv]), cni_version=CNI_VERSION,
        warmup=args.warmup, pairs=args.pairs, setup=[describe(i) for i in impls],
        results=results, starts=starts,
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
    print(plain(pair_table(outcome.results)))
    print()
    print(plain(start_table(outcome.starts)))
    if args.report:
        png = write_report(outcome, args.report)
        print(f"\nreport: {args.report} (chart: {png})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
