"""A packet through compiled policy rules, without a kernel: which packets do they accept?

Interprets the subset of iptables the policy compiler writes (-s/-d, -p, --dport ranges,
-m set [!] --match-set NAME src|dst|dst,dst, -m conntrack --ctstate, comments, NFLOG,
RETURN, DROP and jumps) against the compiled ipsets, starting from a built-in hook whose
policy is ACCEPT. Deliberately independent of the compiler: it reads only its output.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tartan.kernel.ipset import IpSet
from tartan.netpol.compiler import Compiled


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    protocol: str = "tcp"  # tcp, udp, sctp, icmp
    dport: int = 0
    established: bool = False


class Unsupported(Exception):
    """The rules use iptables this interpreter does not know: the test must not guess."""


def verdict(compiled: Compiled, hook: str, packet: Packet) -> str:
    """ACCEPT or DROP, and the NFLOG prefixes logged on the way (in `logged`)."""
    return Walk(compiled, packet).hook(hook)


class Walk:
    def __init__(self, compiled: Compiled, packet: Packet) -> None:
        self.chains = {c.name: c.rules for c in compiled.chains}
        self.hooks = compiled.hooks
        self.sets = {s.name: s for s in compiled.sets}
        self.packet = packet
        self.logged: list[str] = []
        self.comments: list[str] = []  # of the rule that decided

    def hook(self, name: str) -> str:
        rules = [r.args for r in self.hooks if r.chain == name]
        return "DROP" if self._chain(rules, depth=0) == "DROP" else "ACCEPT"

    def _chain(self, rules, depth: int) -> str | None:
        if depth > 8:
            raise Unsupported("jumps nest too deep")
        for args in rules:
            target, extra = _split_target(args)
            if not self._matches(args[: len(args) - len(extra) - 2]):
                continue
            if target == "RETURN":
                self.comments.append(_comment(args))
                return None
            if target == "DROP":
                self.comments.append(_comment(args))
                return "DROP"
            if target == "NFLOG":
                self.logged.append(_option(extra, "--nflog-prefix"))
                continue
            if target in self.chains:
                if self._chain(self.chains[target], depth + 1) == "DROP":
                    return "DROP"
                continue
            raise Unsupported(f"target {target}")
        return None

    def _matches(self, args: tuple[str, ...]) -> bool:
        i, negate = 0, False
        while i < len(args):
            word = args[i]
            if word == "!":
                negate, i = True, i + 1
                continue
            if word in ("-s", "-d"):
                net = ipaddress.ip_network(args[i + 1])
                address = ipaddress.ip_address(self.packet.src if word == "-s"
                                               else self.packet.dst)
                ok, i = address in net, i + 2
            elif word == "-p":
                ok, i = self.packet.protocol == args[i + 1], i + 2
            elif word == "-m":
                ok, i, negate = self._module(args, i + 2, args[i + 1], negate)
            else:
                raise Unsupported(f"match {word} in {args}")
            if ok == negate:
                return False
            negate = False
        return True

    def _module(self, args: tuple[str, ...], i: int, module: str,
                negate: bool) -> tuple[bool, int, bool]:
        if module == "comment":
            return True, i + 2, False
        if module in ("tcp", "udp", "sctp") and args[i] == "--dport":
            low, _, high = args[i + 1].partition(":")
            port = self.packet.dport
            return int(low) <= port <= int(high or low), i + 2, False
        if module == "conntrack" and args[i] == "--ctstate":
            states = set(args[i + 1].split(","))
            return self.packet.established and "ESTABLISHED" in states, i + 2, False
        if module == "set":
            if args[i] == "!":
                negate, i = not negate, i + 1
            if args[i] != "--match-set":
                raise Unsupported(f"set option {args[i]}")
            return self._in_set(self.sets[args[i + 1]], args[i + 2]), i + 3, negate
        raise Unsupported(f"module {module} {args[i:]}")

    def _in_set(self, ipset: IpSet, flags: str) -> bool:
        address = ipaddress.ip_address(self.packet.src if flags.startswith("src")
                                       else self.packet.dst)
        if ipset.type == "hash:ip":
            return str(address) in ipset.members
        if ipset.type == "hash:net":
            return any(address in ipaddress.ip_network(m) for m in ipset.members)
        if ipset.type == "hash:ip,port" and flags == "dst,dst":
            return f"{address},{self.packet.protocol}:{self.packet.dport}" in ipset.members
        raise Unsupported(f"{ipset.type} with {flags}")


def _split_target(args: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """The -j target and the target's own options after it."""
    at = max(i for i, word in enumerate(args) if word == "-j")
    return args[at + 1], args[at + 2:]


def _option(extra: tuple[str, ...], name: str) -> str:
    return extra[extra.index(name) + 1] if name in extra else ""


def _comment(args: tuple[str, ...]) -> str:
    return args[args.index("--comment") + 1] if "--comment" in args else ""
