"""The ipset applier: sets as data, applied with one `ipset restore`, refilled through a swap.

A caller describes the sets it owns (`IpSet`: name, type, members, a comment written on every
member). `Ipsets.apply` reads the live sets once with `ipset save`, keeps only those whose name
starts with its prefix (other owners' sets are never planned against or touched), and sends
what differs in a single `ipset restore -exist`. Applying the same sets again runs no restore.

- A missing set is created and filled.
- A set whose members (or comment) changed is refilled through a temporary set: the temp is
  created and filled, swapped with the live set and destroyed, so a packet matched against the
  set sees the old members or the new ones, never an empty or half-filled set.
- A set whose type or family changed cannot be swapped (the kernel refuses): it is destroyed
  and made again when nothing uses it; while an iptables rule still matches it, `apply` raises
  `SetInUse` before sending anything (a new type wants a new name).
- Sets no longer wanted are not destroyed by `apply`, as rules may still match them. `prune`
  destroys them once the rules are gone; a set still in use is skipped, and `SetInUse` names it
  after the others are destroyed. `apply_with_rules` runs sets, rules, prune in that order.

`ipset restore` is not atomic: it stops at the first failing line and keeps the lines before.
Each set's lines therefore leave it whole (old or new) at every point, and the next apply
repairs a set an interrupted payload left behind. Only the standard library is imported.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from tartan.kernel import errors
from tartan.kernel.iptables import first_line, numbered_lines  # the iptables applier's report
from tartan.kernel.iptables_backend import TIMEOUT, Runner

TYPES = ("hash:ip", "hash:net", "hash:ip,port")
FAMILIES = {4: "inet", 6: "inet6"}
_FAMILY_NUMBERS = {name: number for number, name in FAMILIES.items()}
PROTOCOLS = ("tcp", "udp", "sctp")
MAX_NAME_LEN = 31  # IPSET_MAXNAMELEN (32) minus the terminating NUL
MAX_PREFIX_LEN = 16  # a temp name is the prefix, "TMP-" and 10 hex digits
MAX_COMMENT_LEN = 255  # IPSET_MAX_COMMENT_SIZE
DEFAULT_MAXELEM = 65536
NOT_INSTALLED = "ipset not found: install ipset (the ipset package)"
_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
_PORT = re.compile(r"[0-9]{1,5}")
_ADD = re.compile(r"add (\S+) (\S+)(.*)")
_COMMENT = re.compile(r' comment "([^"]*)"')
_FAILED_LINE = re.compile(r"Error in line (\d+): (.*)")
_CONTEXT = 3  # payload lines shown either side of a failing one


class InvalidSet(errors.IpsetFailure):
    """A set name, type, member or comment that must not reach ipset."""


class SetInUse(errors.IpsetFailure):
    """Sets a kernel component (an iptables `-m set` rule, a list:set) still uses."""

    def __init__(self, msg: str, sets: Sequence[str]) -> None:
        super().__init__(msg)
        self.sets = tuple(sets)


def check_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME_LEN or not _NAME.fullmatch(name):
        raise InvalidSet(
            f"invalid ipset name {name!r}: use 1-{MAX_NAME_LEN} characters from "
            "A-Z a-z 0-9 _ . - , not starting with '-'")
    return name


def check_comment(text: str) -> str:
    if (not isinstance(text, str) or len(text.encode()) > MAX_COMMENT_LEN or '"' in text
            or not text.isprintable()):
        raise InvalidSet(f"invalid ipset comment {text!r}: use at most {MAX_COMMENT_LEN} "
                         "bytes of printable text without '\"'")
    return text


def member(kind: str, family: int, text: str) -> str:
    """`text` as `ipset save` prints a member of a `kind` set of `family`, or InvalidSet."""
    try:
        if not isinstance(text, str) or "%" in text:
            raise ValueError("use a string, without a %scope")
        return _MEMBERS[kind](text, family)
    except ValueError as exc:
        raise InvalidSet(f"invalid member {text!r} for a {kind} set of family "
                         f"{FAMILIES[family]}: {exc}") from None


def _network(text: str, family: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    net = ipaddress.ip_network(text, strict=False)
    if net.version != family:
        raise ValueError(f"an IPv{net.version} address in an IPv{family} set")
    return net


def _address(text: str, family: int) -> str:
    if "/" not in text:  # the common case, without a network's parse
        address = ipaddress.ip_address(text)
        if address.version != family:
            raise ValueError(f"an IPv{address.version} address in an IPv{family} set")
        return str(address)
    net = _network(text, family)
    if net.prefixlen != net.max_prefixlen:
        raise ValueError("a hash:ip member is one address (use hash:net for networks)")
    return str(net.network_address)


def _net(text: str, family: int) -> str:
    net = _network(text, family)
    if net.prefixlen == 0:
        raise ValueError("ipset cannot hold a /0: use its two halves (0.0.0.0/1 and "
                         "128.0.0.0/1, or ::/1 and 8000::/1)")
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _address_port(text: str, family: int) -> str:
    address, comma, rest = text.partition(",")
    proto, colon, port = rest.rpartition(":")
    proto = proto if colon else "tcp"  # ipset's default, as `ipset save` prints it
    if not comma or proto not in PROTOCOLS:
        raise ValueError(f"use address,protocol:port with a protocol of {', '.join(PROTOCOLS)}")
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise ValueError("the port must be a number 0-65535")
    return f"{_address(address, family)},{proto}:{int(port)}"


_MEMBERS: dict[str, Callable[[str, int], str]] = {
    "hash:ip": _address, "hash:net": _net, "hash:ip,port": _address_port}


@dataclass(frozen=True)
class IpSet:
    """A set its caller owns: created if missing, its members made exactly `members`.

    Members are normalised to the form `ipset save` prints (10.0.0.0/24; 10.0.0.1 for a /32
    in hash:net; 10.0.0.1,tcp:80 for 10.0.0.1,80). `comment` is written on every member, so
    `ipset list` says why it is there. `family` is 4 (inet) or 6 (inet6).
    """

    name: str
    type: str
    members: frozenset[str]
    comment: str = ""
    family: int = 4

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.type not in TYPES:
            raise InvalidSet(f"invalid type {self.type!r} for ipset {self.name}: use one of "
                             f"{', '.join(TYPES)}")
        if self.family not in FAMILIES:
            raise InvalidSet(f"invalid family {self.family!r} for ipset {self.name}: use 4 or 6")
        check_comment(self.comment)
        if isinstance(self.members, str):
            raise InvalidSet(f"the members of ipset {self.name} must be a collection of "
                             "strings, not one string")
        object.__setattr__(self, "members", frozenset(
            member(self.type, self.family, text) for text in self.members))

    def entries(self) -> dict[str, str]:
        """Member -> comment, as the live set should hold them."""
        return dict.fromkeys(self.members, self.comment)


@dataclass
class LiveSet:
    """One set as `ipset save` printed it; members in IpSet's normal form where they have one."""

    name: str
    type: str
    family: str = ""
    entries: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, want: IpSet) -> LiveSet:
        """The set as it stands once `want` was applied."""
        return cls(want.name, want.type, FAMILIES[want.family], want.entries())

    def add(self, text: str, comment: str) -> None:
        family = _FAMILY_NUMBERS.get(self.family)
        try:
            key = member(self.type, family, text) if self.type in TYPES and family else text
        except InvalidSet:
            key = text
        self.entries[key] = comment


def parse_save(text: str, owned: Callable[[str], bool]) -> dict[str, LiveSet]:
    """The sets in `ipset save` output whose names `owned` accepts."""
    sets: dict[str, LiveSet] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "create" and owned(words[1]):
            family = words[words.index("family") + 1] if "family" in words[:-1] else ""
            sets[words[1]] = LiveSet(words[1], words[2], family)
        elif (found := _ADD.fullmatch(line)) and found[1] in sets:
            note = _COMMENT.search(found[3])
            sets[found[1]].add(found[2], note[1] if note else "")
    return sets


def parse_terse(text: str, owned: Callable[[str], bool]) -> dict[str, int]:
    """Owned set -> its reference count, from `ipset list -t` output."""
    refs: dict[str, int] = {}
    name = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "Name":
            name = value.strip()
        elif key == "References" and owned(name):
            refs[name] = int(value)
    return refs


def temp_name(name: str, prefix: str) -> str:
    """The set `name` is refilled through: owned by `prefix`, reserved, at most 30 characters."""
    return f"{prefix}TMP-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def retyped(want: IpSet, live: LiveSet) -> bool:
    return (live.type, live.family) != (want.type, FAMILIES[want.family])


def in_place(want: IpSet, live: LiveSet | None) -> bool:
    return live is not None and not retyped(want, live) and live.entries == want.entries()


def plan(wanted: Iterable[IpSet], live: dict[str, LiveSet], prefix: str) -> list[str]:
    """The restore lines that make the live sets hold `wanted`; empty when they do."""
    return [line for want in wanted for line in _plan_set(want, live.get(want.name), prefix)]


def _plan_set(want: IpSet, live: LiveSet | None, prefix: str) -> list[str]:
    if live is None:
        return _fill(want.name, want)
    if retyped(want, live):  # nothing uses it (checked before): no packet sees the gap
        return [f"destroy {want.name}", *_fill(want.name, want)]
    if in_place(want, live):
        return []
    temp = temp_name(want.name, prefix)  # destroyed first: a refill may have been interrupted
    return [f"destroy {temp}", *_fill(temp, want), f"swap {temp} {want.name}", f"destroy {temp}"]


def _fill(name: str, want: IpSet) -> list[str]:
    note = f' comment "{want.comment}"' if want.comment else ""
    size = len(want.members)
    header = f"{want.type} family {FAMILIES[want.family]}"
    header += f" maxelem {size}" if size > DEFAULT_MAXELEM else ""
    return [f"create {name} {header} comment",
            *(f"add {name} {text}{note}" for text in sorted(want.members))]


def run_ipset(argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
    """Run an argument list (never a shell string), capturing text output, bounded in time."""
    try:
        return subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)
    except FileNotFoundError:
        raise errors.IpsetFailure(NOT_INSTALLED) from None
    except subprocess.TimeoutExpired:
        raise errors.IpsetFailure(f"{argv[0]} did not finish in {TIMEOUT:g}s") from None


class Ipsets:
    """Applies `IpSet`s whose names start with `prefix`; sets of other owners are left alone.

    `runner` runs an argument list with optional stdin (default: the `ipset` binary, in the
    calling thread's network namespace).
    """

    def __init__(self, *, prefix: str = "TARTAN-", runner: Runner = run_ipset) -> None:
        if not _NAME.fullmatch(prefix) or len(prefix) > MAX_PREFIX_LEN:
            raise InvalidSet(f"invalid ipset prefix {prefix!r}: use 1-{MAX_PREFIX_LEN} "
                             "characters from A-Z a-z 0-9 _ . - , not starting with '-'")
        self.prefix, self.runner = prefix, runner

    def owns(self, name: str) -> bool:
        return name.startswith(self.prefix)

    def read(self) -> dict[str, LiveSet]:
        """The owned sets, read with one `ipset save`."""
        return parse_save(self._run(["ipset", "save"]), self.owns)

    def references(self) -> dict[str, int]:
        """Owned set -> how many kernel components use it, read with one `ipset list -t`."""
        text = self._run(["ipset", "list", "-t"])
        try:
            return parse_terse(text, self.owns)
        except ValueError as exc:
            raise errors.IpsetFailure(f"cannot parse ipset list -t output: {exc}") from None

    def apply(self, wanted: Iterable[IpSet], live: dict[str, LiveSet] | None = None) -> int:
        """Make the sets in `wanted` hold their members with at most one restore; the number
        of sets created, refilled or remade (0: the kernel matched). Others stay: see prune.
        `live`: the owned sets as the caller knows them to be (not read again)."""
        sets = self._check(wanted)
        live = self.read() if live is None else live
        changed = [want for want in sets if not in_place(want, live.get(want.name))]
        self._refuse_retyped_in_use(changed, live)
        if changed:
            self._restore(plan(changed, live, self.prefix))
        return len(changed)

    def prune(self, keep: Iterable[str]) -> int:
        """Destroy the owned sets not named in `keep` (left temps too) with one restore; the
        number destroyed. Call it after the iptables restore that removed the rules matching
        them: sets still in use are skipped, and then SetInUse names them."""
        refs = self.references()
        stale = sorted(set(refs) - set(keep))
        free = [name for name in stale if refs[name] == 0]
        if free:
            self._restore([f"destroy {name}" for name in free])
        if busy := [name for name in stale if refs[name] > 0]:
            raise SetInUse(
                f"ipset {', '.join(busy)} cannot be destroyed: still in use by a kernel "
                "component (an iptables -m set rule or a list:set); remove the rules that "
                "match it, then prune again", busy)
        return len(free)

    def _check(self, wanted: Iterable[IpSet]) -> list[IpSet]:
        sets = list(wanted)
        names = [want.name for want in sets]
        reserved = f"{self.prefix}TMP-"
        if foreign := [n for n in names if not self.owns(n) or n.startswith(reserved)]:
            raise InvalidSet(f"ipsets {foreign} are not this applier's: names start with "
                             f"{self.prefix!r}, and {reserved}* is kept for refills")
        if twice := sorted({name for name in names if names.count(name) > 1}):
            raise InvalidSet(f"ipsets {twice} are declared twice")
        return sets

    def _refuse_retyped_in_use(self, changed: list[IpSet], live: dict[str, LiveSet]) -> None:
        retypes = {w.name: w for w in changed if w.name in live and retyped(w, live[w.name])}
        refs = self.references() if retypes else {}
        if busy := [name for name in retypes if refs.get(name, 0) > 0]:
            what = "; ".join(f"{n}: {live[n].type} {live[n].family} -> {retypes[n].type} "
                             f"{FAMILIES[retypes[n].family]}" for n in busy)
            raise SetInUse(
                f"ipset type change while in use by a kernel component ({what}): the kernel "
                "swaps only sets of one type; give the new set a new name, or remove the "
                "rules that match it first", busy)

    def _run(self, argv: list[str]) -> str:
        proc = self.runner(argv, None)
        if proc.returncode != 0:
            raise errors.IpsetFailure(
                f"{' '.join(argv)} failed: {first_line(proc.stderr)}", proc.stderr)
        out: str = proc.stdout
        return out

    def _restore(self, lines: list[str]) -> None:
        proc = self.runner(["ipset", "restore", "-exist"], "\n".join(lines) + "\n")
        if proc.returncode != 0:
            raise restore_error(lines, proc.stderr)


def apply_with_rules(ipsets: Ipsets, sets: Iterable[IpSet], apply_rules: Callable[[], int],
                     applied: Iterable[IpSet] | None = None) -> int:
    """Sets, then the rules that match them, then the sets no rule needs any more (the order
    kube-router keeps). `sets` is everything the caller owns under the applier's prefix: the
    rest is pruned. The number of changes of the three steps; a failing step stops the rest.

    `applied`: the sets the caller's last apply made, when it knows the kernel still holds
    them; then nothing is read, only what differs from them is restored, and pruning (which
    reads who uses what) runs only when a set went away."""
    wanted = list(sets)
    if applied is None:
        changed = ipsets.apply(wanted) + int(apply_rules())
        return changed + ipsets.prune(want.name for want in wanted)
    known = {want.name: LiveSet.of(want) for want in applied}
    changed = ipsets.apply(wanted, live=known) + int(apply_rules())
    if known.keys() - {want.name for want in wanted}:
        changed += ipsets.prune(want.name for want in wanted)
    return changed


def restore_error(payload: list[str], stderr: str) -> errors.IpsetFailure:
    """An IpsetFailure naming the failing line ("Error in line N"), with numbered lines
    around it and what the restore kept."""
    found = _FAILED_LINE.search(stderr)
    if not found or not 0 < int(found[1]) <= len(payload):
        return errors.IpsetFailure(
            f"ipset restore failed: {first_line(stderr)}",
            f"{stderr.strip()}\npayload:\n{numbered_lines(payload, 0, len(payload))}")
    index = int(found[1]) - 1
    kept = f"lines 1-{index} were applied" if index else "nothing was applied"
    details = numbered_lines(payload, max(0, index - _CONTEXT), index + _CONTEXT + 1, mark=index)
    return errors.IpsetFailure(
        f"ipset restore failed at line {index + 1} ({payload[index]}): {found[2].strip()}",
        f"{stderr.strip()}\n{kept} (ipset restore is not atomic; apply again to repair)\n"
        f"{details}")
