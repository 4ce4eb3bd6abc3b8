"""tartanctl: the operator CLI. A thin dispatcher; each subcommand lives in its own module
and registers its flags with `register(subparsers)` and a `run(args) -> exit code`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each command's module, and its line in `tartanctl --help`. Only the module of the command
# given is imported: the others (pyroute2, scapy, the lab) cost a cold start most of a second.
COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("status", "this node's lease, readiness and peers"),
    "apply": ("objects_cli", "store Namespaces, Pods and NetworkPolicies (kubectl apply -f)"),
    "delete": ("objects_cli", "remove objects from the store (kubectl delete)"),
    "get": ("get_cli", "list Namespaces, Pods or NetworkPolicies from the store (kubectl get)"),
    "policy": ("policy_cli", "NetworkPolicy: explain who may connect to whom"),
    "capture": ("capture_cli", "capture a pod's packets on every hop of its path"),
    "trace": ("capture_cli", "follow one probe from a pod hop by hop on this node: delivered, "
                             "or where it vanished and why (the rule, the policy)"),
    "doctor": ("doctor", "check this node; each problem with its cause and fix"),
    "reset": ("reset", "remove everything Tartan put on this node, only that"),
    "pod": ("pods", "make or remove a pod on this node with the CNI plugins (as cnitool does)"),
    "lab": ("lab_cli", "a multi-node cluster in namespaces on this machine"),
}


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; `command`'s module registers its own flags, the other commands are
    listed by name only (every module registers when `command` is None, none when "")."""
    p = argparse.ArgumentParser(prog="tartanctl", description="Tartan operator CLI")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = {module for name, (module, _) in COMMANDS.items()
              if command is None or name == command}
    for module in dict.fromkeys(module for module, _ in COMMANDS.values()):
        if module in wanted:
            importlib.import_module(f"tartan.debug.{module}").register(sub)
    for name, (_, text) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=text)
    return p


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    command = next((word for word in words if not word.startswith("-")), None)
    p = parser(command if command in COMMANDS else "")  # "": none imported, for --help
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
