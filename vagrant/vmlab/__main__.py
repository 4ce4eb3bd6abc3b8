"""The VM lab: Tartan on real Debian 12 VMs (their own 6.1 kernel) under qemu, here.

    python -m vmlab demo [--nodes 3] [--backend vxlan]   up, provision, pods, ping matrix, down
    python -m vmlab up [--name N] [--nodes 3] [--backend vxlan]
    python -m vmlab ssh NODE [COMMAND]
    python -m vmlab down [--name N]

Run from vagrant/ as root (`make vm-lab` runs `demo`). The image is built on first use and
cached (vmlab.image); the bundle comes from ../dist/tartan (`make bundle`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from vmlab import cluster, image, machines

ROOT = Path(__file__).resolve().parent.parent.parent


def _up(args: argparse.Namespace) -> machines.Lab:
    started = time.monotonic()
    built = image.build(ROOT / "dist/tartan", ROOT, say=print)
    print(f"vm lab {args.name}: image ready ({built.kernel_version}) in "
          f"{time.monotonic() - started:.1f} s; booting {args.nodes} VMs "
          f"(accel {machines.accel()})")
    lab = machines.up(args.name, built, args.nodes)
    try:
        cluster.provision(lab, args.backend)
    except BaseException:
        machines.down(lab)
        raise
    return lab


def cmd_up(args: argparse.Namespace) -> int:
    lab = _up(args)
    print(f"vm lab {lab.name} is up: python -m vmlab ssh node1 'tartanctl status'; "
          f"python -m vmlab down --name {lab.name}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    lab = _up(args)
    try:
        pods = cluster.add_pods(lab)
        for pod in pods:
            print(f"  pod {pod.key} on {pod.vm}: {pod.ip}")
        matrix = cluster.ping_matrix(lab, pods)
        print(cluster.render_matrix(pods, matrix))
        lost = [pair for pair, ok in matrix.items() if not ok]
        print(f"ping matrix: {len(matrix) - len(lost)}/{len(matrix)} answered, "
              f"{time.monotonic() - started:.0f} s from the start")
        return 1 if lost else 0
    finally:
        for line in machines.down(lab):
            print(f"  removed {line}")


def cmd_ssh(args: argparse.Namespace) -> int:
    lab = machines.Lab.load(args.name)
    vm = lab.vm(args.node)
    argv = machines.ssh_argv(lab, vm, " ".join(args.command), interactive=not args.command)
    os.execvp(argv[0], argv)


def cmd_down(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else list(machines.labs())
    for name in names:
        for line in machines.down_named(name):
            print(f"removed {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vmlab", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, run in (("up", cmd_up), ("demo", cmd_demo)):
        c = sub.add_parser(name)
        c.add_argument("--name", default="demo")
        c.add_argument("--nodes", type=int, default=3)
        c.add_argument("--backend", choices=cluster.BACKENDS, default="vxlan")
        c.set_defaults(run=run)
    s = sub.add_parser("ssh")
    s.add_argument("--name", default="demo")
    s.add_argument("node")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(run=cmd_ssh)
    d = sub.add_parser("down")
    d.add_argument("--name", help="default: every VM lab")
    d.set_defaults(run=cmd_down)
    args = p.parse_args(argv)
    try:
        return int(args.run(args))
    except (machines.VmError, image.ImageError) as exc:
        print(f"vmlab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
