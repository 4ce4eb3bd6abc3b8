"""The applier and per-container masquerade against real iptables, inside throwaway netns.

iptables state is per network namespace: every command here runs in a namespace made by
`netns_factory` (through `ip netns exec`), so the host's tables are never read or written, and
removing the namespace removes both the nf_tables and the legacy tables made in it.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import sys

import pytest

from tartan.cni import errors
from tartan.cni.plugins import bridge_masq as masq
from tartan.kernel.iptables import Chain, Iptables, Rule, Table
from tartan.kernel.iptables_backend import run_command

from harness import Netns

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")]

BACKENDS = ["nft", "legacy"]
V4 = ipaddress.ip_interface("10.1.0.2/24")
V6 = ipaddress.ip_interface("fd00:1::2/64")


class InNetns:
    """A runner that runs each command inside `ns` and remembers the argv."""

    def __init__(self, ns: Netns) -> None:
        self.ns, self.calls = ns, []

    def __call__(self, argv, stdin):
        self.calls.append(list(argv))
        return run_command(["ip", "netns", "exec", self.ns.name, *argv], stdin)

    @property
    def restores(self) -> int:
        return sum(argv[0].endswith("-restore") for argv in self.calls)


@pytest.fixture
def ns(netns_factory) -> Netns:
    return netns_factory("tipt")


@pytest.fixture
def runner(ns) -> InNetns:
    return InNetns(ns)


def applier(runner: InNetns, backend: str):
    return functools.partial(Iptables, backend=backend, runner=runner, verify=True)


def saved(ns: Netns, backend: str, family: int = 4, table: str = "nat") -> list[str]:
    tool = f"{'ip6tables' if family == 6 else 'iptables'}-{backend}-save"
    return [line for line in ns.run(tool, "-t", table).stdout.splitlines()
            if not line.startswith("#")]


def tartan_lines(ns: Netns) -> list[str]:
    """Every TARTAN line in both families' nat tables, on both backends."""
    return [line for backend in BACKENDS for family in (4, 6)
            for line in saved(ns, backend, family) if "TARTAN-" in line]


@pytest.mark.parametrize("backend", BACKENDS)
def test_masq_setup_creates_chain_and_jump_then_is_a_no_op(ns, runner, backend):
    chain = masq.chain_name("net", "cid")
    note = '-m comment --comment "name: \\"net\\" id: \\"cid\\""'
    assert masq.setup("net", "cid", [V4], applier=applier(runner, backend)) is True
    lines = saved(ns, backend)
    assert f":{chain} - [0:0]" in lines
    assert f"-A POSTROUTING -s 10.1.0.2/32 {note} -j {chain}" in lines
    assert f"-A {chain} -d 10.1.0.0/24 {note} -j ACCEPT" in lines
    assert f"-A {chain} ! -d 224.0.0.0/4 {note} -j MASQUERADE" in lines
    other = "legacy" if backend == "nft" else "nft"
    assert not [line for line in saved(ns, other) if "TARTAN-" in line]
    assert runner.restores == 1
    assert masq.setup("net", "cid", [V4], applier=applier(runner, backend)) is False
    assert runner.restores == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_masq_ipv6_through_ip6tables(ns, runner, backend):
    chain = masq.chain_name("net", "cid")
    assert masq.setup("net", "cid", [V4, V6], applier=applier(runner, backend)) is True
    assert runner.restores == 2
    note = '-m comment --comment "name: \\"net\\" id: \\"cid\\""'
    assert {f"-A POSTROUTING -s fd00:1::2/128 {note} -j {chain}",
            f"-A {chain} -d fd00:1::/64 {note} -j ACCEPT",
            f"-A {chain} ! -d ff00::/8 {note} -j MASQUERADE"} <= set(saved(ns, backend, 6))
    assert masq.setup("net", "cid", [V4, V6], applier=applier(runner, backend)) is False
    assert runner.restores == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_masq_teardown_removes_everything_and_twice_is_fine(ns, runner, backend):
    chain = masq.chain_name("net", "cid")
    masq.setup("net", "cid", [V4, V6], applier=applier(runner, backend))
    leaked = ("-s", "10.9.0.9/32", "-j", chain)  # a jump for an address nobody remembers
    ns.run(f"iptables-{backend}", "-t", "nat", "-A", "POSTROUTING", *leaked)
    ns.run(f"iptables-{backend}", "-t", "nat", "-A", "POSTROUTING", "-j", "ACCEPT")
    assert masq.teardown("net", "cid", applier=applier(runner, backend)) is True
    assert tartan_lines(ns) == []
    assert "-A POSTROUTING -j ACCEPT" in saved(ns, backend)  # not ours: kept
    restores = runner.restores
    assert masq.teardown("net", "cid", applier=applier(runner, backend)) is False
    assert runner.restores == restores


@pytest.mark.parametrize("backend", BACKENDS)
def test_masq_gc_removes_only_invalid_containers(ns, runner, backend):
    ipt = applier(runner, backend)
    for network, cid, address in [("net", "keep", "10.1.0.2/24"), ("net", "gone", "10.1.0.3/24"),
                                  ("other", "gone", "10.2.0.2/24")]:
        masq.setup(network, cid, [ipaddress.ip_interface(address), V6], applier=ipt)
    assert masq.gc("net", {"keep"}, applier=ipt) == {"gone"}
    chains = {line.split()[0][1:] for line in tartan_lines(ns) if line.startswith(":")}
    assert chains == {masq.chain_name("net", "keep"), masq.chain_name("other", "gone")}
    assert masq.gc("net", {"keep"}, applier=ipt) == set()


@pytest.mark.parametrize("backend", BACKENDS)
def test_quoting_round_trips_so_the_second_apply_is_a_no_op(ns, runner, backend):
    nasty = 'it\'s a "quoted" \\ comment'
    state = Table("filter", chains=[Chain("TT-Q", [("-m", "comment", "--comment", nasty,
                                                    "-j", "ACCEPT")])],
                  rules=[Rule("FORWARD", ("-j", "TT-Q"), insert=True)])
    ipt = applier(runner, backend)(4)
    assert ipt.apply(state) is True
    assert ipt.apply(state) is False
    assert ipt.read("filter").chains["TT-Q"] == [("-m", "comment", "--comment", nasty,
                                                  "-j", "ACCEPT")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_rule_fails_with_table_rule_and_context(ns, runner, backend):
    bad = Chain("TT-BAD", [("-j", "ACCEPT"), ("-j", "TT-MISSING"), ("-j", "ACCEPT")])
    with pytest.raises(errors.IptablesFailure) as info:
        applier(runner, backend)(4).apply(Table("filter", chains=[bad]))
    err = info.value
    assert err.code == errors.IPTABLES_FAILURE
    assert "table filter" in err.msg and "-A TT-BAD -j TT-MISSING" in err.msg
    assert ">    4  -A TT-BAD -j TT-MISSING" in err.details
    assert "     3  -A TT-BAD -j ACCEPT" in err.details
    assert not [line for line in saved(ns, backend, table="filter") if "TT-BAD" in line]


SNIPPET = """
import ipaddress, json, time
from tartan.cni.plugins import bridge_masq as masq
from tartan.kernel.iptables import Iptables
addrs = [ipaddress.ip_interface("10.1.0.2/24")]
t0 = time.perf_counter()
first = masq.setup("net", "cid", addrs)
t1 = time.perf_counter()
second = masq.setup("net", "cid", addrs)
t2 = time.perf_counter()
live = Iptables(4).read("nat")
t3 = time.perf_counter()
down = masq.teardown("net", "cid")
t4 = time.perf_counter()
print(json.dumps({"first": first, "second": second, "down": down,
                  "chains": sorted(c for c in live.chains if c.startswith("TARTAN-")),
                  "ms": [round((b - a) * 1000, 1) for a, b in [(t0, t1), (t1, t2), (t3, t4)]]}))
"""


def test_default_runner_and_host_backend_inside_a_netns(ns):
    """The plugin's own path: no seams injected, run by the venv's interpreter in the netns."""
    out = json.loads(ns.run(sys.executable, "-c", SNIPPET).stdout)
    assert out["first"] is True and out["second"] is False and out["down"] is True
    assert out["chains"] == [masq.chain_name("net", "cid")]
    assert tartan_lines(ns) == []
    print("setup, no-op setup, teardown (ms):", out["ms"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_chains_counters_listed_alone_equal_the_saves(ns, runner, backend):
    nasty = 'a "-c 1 2" comment'
    state = Table("filter", chains=[
        Chain("TT-C", [("-p", "icmp", "-m", "comment", "--comment", nasty, "-j", "RETURN"),
                       ("-j", "RETURN")]), Chain("TT-D", [("-j", "RETURN")])],
        rules=[Rule("OUTPUT", ("-j", "TT-C"))])
    ipt = applier(runner, backend)(4)
    ipt.apply(state)
    ns.run("ping", "-c", "2", "-W", "1", "127.0.0.1")
    listed = ipt.chain_counters("filter", ["TT-C", "TT-D", "TT-GONE"])
    assert listed == {name: rules for name, rules in ipt.counters("filter", "TT-").items()}
    assert listed["TT-C"][0].packets >= 2 and listed["TT-C"][0].args[-3] == nasty
