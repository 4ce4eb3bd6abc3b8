"""Per-container masquerade against the in-memory iptables: setup, teardown, gc, check."""

from __future__ import annotations

import functools
import ipaddress
import re
import subprocess

import pytest

from tartan.cni import errors
from tartan.cni.plugins import bridge_masq as masq
from tartan.kernel.iptables import Iptables

from fake_iptables import FakeIptables

V4 = ipaddress.ip_interface("10.1.0.2/24")
V6 = ipaddress.ip_interface("fd00:1::2/64")
NOTE = ("-m", "comment", "--comment", 'name: "net" id: "cid"')


@pytest.fixture
def fake() -> FakeIptables:
    return FakeIptables()


@pytest.fixture
def applier(fake):
    return functools.partial(Iptables, backend="nft", runner=fake, verify=True)


def tartan_rules(fake: FakeIptables, family: int = 4) -> dict:
    nat = fake.chains(family, "nat")
    return {"chains": sorted(c for c in nat if c.startswith("TARTAN-")),
            "jumps": [r for r in nat["POSTROUTING"] if "TARTAN-" in r[-1]]}


def test_chain_name_is_short_stable_and_per_container():
    name = masq.chain_name("net", "cid")
    assert re.fullmatch(r"TARTAN-[0-9a-f]{20}", name) and len(name) <= 28
    assert name == masq.chain_name("net", "cid")
    assert name == "TARTAN-078e8f604fb45e83286b"  # pinned: a change would leak old chains
    assert len({name, masq.chain_name("net", "cid2"), masq.chain_name("net2", "cid")}) == 3
    assert masq.chain_name("ab", "c") != masq.chain_name("a", "bc")


def test_comment_is_the_reference_plugins():
    assert masq.comment("net", "cid") == 'name: "net" id: "cid"'


def test_tables_for_ipv4_and_ipv6():
    chain = masq.chain_name("net", "cid")
    tables = masq.tables("net", "cid", [V4, V6])
    assert sorted(tables) == [4, 6]
    v4, v6 = tables[4], tables[6]
    assert v4.name == "nat" and v4.chains[0].name == chain
    assert v4.chains[0].rules == (("-d", "10.1.0.0/24", *NOTE, "-j", "ACCEPT"),
                                  ("!", "-d", "224.0.0.0/4", *NOTE, "-j", "MASQUERADE"))
    assert [r.args for r in v4.rules] == [("-s", "10.1.0.2/32", *NOTE, "-j", chain)]
    assert v6.chains[0].rules == (("-d", "fd00:1::/64", *NOTE, "-j", "ACCEPT"),
                                  ("!", "-d", "ff00::/8", *NOTE, "-j", "MASQUERADE"))
    assert [r.args for r in v6.rules] == [("-s", "fd00:1::2/128", *NOTE, "-j", chain)]


def test_two_addresses_in_one_subnet_share_one_accept():
    second = ipaddress.ip_interface("10.1.0.3/24")
    table = masq.tables("net", "cid", [V4, second, V4])[4]
    assert len(table.chains[0].rules) == 2
    assert [r.args[1] for r in table.rules] == ["10.1.0.2/32", "10.1.0.3/32"]


def test_setup_is_one_restore_per_family_and_then_a_no_op(fake, applier):
    assert masq.setup("net", "cid", [V4, V6], applier=applier) is True
    assert [argv[0] for argv in fake.restores] == ["iptables-nft-restore",
                                                   "ip6tables-nft-restore"]
    chain = masq.chain_name("net", "cid")
    for family in (4, 6):
        assert tartan_rules(fake, family)["chains"] == [chain]
        assert len(tartan_rules(fake, family)["jumps"]) == 1
    assert masq.setup("net", "cid", [V4, V6], applier=applier) is False
    assert len(fake.restores) == 2


def test_setup_with_a_new_address_drops_the_old_jump(fake, applier):
    masq.setup("net", "cid", [V4], applier=applier)
    moved = ipaddress.ip_interface("10.2.0.7/24")
    assert masq.setup("net", "cid", [moved], applier=applier) is True
    jumps = tartan_rules(fake)["jumps"]
    assert [j[1] for j in jumps] == ["10.2.0.7/32"]
    assert fake.chains(4, "nat")[masq.chain_name("net", "cid")][0][1] == "10.2.0.0/24"


def test_setup_of_nothing_does_nothing(fake, applier):
    assert masq.setup("net", "cid", [], applier=applier) is False
    assert fake.calls == []


def test_teardown_needs_no_addresses_and_is_idempotent(fake, applier):
    fake.chains(4, "nat")["POSTROUTING"].append(("-j", "ACCEPT"))  # someone else's rule
    masq.setup("net", "cid", [V4, V6], applier=applier)
    assert masq.teardown("net", "cid", applier=applier) is True
    for family in (4, 6):
        assert tartan_rules(fake, family) == {"chains": [], "jumps": []}
    assert fake.chains(4, "nat")["POSTROUTING"] == [("-j", "ACCEPT")]
    restores = len(fake.restores)
    assert masq.teardown("net", "cid", applier=applier) is False
    assert masq.teardown("other", "never-added", applier=applier) is False
    assert len(fake.restores) == restores


def test_teardown_removes_a_jump_whose_address_nobody_remembers(fake, applier):
    masq.setup("net", "cid", [V4], applier=applier)
    chain = masq.chain_name("net", "cid")
    fake.chains(4, "nat")["POSTROUTING"].append(("-s", "10.99.0.1/32", "-j", chain))  # leaked
    assert masq.teardown("net", "cid", applier=applier) is True
    assert tartan_rules(fake) == {"chains": [], "jumps": []}


def test_teardown_tries_every_family_before_failing(fake):
    def runner(argv, stdin):
        if argv[0].startswith("ip6tables"):
            return subprocess.CompletedProcess(argv, 1, "", "ip6tables: no IPv6\n")
        return fake(argv, stdin)

    applier = functools.partial(Iptables, backend="nft", runner=runner)
    masq.setup("net", "cid", [V4], applier=applier)
    with pytest.raises(errors.IptablesFailure, match="no IPv6"):
        masq.teardown("net", "cid", applier=applier)
    assert tartan_rules(fake) == {"chains": [], "jumps": []}
    assert masq.teardown("net", "cid", applier=applier, families=[4]) is False


def test_gc_removes_only_this_networks_invalid_containers(fake, applier):
    for network, cid in [("net", "keep"), ("net", "gone1"), ("net", "gone2"), ("other", "x")]:
        masq.setup(network, cid, [V4, V6], applier=applier)
    reference = ("-s", "10.1.0.9/32", "-m", "comment", "--comment", 'name: "net" id: "ref"',
                 "-j", "ACCEPT")  # a reference-plugin-style comment on a foreign rule
    fake.chains(4, "nat")["POSTROUTING"].append(reference)
    assert masq.gc("net", {"keep"}, applier=applier) == {"gone1", "gone2"}
    expected = sorted([masq.chain_name("net", "keep"), masq.chain_name("other", "x")])
    for family in (4, 6):
        assert tartan_rules(fake, family)["chains"] == expected
    assert reference in fake.chains(4, "nat")["POSTROUTING"]
    restores = len(fake.restores)
    assert masq.gc("net", {"keep"}, applier=applier) == set()
    assert len(fake.restores) == restores


def test_gc_finds_a_chain_whose_jump_is_gone(fake, applier):
    masq.setup("net", "orphan", [V4], applier=applier)
    fake.chains(4, "nat")["POSTROUTING"].clear()
    assert masq.gc("net", set(), applier=applier) == {"orphan"}
    assert tartan_rules(fake)["chains"] == []


def test_check_passes_when_in_place_and_names_what_is_missing(fake, applier):
    with pytest.raises(errors.CheckMismatch, match="IPv4 masquerade of container cid"):
        masq.check("net", "cid", [V4], applier=applier)
    masq.setup("net", "cid", [V4, V6], applier=applier)
    masq.check("net", "cid", [V4, V6], applier=applier)
    fake.chains(6, "nat")["POSTROUTING"].clear()
    with pytest.raises(errors.CheckMismatch, match="IPv6") as info:
        masq.check("net", "cid", [V4, V6], applier=applier)
    assert "-A POSTROUTING -s fd00:1::2/128" in info.value.details
