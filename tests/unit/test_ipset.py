"""The ipset applier against the in-memory fake: validation, payloads, swaps, prune, errors."""

from __future__ import annotations

import subprocess

import pytest

from tartan.kernel import errors
from tartan.kernel.ipset import (
    NOT_INSTALLED,
    InvalidSet,
    IpSet,
    Ipsets,
    SetInUse,
    apply_with_rules,
    parse_save,
    parse_terse,
    run_ipset,
    temp_name,
)

from fake_ipset import FakeIpset

NOTE = "policy default/web rule 0"
WEB = IpSet("TARTAN-web", "hash:ip", frozenset({"10.1.0.2", "10.1.0.3"}), comment=NOTE)
TMP = temp_name("TARTAN-web", "TARTAN-")


@pytest.fixture
def fake() -> FakeIpset:
    return FakeIpset()


@pytest.fixture
def ipsets(fake) -> Ipsets:
    return Ipsets(runner=fake)


def lines(payload: str) -> list[str]:
    return payload.splitlines()


def members(fake: FakeIpset, name: str) -> dict[str, str]:
    return fake.sets[name].members


# --- sets as data ------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "family", "given", "normal"), [
    ("hash:ip", 4, "10.0.0.1", "10.0.0.1"),
    ("hash:ip", 4, "10.0.0.1/32", "10.0.0.1"),
    ("hash:ip", 6, "FD00:0::0001", "fd00::1"),
    ("hash:net", 4, "10.0.0.7/24", "10.0.0.0/24"),
    ("hash:net", 4, "10.0.0.7/32", "10.0.0.7"),
    ("hash:net", 6, "fd00:1::/64", "fd00:1::/64"),
    ("hash:ip,port", 4, "10.0.0.1,80", "10.0.0.1,tcp:80"),
    ("hash:ip,port", 4, "10.0.0.1,udp:053", "10.0.0.1,udp:53"),
    ("hash:ip,port", 4, "10.0.0.1,sctp:0", "10.0.0.1,sctp:0"),
    ("hash:ip,port", 6, "fd00::1,tcp:65535", "fd00::1,tcp:65535"),
])
def test_members_are_normalised_to_what_ipset_save_prints(kind, family, given, normal):
    assert IpSet("TARTAN-x", kind, [given], family=family).members == frozenset({normal})


@pytest.mark.parametrize(("kind", "family", "bad"), [
    ("hash:ip", 4, "10.0.0.0/24"),
    ("hash:ip", 4, "bogus"),
    ("hash:ip", 4, "fd00::1"),
    ("hash:ip", 6, "10.0.0.1"),
    ("hash:ip", 6, "fe80::1%eth0"),
    ("hash:ip", 4, "10.0.0.1 10.0.0.2"),
    ("hash:ip", 4, "10.0.0.1\nflush TARTAN-x"),
    ("hash:net", 4, "0.0.0.0/0"),
    ("hash:net", 4, "10.0.0.0/33"),
    ("hash:ip,port", 4, "10.0.0.1"),
    ("hash:ip,port", 4, "10.0.0.1,icmp:8"),
    ("hash:ip,port", 4, "10.0.0.1,TCP:80"),
    ("hash:ip,port", 4, "10.0.0.1,tcp:65536"),
    ("hash:ip,port", 4, "10.0.0.1,tcp:http"),
    ("hash:ip,port", 4, "10.0.0.1,tcp:-1"),
    ("hash:ip,port", 4, "10.0.0.0/24,tcp:80"),
    ("hash:ip,port", 6, "10.0.0.1,tcp:80"),
])
def test_invalid_members_are_refused_naming_member_and_set_type(kind, family, bad):
    with pytest.raises(InvalidSet) as info:
        IpSet("TARTAN-x", kind, [bad], family=family)
    assert repr(bad) in info.value.msg and kind in info.value.msg


def test_a_non_string_member_or_a_single_string_is_refused():
    with pytest.raises(InvalidSet, match="must be a collection"):
        IpSet("TARTAN-x", "hash:ip", "10.0.0.1")
    with pytest.raises(InvalidSet, match="use a string"):
        IpSet("TARTAN-x", "hash:ip", [167772161])


@pytest.mark.parametrize("name", ["TARTAN-" + "x" * 24, "a", "A.b_c-9"])
def test_valid_names(name):
    assert IpSet(name, "hash:ip", []).name == name


@pytest.mark.parametrize("name", ["TARTAN-" + "x" * 25, "", "-x", "a b", "a;b", "a\nb",
                                  'a"b', "a$b", "a/b", "a,b"])
def test_invalid_names_are_refused(name):
    with pytest.raises(InvalidSet, match="1-31 characters"):
        IpSet(name, "hash:ip", [])


@pytest.mark.parametrize(("kind", "family"), [("hash:mac", 4), ("list:set", 4), ("hash:ip", 5)])
def test_invalid_types_and_families_are_refused(kind, family):
    with pytest.raises(InvalidSet, match="invalid (type|family)"):
        IpSet("TARTAN-x", kind, [], family=family)


@pytest.mark.parametrize("comment", ['say "hi"', "two\nlines", "x" * 256, "tab\there"])
def test_invalid_comments_are_refused(comment):
    with pytest.raises(InvalidSet, match="comment"):
        IpSet("TARTAN-x", "hash:ip", [], comment=comment)


def test_errors_are_ipset_and_iptables_failures_with_code_102():
    with pytest.raises(errors.IptablesFailure) as info:
        IpSet("x" * 32, "hash:ip", [])
    assert isinstance(info.value, errors.IpsetFailure)
    assert info.value.code == errors.IPTABLES_FAILURE == 102


def test_temp_names_fit_and_are_owned():
    longest = temp_name("P" * 16 + "x" * 15, "P" * 16)
    assert len(longest) <= 31 and longest.startswith("P" * 16 + "TMP-")
    assert temp_name("TARTAN-a", "TARTAN-") != temp_name("TARTAN-b", "TARTAN-")
    with pytest.raises(InvalidSet, match="prefix"):
        Ipsets(prefix="P" * 17)


# --- reading what ipset prints ------------------------------------------------------------

SAVED = """\
create TARTAN-a hash:ip family inet hashsize 1024 maxelem 65536 comment bucketsize 12 initval 0x1
add TARTAN-a 10.0.0.1 comment "pod x"
add TARTAN-a 10.0.0.2
create TARTAN-n hash:net family inet hashsize 1024 maxelem 65536 comment bucketsize 12 initval 0x2
add TARTAN-n 10.2.0.0
add TARTAN-n 10.0.0.0/24 comment "a\\b 'c' $x;y"
create TARTAN-6 hash:ip,port family inet6 hashsize 1024 maxelem 65536 comment bucketsize 12
add TARTAN-6 fd00::1,tcp:80 timeout 0 comment "x" skbmark 0x1
create other hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x3
add other 10.9.9.9
"""


def test_parse_save_reads_owned_sets_only_with_comments():
    live = parse_save(SAVED, lambda name: name.startswith("TARTAN-"))
    assert sorted(live) == ["TARTAN-6", "TARTAN-a", "TARTAN-n"]
    assert live["TARTAN-a"].entries == {"10.0.0.1": "pod x", "10.0.0.2": ""}
    assert live["TARTAN-n"].entries == {"10.2.0.0": "", "10.0.0.0/24": "a\\b 'c' $x;y"}
    assert (live["TARTAN-6"].type, live["TARTAN-6"].family) == ("hash:ip,port", "inet6")
    assert live["TARTAN-6"].entries == {"fd00::1,tcp:80": "x"}


def test_parse_terse_reads_reference_counts():
    text = ("Name: TARTAN-a\nType: hash:ip\nHeader: family inet\nReferences: 2\n"
            "Number of entries: 1\n\nName: other\nType: hash:ip\nReferences: 1\n")
    assert parse_terse(text, lambda name: name.startswith("TARTAN-")) == {"TARTAN-a": 2}


# --- apply ---------------------------------------------------------------------------------

def test_a_missing_set_is_created_and_filled_in_one_restore(fake, ipsets):
    assert ipsets.apply([WEB]) == 1
    assert fake.calls == [["ipset", "save"], ["ipset", "restore", "-exist"]]
    assert lines(fake.payloads[0]) == [
        "create TARTAN-web hash:ip family inet comment",
        f'add TARTAN-web 10.1.0.2 comment "{NOTE}"',
        f'add TARTAN-web 10.1.0.3 comment "{NOTE}"']
    assert members(fake, "TARTAN-web") == {"10.1.0.2": NOTE, "10.1.0.3": NOTE}


@pytest.mark.parametrize("wanted", [
    IpSet("TARTAN-ip", "hash:ip", ["10.0.0.1", "10.0.0.9/32"]),
    IpSet("TARTAN-net", "hash:net", ["10.0.0.0/24", "10.9.0.1/32", "10.8.0.1/16"], comment="n"),
    IpSet("TARTAN-port", "hash:ip,port", ["10.0.0.1,80", "10.0.0.1,udp:53"], comment="p"),
    IpSet("TARTAN-v6", "hash:net", ["fd00::/64", "FD00:1::1"], family=6),
    IpSet("TARTAN-empty", "hash:ip", []),
])
def test_a_second_apply_is_a_no_op(fake, ipsets, wanted):
    assert ipsets.apply([wanted, WEB]) == 2
    assert ipsets.apply([wanted, WEB]) == 0
    assert len(fake.payloads) == 1
    assert fake.calls[-1] == ["ipset", "save"]


def test_a_member_change_goes_through_a_temp_set_and_swap(fake, ipsets):
    ipsets.apply([WEB])
    fake.references["TARTAN-web"] = 1  # an iptables rule matches it
    old = frozenset(WEB.members)
    new = IpSet(WEB.name, WEB.type, ["10.1.0.3", "10.1.0.4"], comment=NOTE)
    fake.history.clear()
    assert ipsets.apply([new]) == 1
    assert lines(fake.payloads[-1]) == [
        f"destroy {TMP}",
        f"create {TMP} hash:ip family inet comment",
        f'add {TMP} 10.1.0.3 comment "{NOTE}"',
        f'add {TMP} 10.1.0.4 comment "{NOTE}"',
        f"swap {TMP} TARTAN-web",
        f"destroy {TMP}"]
    assert all(step["TARTAN-web"] in (old, new.members) for step in fake.history)
    assert members(fake, "TARTAN-web") == {"10.1.0.3": NOTE, "10.1.0.4": NOTE}
    assert TMP not in fake.sets and fake.references["TARTAN-web"] == 1
    assert ipsets.apply([new]) == 0


def test_a_comment_change_alone_refills(fake, ipsets):
    ipsets.apply([WEB])
    assert ipsets.apply([IpSet(WEB.name, WEB.type, WEB.members, comment="moved")]) == 1
    assert set(members(fake, "TARTAN-web").values()) == {"moved"}


def test_only_changed_sets_are_in_the_payload(fake, ipsets):
    db = IpSet("TARTAN-db", "hash:ip,port", ["10.1.0.9,tcp:5432"])
    ipsets.apply([WEB, db])
    assert ipsets.apply([WEB, IpSet(db.name, db.type, ["10.1.0.9,tcp:5433"])]) == 1
    assert "TARTAN-web" not in fake.payloads[-1]


def test_apply_never_destroys_stale_sets(fake, ipsets):
    ipsets.apply([WEB, IpSet("TARTAN-old", "hash:ip", ["10.0.0.1"])])
    assert ipsets.apply([WEB]) == 0
    assert "TARTAN-old" in fake.sets


def test_sets_of_other_owners_are_never_touched(fake, ipsets):
    fake.seed("create KUBE-X hash:ip family inet\nadd KUBE-X 10.0.0.1\n"
              "create TARTAN-web hash:net family inet\n")
    with pytest.raises(InvalidSet, match="not this applier's"):
        ipsets.apply([IpSet("KUBE-X", "hash:ip", ["10.0.0.2"])])
    other = Ipsets(prefix="OTHER-", runner=fake)
    assert other.apply([IpSet("OTHER-web", "hash:ip", ["10.0.0.3"])]) == 1
    assert other.prune([]) == 1
    assert "KUBE-X" not in fake.payloads[-1] and "TARTAN-web" not in fake.payloads[-1]
    assert members(fake, "KUBE-X") == {"10.0.0.1": ""} and "TARTAN-web" in fake.sets


def test_temp_names_are_reserved_and_names_unique(ipsets):
    with pytest.raises(InvalidSet, match="kept for refills"):
        ipsets.apply([IpSet(TMP, "hash:ip", [])])
    with pytest.raises(InvalidSet, match="declared twice"):
        ipsets.apply([WEB, WEB])


@pytest.mark.parametrize("wanted", [IpSet("TARTAN-web", "hash:net", ["10.1.0.0/24"]),
                                    IpSet("TARTAN-web", "hash:ip", ["fd00::2"], family=6)])
def test_a_type_or_family_change_remakes_a_set_nothing_uses(fake, ipsets, wanted):
    ipsets.apply([WEB])
    assert ipsets.apply([wanted]) == 1
    assert lines(fake.payloads[-1])[:2] == [
        "destroy TARTAN-web", f"create TARTAN-web {wanted.type} family "
        f"{'inet6' if wanted.family == 6 else 'inet'} comment"]
    assert fake.sets["TARTAN-web"].type == wanted.type
    assert ipsets.apply([wanted]) == 0


def test_a_type_change_of_a_set_in_use_is_refused_before_anything_is_sent(fake, ipsets):
    ipsets.apply([WEB])
    fake.references["TARTAN-web"] = 1
    with pytest.raises(SetInUse) as info:
        ipsets.apply([IpSet("TARTAN-db", "hash:ip", []),
                      IpSet("TARTAN-web", "hash:net", ["10.1.0.0/24"])])
    assert info.value.sets == ("TARTAN-web",)
    assert "TARTAN-web: hash:ip inet -> hash:net inet" in info.value.msg
    assert "new name" in info.value.msg
    assert len(fake.payloads) == 1 and "TARTAN-db" not in fake.sets


# --- failures ------------------------------------------------------------------------------

def test_an_interrupted_refill_keeps_the_live_set_whole_and_is_repaired():
    fake = FakeIpset(refuse={"10.1.0.5": "Hash is full, cannot add more elements"})
    ipsets = Ipsets(runner=fake)
    ipsets.apply([WEB])
    new = IpSet(WEB.name, WEB.type, ["10.1.0.4", "10.1.0.5", "10.1.0.6"], comment=NOTE)
    with pytest.raises(errors.IpsetFailure) as info:
        ipsets.apply([new])
    err = info.value
    assert err.msg == (f'ipset restore failed at line 4 (add {TMP} 10.1.0.5 comment "{NOTE}"): '
                       "Hash is full, cannot add more elements")
    assert f'>    4  add {TMP} 10.1.0.5 comment "{NOTE}"' in err.details
    assert f"     1  destroy {TMP}" in err.details
    assert f"     7  destroy {TMP}" in err.details
    assert "lines 1-3 were applied" in err.details
    assert members(fake, "TARTAN-web") == {"10.1.0.2": NOTE, "10.1.0.3": NOTE}
    assert TMP in fake.sets  # left over, like the real ipset leaves it
    fake.refuse.clear()
    assert ipsets.apply([new]) == 1
    assert set(members(fake, "TARTAN-web")) == {"10.1.0.4", "10.1.0.5", "10.1.0.6"}
    assert TMP not in fake.sets


def test_a_failure_without_a_line_number_shows_the_whole_payload():
    def runner(argv, stdin):
        if argv[1] == "save":
            return subprocess.CompletedProcess(argv, 0, "", "")
        return subprocess.CompletedProcess(argv, 1, "", "ipset v7.17: Kernel error received\n")
    with pytest.raises(errors.IpsetFailure) as info:
        Ipsets(runner=runner).apply([WEB])
    assert info.value.msg == "ipset restore failed: ipset v7.17: Kernel error received"
    assert "     1  create TARTAN-web hash:ip family inet comment" in info.value.details


def test_a_failing_read_names_the_command():
    def runner(argv, stdin):
        return subprocess.CompletedProcess(argv, 1, "", "ipset v7.17: Operation not permitted\n")
    with pytest.raises(errors.IpsetFailure, match=r"^ipset save failed: ipset v7.17: Operation"):
        Ipsets(runner=runner).apply([WEB])


def test_ipset_not_installed_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(errors.IpsetFailure) as info:
        Ipsets().apply([WEB])
    assert info.value.msg == NOT_INSTALLED and "install ipset" in NOT_INSTALLED
    with pytest.raises(errors.IpsetFailure, match="install ipset"):
        run_ipset(["ipset", "list", "-t"], None)


# --- prune and the order with rules ----------------------------------------------------------

def test_prune_destroys_unwanted_owned_sets_in_one_restore(fake, ipsets):
    fake.seed("create other hash:ip family inet\n")
    ipsets.apply([WEB, IpSet("TARTAN-a", "hash:ip", []), IpSet("TARTAN-b", "hash:ip", [])])
    fake.seed(f"create {TMP} hash:ip family inet comment\n")  # left by an interrupted refill
    assert ipsets.prune(["TARTAN-web"]) == 3
    assert lines(fake.payloads[-1]) == [f"destroy {n}" for n in sorted(
        ["TARTAN-a", "TARTAN-b", TMP])]
    assert sorted(fake.sets) == ["TARTAN-web", "other"]
    restores = len(fake.payloads)
    assert ipsets.prune(["TARTAN-web"]) == 0
    assert len(fake.payloads) == restores


def test_prune_skips_a_set_in_use_names_it_and_destroys_it_once_free(fake, ipsets):
    ipsets.apply([IpSet("TARTAN-a", "hash:ip", []), IpSet("TARTAN-b", "hash:ip", [])])
    fake.references["TARTAN-a"] = 1
    with pytest.raises(SetInUse) as info:
        ipsets.prune([])
    assert info.value.sets == ("TARTAN-a",)
    assert info.value.msg.startswith("ipset TARTAN-a cannot be destroyed: still in use")
    assert sorted(fake.sets) == ["TARTAN-a"]
    fake.references["TARTAN-a"] = 0
    assert ipsets.prune([]) == 1
    assert fake.sets == {}


def test_apply_with_rules_runs_sets_then_rules_then_prune(fake, ipsets):
    old = IpSet("TARTAN-old", "hash:ip", ["10.0.0.1"])
    ipsets.apply([old])
    fake.references["TARTAN-old"] = 1
    seen = []

    def rules() -> bool:  # the iptables restore: its rules now match TARTAN-web, not TARTAN-old
        seen.append(sorted(fake.sets))
        fake.references["TARTAN-old"], fake.references["TARTAN-web"] = 0, 1
        return True

    assert apply_with_rules(ipsets, [WEB], rules) == 3
    assert seen == [["TARTAN-old", "TARTAN-web"]]
    assert sorted(fake.sets) == ["TARTAN-web"]
    assert apply_with_rules(ipsets, [WEB], lambda: 0) == 0


def test_apply_with_rules_keeps_stale_sets_when_the_rules_fail(fake, ipsets):
    ipsets.apply([IpSet("TARTAN-old", "hash:ip", [])])

    def rules() -> int:
        raise errors.IptablesFailure("iptables-nft-restore failed")

    with pytest.raises(errors.IptablesFailure):
        apply_with_rules(ipsets, [WEB], rules)
    assert sorted(fake.sets) == ["TARTAN-old", "TARTAN-web"]
