"""How rules reach the kernel: the wire format, the command runner, the backend, and a fake.

- `split_args`/`quote`: iptables-restore's own argument grammar, both ways.
- `Runner`: the one seam to the outside world; `run_command` is the real one.
- `host_backend`: nf_tables or legacy, detected once per process from the `iptables` symlink.
- `FakeIptables`: an in-memory Runner modelling iptables-save and `iptables-restore
  --noflush` (atomic commit, "line N failed" errors), for tests without root.

Only the standard library is imported: this sits on the plugin's path.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence

from tartan.cni import errors

_UNQUOTED = re.compile(r"[A-Za-z0-9_./:,=+@%!-]+")
TIMEOUT = 30.0


# Runs an argument list with optional stdin text; returns code, stdout and stderr as text.
Runner = Callable[[Sequence[str], "str | None"], subprocess.CompletedProcess]


def run_command(argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess:
    """Run an argument list (never a shell string), capturing text output, bounded in time."""
    try:
        return subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)
    except FileNotFoundError:
        raise errors.IptablesFailure(
            f"{argv[0]} not found: install iptables (1.8 or newer)") from None
    except subprocess.TimeoutExpired:
        raise errors.IptablesFailure(f"{argv[0]} did not finish in {TIMEOUT:g}s") from None


def split_args(line: str) -> list[str]:
    """Split a line exactly as iptables-restore does (shlex differs on `\\'` inside quotes).

    Double quotes group; inside them a backslash takes the next character literally; a closing
    quote ends the argument. Outside quotes a backslash is an ordinary character.
    """
    out: list[str] = []
    buf: list[str] = []
    started = quoted = escaped = False
    for ch in line:
        if escaped or (quoted and ch not in '\\"'):
            buf.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"' and not quoted:
            quoted = started = True
        elif ch == '"' or ch in " \t":  # a closing quote or a blank ends an argument
            if started:
                out.append("".join(buf))
            buf, started, quoted = [], False, False
        else:
            buf.append(ch)
            started = True
    if quoted:
        raise ValueError(f"unterminated quote in {line!r}")
    return [*out, "".join(buf)] if started else out


def quote(arg: str) -> str:
    """Quote an argument the way iptables-save does, so iptables-restore reads it back as is."""
    if _UNQUOTED.fullmatch(arg):
        return arg
    return '"' + re.sub(r"([\"\\'])", r"\\\1", arg) + '"'


def target_of(args: Sequence[str]) -> str | None:
    """The `-j`/`-g` target of a rule's arguments (the last one, as iptables takes it)."""
    jumps = [i for i, arg in enumerate(args[:-1]) if arg in ("-j", "--jump", "-g", "--goto")]
    return args[jumps[-1] + 1] if jumps else None


def detect_backend(which: Callable[[str], str | None] = shutil.which,
                   realpath: Callable[[str], str] = os.path.realpath,
                   runner: Runner = run_command) -> str:
    """"nft" or "legacy": what the host's `iptables` command is.

    The symlink says it without an exec (xtables-nft-multi / xtables-legacy-multi); otherwise
    `iptables --version` does ("(nf_tables)"; before 1.8 there was only legacy).
    """
    path = which("iptables")
    if path is None:
        raise errors.IptablesFailure("iptables not found: install iptables (1.8 or newer)")
    binary = os.path.basename(realpath(path))
    for backend in ("nft", "legacy"):
        if binary == f"xtables-{backend}-multi" or binary == f"iptables-{backend}":
            return backend
    version = runner([path, "--version"], None).stdout
    return "nft" if "nf_tables" in version else "legacy"


@functools.cache
def host_backend() -> str:
    """The host's backend, detected once per process."""
    return detect_backend()


BUILTIN = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
TARGETS = frozenset({"ACCEPT", "DROP", "RETURN", "REJECT", "LOG", "MARK", "CONNMARK",
                     "MASQUERADE", "SNAT", "DNAT", "REDIRECT", "NOTRACK", "CT", "TCPMSS"})
Chains = dict[str, list[tuple[str, ...]]]


class _Failed(Exception):
    pass


class FakeIptables:
    """An in-memory stand-in for the iptables binaries of both families, used as a Runner.

    `tables[(family, table)]` maps chain -> rules (argument tuples); `calls` records every
    argv. Restore is atomic like the real one; a jump to a missing chain fails at COMMIT with
    nf_tables' message, other bad lines with "line N failed".
    """

    def __init__(self) -> None:
        self.tables: dict[tuple[int, str], Chains] = {}
        self.calls: list[list[str]] = []
        self.payloads: list[str] = []

    def __call__(self, argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess:
        self.calls.append(list(argv))
        family = 6 if argv[0].startswith("ip6") else 4
        if argv[0].endswith("-save"):
            return self._done(argv, 0, self.save(family, argv[list(argv).index("-t") + 1]))
        self.payloads.append(stdin or "")
        try:
            self._restore(family, (stdin or "").splitlines())
        except _Failed as exc:
            return self._done(argv, 1, "", f"{argv[0]}: {exc}\n")
        return self._done(argv, 0, "")

    @property
    def restores(self) -> list[list[str]]:
        return [argv for argv in self.calls if argv[0].endswith("-restore")]

    def chains(self, family: int, table: str) -> Chains:
        return self.tables.setdefault((family, table), {c: [] for c in BUILTIN[table]})

    def save(self, family: int, table: str) -> str:
        chains = self.chains(family, table)
        lines = [f"*{table}"] + [
            f":{name} {'ACCEPT' if name in BUILTIN[table] else '-'} [0:0]" for name in chains]
        lines += [" ".join(["-A", name, *map(quote, args)])
                  for name, rules in chains.items() for args in rules]
        return "\n".join(["# Generated by FakeIptables", *lines, "COMMIT", ""])

    def _restore(self, family: int, lines: list[str]) -> None:
        work, table = copy.deepcopy(self.tables), ""
        for number, line in enumerate(lines, 1):
            if line.startswith("*"):
                table = line[1:]
                work.setdefault((family, table), {c: [] for c in BUILTIN[table]})
            elif line == "COMMIT":
                _check_jumps(work[(family, table)], number)
                self.tables = copy.deepcopy(work)
            elif line and not line.startswith("#"):
                _apply_line(work[(family, table)], table, line, number)

    def _done(self, argv: Sequence[str], code: int, out: str, err: str = ""):
        return subprocess.CompletedProcess(list(argv), code, out, err)


def _apply_line(chains: Chains, table: str, line: str, number: int) -> None:
    if line.startswith(":"):
        name = line[1:].split()[0]
        if name not in BUILTIN[table]:
            chains[name] = []
        return
    op, chain, *args = split_args(line)
    if chain not in chains:
        raise _Failed(f"line {number} failed: No chain/target/match by that name.")
    rules = chains[chain]
    if op == "-A":
        rules.append(tuple(args))
    elif op == "-I":
        position, args = (int(args[0]), args[1:]) if args and args[0].isdigit() else (1, args)
        rules.insert(position - 1, tuple(args))
    elif op == "-D" and tuple(args) in rules:
        rules.remove(tuple(args))
    elif op == "-F":
        rules.clear()
    elif op == "-X" and _deletable(chains, table, chain):
        del chains[chain]
    else:
        raise _Failed(f"line {number} failed")


def _deletable(chains: Chains, table: str, name: str) -> bool:
    """Like the kernel: a user chain that is empty and that no rule jumps to."""
    referenced = any(target_of(args) == name for rules in chains.values() for args in rules)
    return not chains[name] and not referenced and name not in BUILTIN[table]


def _check_jumps(chains: Chains, number: int) -> None:
    for rules in chains.values():
        for args in rules:
            target = target_of(args)
            if target and target not in TARGETS and target not in chains:
                raise _Failed(f"Chain '{target}' does not exist\nError occurred at line: {number}")
