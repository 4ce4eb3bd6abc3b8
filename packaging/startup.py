"""Start-up time of CNI executables, as a runtime sees it.

Runs `CNI_COMMAND=VERSION <exe>` through a symlink named tartan-bridge (the role comes from
argv[0], as in /opt/cni/bin) from this interpreter, timing each run with perf_counter around
subprocess.run. Several executables are measured side by side, alternating, so a change in
machine load hits them all alike. Prints one JSON line per executable (milliseconds).
Run it with the venv's python, never through a pyenv shim (a shim costs a start of its own):

    .venv/bin/python packaging/startup.py dist/tartan/tartan-cni /usr/lib/cni/bridge --runs 50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

WARMUP = 3


def run_once(link: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([link], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 0 or b"supportedVersions" not in proc.stdout:
        raise RuntimeError(f"{link} failed: {proc.stdout[:200]!r} {proc.stderr[:500]!r}")
    return elapsed


def summary(times: list[float]) -> dict[str, float]:
    deciles = statistics.quantiles(times, n=10)
    return {"median_ms": round(statistics.median(times), 2), "p10_ms": round(deciles[0], 2),
            "p90_ms": round(deciles[-1], 2), "runs": len(times)}


def measure(executables: list[str], runs: int = 50,
            role: str = "tartan-bridge") -> dict[str, dict[str, float]]:
    """{executable: summary}; the executables take turns, `runs` rounds after a warm-up."""
    env = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    times: dict[str, list[float]] = {exe: [] for exe in executables}
    with tempfile.TemporaryDirectory() as folder:
        links = {}
        for i, exe in enumerate(executables):
            os.mkdir(os.path.join(folder, str(i)))
            links[exe] = os.path.join(folder, str(i), role)
            os.symlink(os.path.abspath(exe), links[exe])
        for round_ in range(WARMUP + runs):
            for exe in executables:
                elapsed = run_once(links[exe], env)
                if round_ >= WARMUP:
                    times[exe].append(elapsed)
    return {exe: summary(t) for exe, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("executable", nargs="+")
    p.add_argument("--runs", type=int, default=50)
    args = p.parse_args(argv)
    for exe, stats in measure(args.executable, args.runs).items():
        print(json.dumps({"executable": exe, **stats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
