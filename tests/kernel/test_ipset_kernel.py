"""The ipset applier against the real kernel, inside throwaway network namespaces.

ipsets are per network namespace: every command here runs in a namespace made by
`netns_factory` (through `ip netns exec`, or by entering it), so the host's sets are never read
or written, and deleting the namespace destroys its sets and rules even when a test fails.
"""

from __future__ import annotations

import os

import pytest

from tartan.kernel import errors
from tartan.kernel.ipset import IpSet, Ipsets, SetInUse, apply_with_rules, run_ipset, temp_name
from tartan.kernel.iptables import Chain, Iptables, Rule, Table
from tartan.kernel.netns import entered

from harness import Netns

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")]

BACKENDS = ["nft", "legacy"]
NOTE = "policy default/web rule 0"


class InNetns:
    """A runner that runs each command inside `ns` and remembers argv and stdin."""

    def __init__(self, ns: Netns) -> None:
        self.ns, self.calls, self.payloads = ns, [], []

    def __call__(self, argv, stdin):
        self.calls.append(list(argv))
        if stdin is not None:
            self.payloads.append(stdin)
        return run_ipset(["ip", "netns", "exec", self.ns.name, *argv], stdin)


@pytest.fixture
def ns(netns_factory) -> Netns:
    ns = netns_factory("tips")
    for address in ("10.99.0.1/32", "10.99.0.2/32"):  # pinged through OUTPUT and lo
        ns.run("ip", "addr", "add", address, "dev", "lo")
    return ns


@pytest.fixture
def runner(ns) -> InNetns:
    return InNetns(ns)


@pytest.fixture
def ipsets(runner) -> Ipsets:
    return Ipsets(runner=runner)


def saved(ns: Netns, name: str) -> list[str]:
    return ns.run("ipset", "save", name).stdout.splitlines()


def references(ns: Netns, name: str) -> int:
    out = ns.run("ipset", "list", "-t", name).stdout
    return int(out.split("References:")[1].split()[0])


def set_names(ns: Netns) -> set[str]:
    return set(ns.run("ipset", "list", "-n").stdout.split())


def web(*addresses: str) -> IpSet:
    return IpSet("TARTAN-web", "hash:ip", addresses, comment=NOTE)


def test_create_fill_then_a_second_apply_is_a_no_op(ns, runner, ipsets):
    assert ipsets.apply([web("10.99.0.1", "10.99.0.2")]) == 1
    lines = saved(ns, "TARTAN-web")
    assert lines[0].startswith("create TARTAN-web hash:ip family inet ")
    assert " comment " in lines[0]
    assert sorted(lines[1:]) == [f'add TARTAN-web 10.99.0.1 comment "{NOTE}"',
                                 f'add TARTAN-web 10.99.0.2 comment "{NOTE}"']
    assert ipsets.apply([web("10.99.0.1", "10.99.0.2")]) == 0
    assert len(runner.payloads) == 1
    assert f'10.99.0.1 comment "{NOTE}"' in ns.run("ipset", "list", "TARTAN-web").stdout


@pytest.mark.parametrize("wanted", [
    IpSet("TARTAN-net", "hash:net", ["10.0.0.7/24", "10.9.0.1/32", "192.168.0.0/16"],
          comment="ipBlock"),
    IpSet("TARTAN-port", "hash:ip,port", ["10.0.0.1,80", "10.0.0.1,udp:53",
                                          "10.0.0.2,sctp:9", "10.0.0.3,tcp:0"], comment="ports"),
    IpSet("TARTAN-v6", "hash:net", ["fd00:1::/64", "FD00::0001"], family=6),
    IpSet("TARTAN-v6p", "hash:ip,port", ["fd00::1,tcp:443"], family=6, comment="v6"),
    IpSet("TARTAN-empty", "hash:ip", []),
])
def test_every_type_round_trips_so_the_second_apply_is_a_no_op(ns, runner, ipsets, wanted):
    assert ipsets.apply([wanted]) == 1
    assert ipsets.read()[wanted.name].entries == wanted.entries()
    assert ipsets.apply([wanted]) == 0
    assert len(runner.payloads) == 1


def ping(ns: Netns, address: str) -> bool:
    return ns.ping(address, timeout=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_member_change_swaps_under_a_rule_that_matches_the_set(ns, runner, ipsets, backend):
    ipsets.apply([web("10.99.0.1")])
    ns.run(f"iptables-{backend}", "-A", "OUTPUT", "-m", "set", "--match-set", "TARTAN-web",
           "dst", "-j", "DROP")
    assert references(ns, "TARTAN-web") == 1
    assert not ping(ns, "10.99.0.1") and ping(ns, "10.99.0.2")

    assert ipsets.apply([web("10.99.0.2")]) == 1
    assert ping(ns, "10.99.0.1") and not ping(ns, "10.99.0.2")
    assert references(ns, "TARTAN-web") == 1  # the rule still matches the set by its name
    payload = runner.payloads[-1].splitlines()
    temp = temp_name("TARTAN-web", "TARTAN-")
    assert payload[-2:] == [f"swap {temp} TARTAN-web", f"destroy {temp}"]
    assert set_names(ns) == {"TARTAN-web"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_set_in_use_is_skipped_by_prune_and_destroyed_once_the_rule_is_gone(
        ns, ipsets, backend):
    ipsets.apply([web("10.99.0.1"), IpSet("TARTAN-free", "hash:ip", [])])
    ns.run("ipset", "create", "other", "hash:ip")
    rule = ["OUTPUT", "-m", "set", "--match-set", "TARTAN-web", "dst", "-j", "DROP"]
    ns.run(f"iptables-{backend}", "-A", *rule)
    with pytest.raises(SetInUse) as info:
        ipsets.prune([])
    assert info.value.sets == ("TARTAN-web",) and "TARTAN-web" in info.value.msg
    assert set_names(ns) == {"TARTAN-web", "other"}
    ns.run(f"iptables-{backend}", "-D", *rule)
    assert ipsets.prune([]) == 1
    assert set_names(ns) == {"other"}


def test_a_type_change_remakes_an_unused_set_and_refuses_one_in_use(ns, runner, ipsets):
    ipsets.apply([web("10.99.0.1")])
    net = IpSet("TARTAN-web", "hash:net", ["10.99.0.0/24"])
    assert ipsets.apply([net]) == 1
    assert saved(ns, "TARTAN-web")[0].startswith("create TARTAN-web hash:net family inet ")
    ns.run("iptables", "-A", "OUTPUT", "-m", "set", "--match-set", "TARTAN-web", "dst",
           "-j", "DROP")
    restores = len(runner.payloads)
    with pytest.raises(SetInUse, match="TARTAN-web: hash:net inet -> hash:ip inet"):
        ipsets.apply([web("10.99.0.1")])
    assert len(runner.payloads) == restores
    assert not ping(ns, "10.99.0.2")  # the set the rule matches is untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_with_rules_moves_a_rule_to_a_new_set_then_prunes_the_old(ns, runner, ipsets,
                                                                         backend):
    ipt = Iptables(4, backend=backend, runner=runner, verify=True)

    def rules(name: str):
        chain = Chain("TARTAN-POL", [("-m", "set", "--match-set", name, "dst", "-j", "DROP")])
        return lambda: ipt.apply(Table("filter", chains=[chain],
                                       rules=[Rule("OUTPUT", ("-j", "TARTAN-POL"))]))

    old = IpSet("TARTAN-a", "hash:ip", ["10.99.0.1"])
    assert apply_with_rules(ipsets, [old], rules("TARTAN-a")) == 2
    assert not ping(ns, "10.99.0.1")
    new = IpSet("TARTAN-b", "hash:ip", ["10.99.0.2"])
    assert apply_with_rules(ipsets, [new], rules("TARTAN-b")) == 3
    assert ping(ns, "10.99.0.1") and not ping(ns, "10.99.0.2")
    assert set_names(ns) == {"TARTAN-b"}
    assert apply_with_rules(ipsets, [new], rules("TARTAN-b")) == 0


def test_a_failing_restore_names_the_line_and_keeps_the_live_set(ns, ipsets):
    ipsets.apply([web("10.99.0.1")])
    temp = temp_name("TARTAN-web", "TARTAN-")  # someone made a rule match the temp set
    ns.run("ipset", "create", temp, "hash:ip")
    ns.run("iptables", "-A", "OUTPUT", "-m", "set", "--match-set", temp, "dst", "-j", "ACCEPT")
    with pytest.raises(errors.IpsetFailure) as info:
        ipsets.apply([web("10.99.0.2")])
    err = info.value
    assert err.msg == (f"ipset restore failed at line 1 (destroy {temp}): Set cannot be "
                       "destroyed: it is in use by a kernel component")
    assert f">    1  destroy {temp}" in err.details and "nothing was applied" in err.details
    assert saved(ns, "TARTAN-web")[1:] == [f'add TARTAN-web 10.99.0.1 comment "{NOTE}"']


def test_the_default_runner_in_an_entered_namespace(ns):
    with entered(ns.path):
        assert Ipsets().apply([web("10.99.0.1")]) == 1
        assert Ipsets().apply([web("10.99.0.1")]) == 0
    assert "TARTAN-web" in set_names(ns)
    assert "TARTAN-web" not in run_ipset(["ipset", "list", "-n"], None).stdout.split()
