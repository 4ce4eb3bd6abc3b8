"""FakeIpset: an in-memory Runner modelling the `ipset` binary, for tests without root.

It models `save` (and `list -o save`), `list -t`, and `restore [-exist]` with create, add, del,
flush, swap and destroy. Like the real one (checked against ipset 7.17), restore runs line by
line and stops at the first failing line with "Error in line N: ...", keeping the lines before
it: ipset restore is not atomic. Swap exchanges contents but not names, so what references a
name (an iptables rule) keeps referencing it, as in the kernel.
"""

from __future__ import annotations

import ipaddress
import shlex
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

TYPES = ("hash:ip", "hash:net", "hash:ip,port")
VERSION = "ipset v7.17"


class _Failed(Exception):
    pass


@dataclass
class FakeSet:
    type: str
    family: str = "inet"
    comment: bool = False
    members: dict[str, str] = field(default_factory=dict)  # member -> comment

    def header(self) -> str:
        note = " comment" if self.comment else ""
        return f"family {self.family} hashsize 1024 maxelem 65536{note} bucketsize 12"


class FakeIpset:
    """The sets of one network namespace; `references[name]` counts the rules matching a set.

    `refuse` maps a member to the kernel error its add fails with (fault injection); `calls`
    records every argv, `payloads` every restore's stdin, and `history` the members of every
    set after each restore line that was applied.
    """

    def __init__(self, refuse: dict[str, str] | None = None) -> None:
        self.sets: dict[str, FakeSet] = {}
        self.references: Counter[str] = Counter()
        self.refuse = refuse or {}
        self.calls: list[list[str]] = []
        self.payloads: list[str] = []
        self.history: list[dict[str, frozenset[str]]] = []

    def __call__(self, argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess:
        self.calls.append(list(argv))
        args = list(argv[1:])
        if args in (["save"], ["list", "-o", "save"]):
            return _done(argv, 0, self.save())
        if args == ["list", "-t"]:
            return _done(argv, 0, self.terse())
        if args[:1] == ["restore"]:
            self.payloads.append(stdin or "")
            try:
                self._restore((stdin or "").splitlines(), "-exist" in args)
            except _Failed as exc:
                return _done(argv, 1, "", f"{VERSION}: {exc}\n")
            return _done(argv, 0, "")
        return _done(argv, 1, "", f"{VERSION}: the fake does not model {args}\n")

    def seed(self, payload: str) -> None:
        """Make sets as another program would (a restore that must succeed)."""
        assert self(["ipset", "restore"], payload).returncode == 0

    def save(self) -> str:
        lines = []
        for name, s in self.sets.items():
            lines.append(f"create {name} {s.type} {s.header()} initval 0x1234abcd")
            for text, note in reversed(s.members.items()):  # not the order they came in
                lines.append(f"add {name} {text}" + (f' comment "{note}"' if note else ""))
        return "".join(f"{line}\n" for line in lines)

    def terse(self) -> str:
        blocks = [f"Name: {name}\nType: {s.type}\nRevision: 6\nHeader: {s.header()}\n"
                  f"Size in memory: 256\nReferences: {self.references[name]}\n"
                  f"Number of entries: {len(s.members)}" for name, s in self.sets.items()]
        return "\n\n".join(blocks) + ("\n" if blocks else "")

    def _restore(self, lines: list[str], exist: bool) -> None:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                self._line(shlex.split(line), exist)
            except _Failed as exc:
                raise _Failed(f"Error in line {number}: {exc}") from None
            self.history.append({n: frozenset(s.members) for n, s in self.sets.items()})

    def _line(self, words: list[str], exist: bool) -> None:
        command, name, *rest = words
        if command == "create":
            self._create(name, rest, exist)
        elif command in ("add", "del"):
            self._element(command, self._get(name), rest, exist)
        elif command == "flush":
            self._get(name).members.clear()
        elif command == "swap":
            self._swap(name, rest[0])
        elif command == "destroy":
            self._destroy(name, exist)
        else:
            raise _Failed(f"Syntax error: unknown command {command}")

    def _get(self, name: str) -> FakeSet:
        if name not in self.sets:
            raise _Failed("The set with the given name does not exist")
        return self.sets[name]

    def _create(self, name: str, rest: list[str], exist: bool) -> None:
        if len(name) > 31:
            raise _Failed(f"Syntax error: setname '{name}' is longer than 31 characters")
        if rest[0] not in TYPES:
            raise _Failed(f"Syntax error: typename '{rest[0]}' is unknown")
        family = rest[rest.index("family") + 1] if "family" in rest else "inet"
        made = FakeSet(rest[0], family, "comment" in rest)
        old = self.sets.get(name)
        if old is not None and not (exist and (old.type, old.family, old.comment) ==
                                    (made.type, made.family, made.comment)):
            raise _Failed("Set cannot be created: set with the same name already exists")
        self.sets.setdefault(name, made)

    def _element(self, command: str, s: FakeSet, rest: list[str], exist: bool) -> None:
        text = canonical(s, rest[0])
        note = rest[rest.index("comment") + 1] if "comment" in rest else ""
        if note and not s.comment:
            raise _Failed("Comment extension is not supported by the set")
        if command == "del":
            if text not in s.members and not exist:
                raise _Failed("Element cannot be deleted from the set: it's not added")
            s.members.pop(text, None)
            return
        if text in self.refuse:
            raise _Failed(self.refuse[text])
        if text in s.members and not exist:
            raise _Failed("Element cannot be added to the set: it's already added")
        s.members[text] = note

    def _swap(self, first: str, second: str) -> None:
        a, b = self._get(first), self._get(second)
        if (a.type, a.family) != (b.type, b.family):
            raise _Failed("The sets cannot be swapped: their type does not match")
        self.sets[first], self.sets[second] = b, a

    def _destroy(self, name: str, exist: bool) -> None:
        if name not in self.sets and exist:
            return
        self._get(name)
        if self.references[name]:
            raise _Failed("Set cannot be destroyed: it is in use by a kernel component")
        del self.sets[name]


def canonical(s: FakeSet, text: str) -> str:
    """A member as the kernel stores it and `ipset save` prints it."""
    version = 6 if s.family == "inet6" else 4
    try:
        if s.type == "hash:ip,port":
            address, _, port = text.partition(",")
            proto, _, number = port.rpartition(":")
            return f"{_one(address, version)},{proto or 'tcp'}:{int(number)}"
        if s.type == "hash:net":
            net = ipaddress.ip_network(text, strict=False)
            if net.prefixlen == 0 or net.version != version:
                raise ValueError
            return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        return _one(text, version)
    except ValueError:
        raise _Failed(f"Syntax error: cannot parse {text}: resolving to IPv{version} "
                      "address failed") from None


def _one(text: str, version: int) -> str:
    address = ipaddress.ip_address(text)
    if address.version != version:
        raise ValueError
    return str(address)


def _done(argv: Sequence[str], code: int, out: str, err: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(list(argv), code, out, err)
