"""Netfilter tracing where the rules are iptables-legacy's: `-j TRACE` makes the kernel log
each rule the probe meets (nf_log, read from /dev/kmsg) as

    TRACE: filter:FORWARD:rule:3 IN=cni0 OUT=tartan.1 MAC=... SRC=... DST=... PROTO=TCP SPT=...

The line names the rule by its number; its text and verdict come from `iptables-legacy-save`
of the node (a chain's `policy:N` is its policy). One kernel log serves every namespace, so a
line is given to the node owning the MAC address it arrived at. The kernel logs for other
namespaces than the host's first only with `net.netfilter.nf_log_all_netns` on, a setting of
that first namespace: run from there, the trace switches it on and back off after it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tartan.kernel import link
from tartan.kernel.iptables import Iptables, LiveTable, rule_line
from tartan.kernel.netns import entered, netlink_in

ALL_NETNS = Path("/proc/sys/net/netfilter/nf_log_all_netns")
_LINE = re.compile(r"TRACE: (?P<table>\w+):(?P<chain>[^:\s]+):(?P<kind>rule|return|policy):"
                   r"(?P<number>\d+) (?P<fields>.*)")


@contextlib.contextmanager
def kernel_log() -> Iterator[Callable[[], list[str]]]:
    """The kernel log's messages from now on: the body gets a function that returns the
    ones written since the last call."""
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(fd, 0, os.SEEK_END)

    def read() -> list[str]:
        messages: list[str] = []
        while True:
            try:
                record = os.read(fd, 8192).decode(errors="replace")
            except BlockingIOError:
                return messages
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten before they were read
                    continue
                raise
            messages.append(record.split(";", 1)[-1].split("\n", 1)[0])

    try:
        yield read
    finally:
        os.close(fd)


@contextlib.contextmanager
def logging_in_namespaces(netns: Sequence[str]) -> Iterator[bool]:
    """nf_log_all_netns on while the body runs, when some node is not the host's first
    namespace. The setting exists only there: from another namespace it cannot be seen, and
    the body is told False (the kernel may log nothing)."""
    if all(_is_first(path) for path in netns):
        yield True
        return
    if not ALL_NETNS.exists():
        yield False
        return
    before = ALL_NETNS.read_text().strip()
    if before != "1":
        ALL_NETNS.write_text("1\n")
    try:
        yield True
    finally:
        if before != "1":
            ALL_NETNS.write_text(before + "\n")


def _is_first(path: str) -> bool:
    with entered(path):
        return ALL_NETNS.exists()


def macs(netns: str) -> set[str]:
    with netlink_in(netns) as ipr:
        return {li.mac.lower() for li in link.all_links(ipr) if li.mac}


def events(messages: Sequence[str], nodes: Sequence[tuple[str, str]], src_ip: str,
           dst_ip: str) -> list[tuple[str, str, str, str, int]]:
    """(node, table, chain, kind, number) of the lines about the probe going forward."""
    owners = {mac: name for name, netns in nodes for mac in macs(netns)} if len(nodes) > 1 \
        else {}
    out = []
    for message in messages:
        found = _LINE.search(message)
        if not found:
            continue
        fields = dict(part.split("=", 1) for part in found["fields"].split() if "=" in part)
        if fields.get("SRC") != src_ip or fields.get("DST") != dst_ip:
            continue
        node = owners.get(fields.get("MAC", "")[:17].lower(), "") if owners else nodes[0][0]
        if node:
            out.append((node, found["table"], found["chain"], found["kind"],
                        int(found["number"])))
    return out


def rule_of(live: LiveTable, chain: str, kind: str, number: int) -> tuple[str, str]:
    """(verdict, rule text) of the `number`th rule of `chain` (its policy for `policy`)."""
    if kind == "policy":
        return live.policies.get(chain, ""), ""
    rules = live.chains.get(chain, [])
    if kind != "rule" or not 0 < number <= len(rules):
        return "", ""
    args = rules[number - 1]
    target = args[args.index("-j") + 1] if "-j" in args[:-1] else ""
    return target, rule_line("-A", chain, args)


def tables(netns: str, names: set[str]) -> dict[str, LiveTable]:
    with entered(netns):
        ipt = Iptables(4, backend="legacy")
        return {name: ipt.read(name) for name in names}
