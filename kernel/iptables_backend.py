"""How rules reach the kernel: the wire format, the command runner and the backend.

- `split_args`/`quote`: iptables-restore's own argument grammar, both ways.
- `Runner`: the one seam to the outside world; `run_command` is the real one.
- `host_backend`: nf_tables or legacy, detected once per process from the `iptables` symlink,
  or from the rules already in the kernel where `TARTAN_IPTABLES_BACKEND=auto` says so (a
  container's own `iptables` says nothing about the host's).

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


BACKEND_ENV = "TARTAN_IPTABLES_BACKEND"  # nft, legacy, or auto: from the rules in the kernel
BACKENDS = ("nft", "legacy")
# Chains kubelet makes in the backend the node uses (kubernetes-sigs/iptables-wrappers' signs).
_KUBELET_CHAINS = (":KUBE-IPTABLES-HINT", ":KUBE-KUBELET-CANARY")


def detect_backend(which: Callable[[str], str | None] = shutil.which,
                   realpath: Callable[[str], str] = os.path.realpath,
                   runner: Runner = run_command,
                   chosen: str | None = None) -> str:
    """"nft" or "legacy": what the host's `iptables` command is.

    `chosen` (default: $TARTAN_IPTABLES_BACKEND) names it, or "auto" reads it from the rules.
    Otherwise the symlink says it without an exec (xtables-nft-multi / xtables-legacy-multi),
    or `iptables --version` does ("(nf_tables)"; before 1.8 there was only legacy).
    """
    chosen = os.environ.get(BACKEND_ENV, "") if chosen is None else chosen
    if chosen in BACKENDS:
        return chosen
    if chosen == "auto":
        return backend_in_use(runner)
    if chosen:
        raise errors.IptablesFailure(f"{BACKEND_ENV}={chosen!r}: use nft, legacy or auto")
    path = which("iptables")
    if path is None:
        raise errors.IptablesFailure("iptables not found: install iptables (1.8 or newer)")
    binary = os.path.basename(realpath(path))
    for backend in ("nft", "legacy"):
        if binary == f"xtables-{backend}-multi" or binary == f"iptables-{backend}":
            return backend
    version = runner([path, "--version"], None).stdout
    return "nft" if "nf_tables" in version else "legacy"


def backend_in_use(runner: Runner = run_command) -> str:
    """The backend whose tables the node's other components write, as iptables-wrappers finds
    it: kubelet's marker chains first, then the one with more rules; nft when both are empty.
    For an agent in a container on the host's network, whose own `iptables` is the image's."""
    saved = {backend: _saved(runner, backend) for backend in BACKENDS}
    for backend in BACKENDS:
        if any(chain in saved[backend] for chain in _KUBELET_CHAINS):
            return backend
    rules = {backend: sum(line.startswith("-A ") for line in text.splitlines())
             for backend, text in saved.items()}
    return "legacy" if rules["legacy"] > rules["nft"] else "nft"


def _saved(runner: Runner, backend: str) -> str:
    """Both families' rules in `backend`; "" where its commands are missing or fail."""
    text = []
    for family in ("iptables", "ip6tables"):
        try:
            done = runner([f"{family}-{backend}-save"], None)
        except errors.IptablesFailure:
            continue
        text.append(done.stdout if done.returncode == 0 else "")
    return "".join(text)


@functools.cache
def host_backend() -> str:
    """The host's backend, detected once per process."""
    return detect_backend()
