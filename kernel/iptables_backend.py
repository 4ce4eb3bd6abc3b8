"""How rules reach the kernel: the wire format, the command runner and the backend.

- `split_args`/`quote`: iptables-restore's own argument grammar, both ways.
- `Runner`: the one seam to the outside world; `run_command` is the real one.
- `host_backend`: nf_tables or legacy, detected once per process from the `iptables` symlink.

Only the standard library is imported: this sits on the plugin's path.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence

from tartan.kernel import errors

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
    current: str | None = None  # the argument being read, if one began
    for piece in _PIECE.finditer(line):
        inside, closed, plain = piece.groups()
        if plain is not None:
            current = (current or "") + plain
        elif inside is not None:
            if not closed:
                raise ValueError(f"unterminated quote in {line!r}")
            out.append((current or "") + _ESCAPED.sub(r"\1", inside))
            current = None
        elif current is not None:  # blanks end an argument
            out.append(current)
            current = None
    return out if current is None else [*out, current]


# a quoted part (to its closing quote, if any), a run of plain characters, or blanks
_PIECE = re.compile(r'"((?:[^"\\]|\\.)*)("?)|([^ \t"]+)|[ \t]+', re.DOTALL)
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


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
