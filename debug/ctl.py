"""tartanctl: the operator CLI. A thin dispatcher; each subcommand lives in its own module
and registers its flags with `register(subparsers)` and a `run(args) -> exit code`."""

from __future__ import annotations

import argparse
import os
import sys

from tartan.debug import (
    capture_cli,
    doctor,
    get_cli,
    lab_cli,
    objects_cli,
    policy_cli,
    reset,
    status,
)

SUBCOMMANDS = (status, objects_cli, get_cli, policy_cli, capture_cli, doctor, reset, lab_cli)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tartanctl", description="Tartan operator CLI")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    # a capture's filter comes last, as tcpdump's does, after any flags: argparse leaves the
    # words it did not place for it
    if extra and hasattr(args, "filter") and not any(word.startswith("-") for word in extra):
        args.filter = [*args.filter, *extra]
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.run(args)
    except BrokenPipeError:  # e.g. `| head`: stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
