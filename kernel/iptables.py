"""The one iptables applier every Tartan component shares: rules as data, one restore per table.

A caller describes what it owns in one table of one family (`Table`): whole chains (`Chain`,
full content), single rules in chains it shares with others (`Rule`), and chains or rules to
remove. `Iptables.apply` reads the live table once with iptables-save, computes the difference
and, when there is one, writes it with a single `iptables-restore --noflush --wait`, so the
change is atomic. Applying the same state again runs no restore.

Rule arguments are written in iptables-save's canonical form (`-s 10.1.0.2/32`, matches before
the target) and compared token by token, split the way iptables-restore splits them, so quoting
never matters. `verify=True` re-reads after a change and fails when a second pass would still
change something: the cheap proof that a caller's rules are canonical (neutron's debug mode).

Callers that own different chains never disturb each other: a payload names only what
differs. `Iptables.counters` reads rules' packet and byte counters (`iptables-save -c`) for
callers that report them; nothing here writes counters. Only the standard library is
imported: this sits on the plugin's path.

Group commit: in the agent, many requests apply at once (50 pods starting), and each
read + restore pair costs two process starts and waits for the xtables lock. Callers of one
table in one process therefore queue; whoever finds no read-modify-write in progress takes
the whole queue, reads the table once, plans every caller's state against that one reading
and sends the plans in one restore. Plans that touch the same chain or send the same line
are not merged: those run alone after the batch. When a merged restore fails, every caller
in it is run alone, so each gets its own error. A plugin process has one caller: nothing
changes for it.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from tartan.kernel import errors
from tartan.kernel.iptables_backend import (
    Runner,
    host_backend,
    quote,
    run_command,
    split_args,
    target_of,
)

TABLES = ("filter", "nat", "mangle", "raw")
BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
FAMILIES = {4: "iptables", 6: "ip6tables"}
BACKENDS = ("nft", "legacy")
_VERDICTS = frozenset({"ACCEPT", "DROP", "QUEUE", "RETURN"})
MAX_CHAIN_LEN = 28  # XT_EXTENSION_MAXNAMELEN (29) minus the terminating NUL
_CHAIN_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
_CONTEXT = 3  # payload lines shown either side of a failing one


class InvalidName(errors.IptablesFailure):
    """A table, chain or argument that must not reach iptables."""


def check_table(name: str) -> str:
    if name not in TABLES:
        raise InvalidName(f"invalid iptables table {name!r}: use one of {', '.join(TABLES)}")
    return name


def check_chain(name: str) -> str:
    if (not isinstance(name, str) or len(name) > MAX_CHAIN_LEN
            or not _CHAIN_NAME.fullmatch(name) or name in _VERDICTS):
        raise InvalidName(
            f"invalid iptables chain name {name!r}: use 1-{MAX_CHAIN_LEN} characters from "
            "A-Z a-z 0-9 _ . - , not starting with '-' and not a verdict (ACCEPT, DROP, ...)")
    return name


def _check_args(args: tuple[str, ...]) -> tuple[str, ...]:
    if all(isinstance(arg, str) for arg in args) and not _NOT_ONE_LINE.search("".join(args)):
        return args  # the common case, checked at once (a compile checks thousands)
    for arg in args:
        if not isinstance(arg, str) or _NOT_ONE_LINE.search(arg):
            raise InvalidName(f"invalid iptables argument {arg!r}: must be a one-line string")
    return args


_NOT_ONE_LINE = re.compile("[\n\r\0]")


@dataclass(frozen=True)
class Rule:
    """One rule in `chain`. `insert` puts a missing rule first in the chain instead of last.

    Names are checked when a `Table` is built (rules read back from the kernel are not).
    """

    chain: str
    args: tuple[str, ...]
    insert: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(self.args))

    @property
    def target(self) -> str | None:
        return target_of(self.args)


@dataclass(frozen=True)
class Chain:
    """A chain its caller owns: it is created if missing and its rules made exactly `rules`."""

    name: str
    rules: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        check_chain(self.name)
        if self.name in BUILTIN_CHAINS:
            raise InvalidName(f"built-in chain {self.name} cannot be owned; add Rules to it")
        object.__setattr__(self, "rules", tuple(_check_args(tuple(r)) for r in self.rules))


@dataclass(frozen=True)
class Table:
    """The desired state of what one caller owns in one table.

    `shared_chains` are chains several callers put `rules` into (portmap's CNI-HOSTPORT-DNAT):
    created when missing, never flushed or deleted.
    """

    name: str
    chains: tuple[Chain, ...] = ()
    rules: tuple[Rule, ...] = ()
    delete_chains: tuple[str, ...] = ()
    delete_rules: tuple[Rule, ...] = ()
    shared_chains: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_table(self.name)
        for name in ("chains", "rules", "delete_chains", "delete_rules", "shared_chains"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for rule in (*self.rules, *self.delete_rules):
            check_chain(rule.chain)
            _check_args(rule.args)
        for name in (*self.delete_chains, *self.shared_chains):
            check_chain(name)
        if BUILTIN_CHAINS & set(self.shared_chains):
            raise InvalidName("built-in chains always exist: do not list them as shared")
        owned, doomed = [c.name for c in self.chains], set(self.delete_chains)
        clash = set(owned) & doomed | {r.chain for r in self.rules} & (set(owned) | doomed)
        clash |= {name for name in owned if owned.count(name) > 1}
        clash |= set(self.shared_chains) & (set(owned) | doomed)
        if clash:
            raise InvalidName(f"chains {sorted(clash)} are declared twice, or both owned and "
                              "deleted or shared")


@dataclass
class LiveTable:
    """One table as iptables-save printed it: every chain with its rules, in order."""

    name: str
    chains: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    policies: dict[str, str] = field(default_factory=dict)  # built-in chain -> ACCEPT/DROP

    def rules(self) -> Iterator[Rule]:
        for chain, rules in self.chains.items():
            for args in rules:
                yield Rule(chain, args)

    def jumps_to(self, chain: str) -> list[Rule]:
        return [rule for rule in self.rules() if rule.target == chain]


Owner = Callable[[tuple[str, ...]], "tuple[str, str] | None"]  # (network, container) of a rule


def containers_in(live: LiveTable, network: str, owner: Owner,
                  chain_name: Callable[[str, str], str]) -> set[str]:
    """Containers of `network` with a per-container chain or a jump to one in `live`: named
    by the rule's comment (`owner`) and confirmed by the chain's name, so that a look-alike
    comment elsewhere is not taken."""
    found = set()
    for rule in live.rules():
        who = owner(rule.args)
        if who and who[0] == network and chain_name(*who) in (rule.chain, rule.target):
            found.add(who[1])
    return found


def applied_live(state: Table) -> LiveTable:
    """What a reading of the table would show of `state` once it was applied: its chains
    with their rules, its shared rules in their chains (other owners' rules not known)."""
    live = LiveTable(state.name, {chain.name: list(chain.rules) for chain in state.chains})
    for name in state.shared_chains:
        live.chains.setdefault(name, [])
    for rule in state.rules:
        live.chains.setdefault(rule.chain, []).append(rule.args)
    return live


def rule_line(op: str, chain: str, args: Iterable[str]) -> str:
    return " ".join([op, chain, *map(quote, args)])


def parse_save(text: str, table: str) -> LiveTable:
    """Parse iptables-save output, keeping only `table`."""
    live, current = LiveTable(table), None
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
        elif current != table:
            continue
        elif line.startswith(":"):
            name, policy, *_ = [*line[1:].split(), "-"]
            live.chains.setdefault(name, [])
            if policy != "-":
                live.policies[name] = policy
        elif line.startswith("-A "):
            tokens = split_args(line)
            live.chains.setdefault(tokens[1], []).append(tuple(tokens[2:]))
    return live


class RuleCounters(NamedTuple):
    """One rule's packet and byte counters, as `iptables-save -c` printed them."""

    packets: int
    bytes: int
    args: tuple[str, ...]


_COUNTED = re.compile(r"\[(\d+):(\d+)\] (-A .*)")


def parse_counters(text: str, table: str, prefix: str | tuple[str, ...] = "",
                   chains: Collection[str] | None = None) -> dict[str, list[RuleCounters]]:
    """Parse `iptables-save -c` output (`[packets:bytes] -A CHAIN args`, the form of both
    nft and legacy): every chain of `table` whose name starts with `prefix` (and is one of
    `chains`, when given), with its rules' counters in order (a chain without rules maps
    to [])."""
    def wanted(name: str) -> bool:
        return name.startswith(prefix) and (chains is None or name in chains)

    out: dict[str, list[RuleCounters]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
        elif current != table:
            continue
        elif line.startswith(":"):
            if wanted(name := line[1:].split()[0]):
                out.setdefault(name, [])
        elif found := _COUNTED.fullmatch(line.rstrip()):
            if not wanted(found[3].split(" ", 2)[1]):
                continue  # split only the rules asked for: a table may hold thousands
            _, chain, *args = split_args(found[3])
            out.setdefault(chain, []).append(
                RuleCounters(int(found[1]), int(found[2]), tuple(args)))
        elif line.startswith("-A "):
            raise ValueError(f"a rule without counters: {line!r}")
    return out


# how `iptables -S CHAIN` says there is no such chain (iptables-nft 1.8.9: "incompatible")
_NO_CHAIN = ("No chain", "does not exist", "is incompatible")


def _listed_counters(line: str) -> RuleCounters:
    """A rule as `iptables -S CHAIN -v` lists it: save's form with `-c PACKETS BYTES` put
    before the target."""
    _, _, *args = split_args(line)
    for index in range(len(args) - 2):
        if args[index] == "-c" and args[index + 1].isdigit() and args[index + 2].isdigit():
            return RuleCounters(int(args[index + 1]), int(args[index + 2]),
                                tuple(args[:index] + args[index + 3:]))
    raise ValueError(f"a rule without counters: {line!r}")


def plan(state: Table, live: LiveTable) -> list[str]:
    """The restore lines (between `*table` and `COMMIT`) that make `live` match `state`.

    Order: declare (create or flush) chains, create missing shared chains, delete rules,
    fill owned chains, add shared rules, delete chains. Empty when nothing needs to change.
    """
    doomed = sorted(set(state.delete_chains) & live.chains.keys())
    stale = [c for c in state.chains if live.chains.get(c.name) != list(c.rules)]
    rewritten = {c.name for c in stale} | set(doomed)
    missing = [name for name in dict.fromkeys(state.shared_chains) if name not in live.chains]
    return (
        [f":{name} - [0:0]" for name in [*doomed, *(c.name for c in stale), *missing]]
        + _deletions(state, live, set(doomed), rewritten)
        + [rule_line("-A", c.name, args) for c in stale for args in c.rules]
        + _additions(state.rules, live)
        + [f"-X {name}" for name in doomed]
    )


def _deletions(state: Table, live: LiveTable, doomed: set[str], rewritten: set[str]) -> list[str]:
    """Jumps to doomed chains, rules to delete, and extra copies of shared rules."""
    dropped = set(map(_unplaced, state.delete_rules))
    # without chains or rules to delete, only extra copies of shared rules go, and they are
    # in the shared rules' chains: the others (maybe thousands of rules) need no count
    counted = None if doomed or dropped else {rule.chain for rule in state.rules}
    counts = Counter(Rule(chain, args)  # in live order: a deterministic payload
                     for chain, rules in live.chains.items()
                     if counted is None or chain in counted for args in rules)
    extra = {r: n for r, n in counts.items() if r.target in doomed or r in dropped}
    extra.update({r: counts[r] - 1 for r in map(_unplaced, state.rules) if counts[r] > 1})
    return [rule_line("-D", r.chain, r.args)
            for r, n in extra.items() if r.chain not in rewritten for _ in range(n)]


def _additions(rules: tuple[Rule, ...], live: LiveTable) -> list[str]:
    missing = [r for r in rules if r.args not in live.chains.get(r.chain, [])]
    inserts = [rule_line("-I", r.chain, ("1", *r.args)) for r in missing if r.insert]
    appends = [rule_line("-A", r.chain, r.args) for r in missing if not r.insert]
    return appends + inserts[::-1]  # inserted in reverse so they end up in the given order


def _unplaced(rule: Rule) -> Rule:
    return Rule(rule.chain, rule.args) if rule.insert else rule


class Iptables:
    """Applies `Table`s for one address family (4: iptables, 6: ip6tables) on one backend.

    `backend` is "nft" or "legacy" (default: what the host's `iptables` is, detected once per
    process). `runner` runs an argument list with optional stdin (default: subprocess).
    """

    def __init__(self, family: int = 4, *, backend: str | None = None,
                 runner: Runner = run_command, verify: bool = False) -> None:
        if family not in FAMILIES:
            raise ValueError(f"family must be 4 or 6, not {family!r}")
        backend = backend or host_backend()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.family, self.backend, self.runner, self.verify = family, backend, runner, verify
        self.cmd = f"{FAMILIES[family]}-{backend}"
        self.save_cmd = f"{FAMILIES[family]}-{backend}-save"
        self.restore_cmd = f"{FAMILIES[family]}-{backend}-restore"

    def read(self, table: str) -> LiveTable:
        """The live table, read with one iptables-save."""
        proc = self.runner([self.save_cmd, "-t", check_table(table)], None)
        if proc.returncode != 0:
            raise errors.IptablesFailure(
                f"{self.save_cmd} -t {table} failed: {first_line(proc.stderr)}", proc.stderr)
        try:
            return parse_save(proc.stdout, table)
        except ValueError as exc:
            raise errors.IptablesFailure(f"cannot parse {self.save_cmd} output: {exc}") from None

    def counters(self, table: str, prefix: str | tuple[str, ...] = "",
                 chains: Collection[str] | None = None) -> dict[str, list[RuleCounters]]:
        """The rule counters of `table`'s chains whose names start with `prefix` (and are
        among `chains`, if given): chain -> rules in order, read with one `iptables-save -c`."""
        proc = self.runner([self.save_cmd, "-c", "-t", check_table(table)], None)
        if proc.returncode != 0:
            raise errors.IptablesFailure(
                f"{self.save_cmd} -c -t {table} failed: {first_line(proc.stderr)}", proc.stderr)
        try:
            return parse_counters(proc.stdout, table, prefix, chains)
        except ValueError as exc:
            raise errors.IptablesFailure(f"cannot parse {self.save_cmd} -c output: {exc}") \
                from None

    def chain_counters(self, table: str, chains: Iterable[str]) -> dict[str, list[RuleCounters]]:
        """As `counters`, for a few named chains, one `iptables -S CHAIN -v` each (a table of
        thousands of rules is not dumped for them); a chain that is not there is left out."""
        out: dict[str, list[RuleCounters]] = {}
        for chain in chains:
            proc = self.runner([self.cmd, "-w", "-t", check_table(table), "-S",
                                check_chain(chain), "-v"], None)
            if proc.returncode != 0:
                if any(text in proc.stderr for text in _NO_CHAIN):
                    continue
                raise errors.IptablesFailure(
                    f"{self.cmd} -t {table} -S {chain} -v failed: {first_line(proc.stderr)}",
                    proc.stderr)
            try:
                out[chain] = [_listed_counters(line) for line in proc.stdout.splitlines()
                              if line.startswith("-A ")]
            except ValueError as exc:
                raise errors.IptablesFailure(f"cannot parse {self.cmd} -S -v output: {exc}") \
                    from None
        return out

    def pending(self, state: Table, live: LiveTable | None = None) -> list[str]:
        """What `apply` would send (without `*table`/`COMMIT`); empty when in place."""
        return plan(state, live if live is not None else self.read(state.name))

    def apply(self, state: Table, live: LiveTable | None = None) -> bool:
        """Make the table match `state` with at most one restore; True when something changed.

        `live` lets a caller that already read the table (to decide what to delete) skip the
        second read; without it, the read and the restore are shared with concurrent callers.
        """
        if live is None:
            return self.apply_with(state.name, lambda _: state)
        return self._apply_alone(state, live)

    def apply_with(self, table: str, build: Build) -> bool:
        """Read `table`, let `build` make the state from that reading, apply it (group
        commit: see the module's docstring). True when something changed."""
        return _group(self, check_table(table)).submit(self, _Job(build))

    def _apply_alone(self, state: Table, live: LiveTable) -> bool:
        lines = self.pending(state, live)
        if not lines:
            return False
        self._restore(state.name, lines)
        self._verify(state)
        return True

    def _verify(self, state: Table) -> None:
        if self.verify and (left := self.pending(state)):
            raise errors.IptablesFailure(
                f"{self.restore_cmd}: table {state.name} did not converge; a second pass would "
                f"still send {len(left)} line(s): {left[0]}", "\n".join(left))

    def _restore(self, table: str, lines: list[str]) -> None:
        """Send `lines` to `table` in one `iptables-restore --noflush --wait`."""
        payload = [f"*{check_table(table)}", *lines, "COMMIT"]
        proc = self.runner([self.restore_cmd, "--noflush", "--wait"], "\n".join(payload) + "\n")
        if proc.returncode != 0:
            raise restore_error(self.restore_cmd, table, payload, proc.stderr)


Build = Callable[[LiveTable], Table]


@dataclass(eq=False)
class _Job:
    build: Build
    state: Table | None = None
    lines: list[str] = field(default_factory=list)
    changed: bool = False
    error: errors.TartanError | None = None
    done: bool = False

    def planned(self) -> Table:
        """The state `build` made; a job is verified or applied only after that."""
        assert self.state is not None, "the batch builds every job's state before applying it"
        return self.state

    def result(self) -> bool:
        if self.error is not None:
            raise self.error
        return self.changed


class _Group:
    """The queue of one table of one restore command in this process."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.cond = threading.Condition()
        self.queue: list[_Job] = []
        self.busy = False

    def submit(self, ipt: Iptables, job: _Job) -> bool:
        with self.cond:
            self.queue.append(job)
            while self.busy and not job.done:
                self.cond.wait()
            leader = not job.done
            if leader:
                self.busy = True
                batch, self.queue = self.queue, []
        if leader:
            try:
                _run_batch(ipt, self.table, batch)
            except Exception as exc:  # a bug: every caller still gets an answer, an error
                failure = _caller_error(self.table, exc)
                for each in batch:
                    each.error = each.error or failure
            finally:
                with self.cond:
                    for each in batch:
                        each.done = True
                    self.busy = False
                    self.cond.notify_all()
        return job.result()


_groups: dict[tuple, _Group] = {}
_groups_guard = threading.Lock()


def _group(ipt: Iptables, table: str) -> _Group:
    """Callers share a batch only when the batch runs exactly as each of them would: same
    binaries, runner and verify flag, from the same network namespace (the leader's thread
    runs the commands, and a thread may have entered another namespace)."""
    netns = os.stat("/proc/thread-self/ns/net").st_ino
    key = (ipt.restore_cmd, table, ipt.runner, ipt.verify, netns)
    with _groups_guard:
        return _groups.setdefault(key, _Group(table))


@dataclass
class _Footprint:
    """What a plan touches: chains it declares or deletes, chains its rules go into or jump
    to, and its rule lines."""

    owned: set[str] = field(default_factory=set)
    used: set[str] = field(default_factory=set)
    rules: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, lines: list[str]) -> _Footprint:
        out = cls()
        for line in lines:
            if line.startswith(":"):
                out.owned.add(line[1:].split()[0])
            elif line.startswith("-X "):
                out.owned.add(line.split()[1])
            elif line[:3] in ("-A ", "-D ", "-I "):
                out.rules.add(line)
                tokens = split_args(line)
                out.used.add(tokens[1])
                if target := target_of(tuple(tokens[2:])):
                    out.used.add(target)
        return out

    def collides(self, other: _Footprint) -> bool:
        return bool(self.owned & (other.owned | other.used) or self.used & other.owned
                    or self.rules & other.rules)

    def add(self, other: _Footprint) -> None:
        self.owned |= other.owned
        self.used |= other.used
        self.rules |= other.rules


def _run_batch(ipt: Iptables, table: str, batch: list[_Job]) -> None:
    try:
        live = ipt.read(table)
    except errors.TartanError as exc:
        for job in batch:
            job.error = exc
        return
    merged, alone, taken = [], [], _Footprint()
    for job in batch:
        try:
            job.state = job.build(live)
            job.lines = plan(job.state, live)
        except Exception as exc:  # one caller's bug is that caller's error
            job.error = _caller_error(table, exc)
            continue
        footprint = _Footprint.of(job.lines)
        if footprint.collides(taken):
            alone.append(job)  # planned against a table another plan is about to change
            continue
        taken.add(footprint)
        if job.lines:
            merged.append(job)
    if len(merged) > 1:
        try:
            ipt._restore(table, [line for job in merged for line in job.lines])
        except errors.TartanError:
            alone, merged = merged + alone, []
    for job in merged if len(merged) > 1 else []:
        job.changed = True
        _verify(ipt, job)
    # A lone merged plan goes first, on the reading it was planned against; the others are
    # re-read and re-planned, as the table may have moved on.
    for job in merged if len(merged) == 1 else []:
        _run_alone(ipt, table, job, live)
    for job in alone:
        _run_alone(ipt, table, job, None)


def _verify(ipt: Iptables, job: _Job) -> None:
    try:
        ipt._verify(job.planned())
    except errors.TartanError as exc:
        job.error = exc


def _run_alone(ipt: Iptables, table: str, job: _Job, live: LiveTable | None) -> None:
    """One caller on its own, on `live` or (None) on a fresh reading."""
    try:
        if live is None:
            live = ipt.read(table)
            job.state = job.build(live)
        job.changed = ipt._apply_alone(job.planned(), live)
        job.error = None
    except Exception as exc:  # one caller's bug is that caller's error
        job.error = _caller_error(table, exc)


def _caller_error(table: str, exc: Exception) -> errors.TartanError:
    if isinstance(exc, errors.TartanError):
        return exc
    return errors.IptablesFailure(f"applying table {table} failed: {type(exc).__name__}: {exc}")


def restore_error(cmd: str, table: str, payload: list[str], stderr: str) -> errors.IptablesFailure:
    """An IptablesFailure naming the table and failing rule, with numbered lines around it."""
    index = _failing_index(payload, stderr)
    if index is None:
        return errors.IptablesFailure(
            f"{cmd} failed in table {table}: {first_line(stderr)}",
            f"{stderr.strip()}\npayload:\n{numbered_lines(payload, 0, len(payload))}")
    details = numbered_lines(payload, max(0, index - _CONTEXT), index + _CONTEXT + 1, mark=index)
    return errors.IptablesFailure(
        f"{cmd} failed in table {table} at line {index + 1} ({payload[index]}): "
        f"{first_line(stderr)}", f"{stderr.strip()}\n{details}")


def _failing_index(payload: list[str], stderr: str) -> int | None:
    """The 0-based payload index iptables-restore blamed ("line N failed", "at line: N").

    nf_tables reports a jump to a missing chain at COMMIT; then blame the first rule that jumps
    to the chain it names.
    """
    found = re.search(r"line:? (\d+)", stderr)
    if not found or not 0 < int(found.group(1)) <= len(payload):
        return None
    index = int(found.group(1)) - 1
    missing = re.search(r"Chain '([^']+)' does not exist", stderr)
    if payload[index] == "COMMIT" and missing:
        jumps = [i for i, line in enumerate(payload)
                 if line.startswith("-") and target_of(tuple(split_args(line))) == missing[1]]
        index = jumps[0] if jumps else index
    return index


def numbered_lines(payload: list[str], start: int, stop: int, mark: int = -1) -> str:
    return "\n".join(f"{'>' if i == mark else ' '} {i + 1:4d}  {payload[i]}"
                     for i in range(start, min(stop, len(payload))))


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no error output"
