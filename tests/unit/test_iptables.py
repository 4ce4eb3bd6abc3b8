"""The iptables applier against the in-memory fake: payloads, diffing, no-ops, errors."""

from __future__ import annotations

import subprocess

import pytest

from tartan.cni import errors
from tartan.kernel import iptables
from tartan.kernel.iptables import Chain, InvalidName, Iptables, Rule, Table, parse_save
from tartan.kernel.iptables_backend import detect_backend, quote, run_command, split_args

from fake_iptables import FakeIptables

COMMENT = ("-m", "comment", "--comment", 'name: "net" id: "cid"')
CHAIN = Chain("TARTAN-A", [("-d", "10.1.0.0/24", *COMMENT, "-j", "ACCEPT"),
                           ("!", "-d", "224.0.0.0/4", *COMMENT, "-j", "MASQUERADE")])
JUMP = Rule("POSTROUTING", ("-s", "10.1.0.2/32", *COMMENT, "-j", "TARTAN-A"))
STATE = Table("nat", chains=[CHAIN], rules=[JUMP])


@pytest.fixture
def fake() -> FakeIptables:
    return FakeIptables()


@pytest.fixture
def ipt(fake) -> Iptables:
    return Iptables(4, backend="nft", runner=fake, verify=True)


def body(payload: str) -> list[str]:
    """A payload's lines between `*table` and `COMMIT`."""
    lines = payload.splitlines()
    assert lines[-1] == "COMMIT"
    return lines[1:-1]


# --- wire format ---------------------------------------------------------------------------

@pytest.mark.parametrize(("saved", "args"), [
    ('-A X -s 10.0.0.1/32 -j ACCEPT', ["-A", "X", "-s", "10.0.0.1/32", "-j", "ACCEPT"]),
    ('-m comment --comment "name: \\"n\\" id: \\"c\\""', ["-m", "comment", "--comment",
                                                         'name: "n" id: "c"']),
    ('--comment "it\\\'s a \\"q\\" \\\\ back"', ["--comment", 'it\'s a "q" \\ back']),
    ('--comment "a\\\\b"  -j  X', ["--comment", "a\\b", "-j", "X"]),
    ('--comment ""', ["--comment", ""]),
    ('--comment xy\\z', ["--comment", "xy\\z"]),
])
def test_split_args_reads_what_iptables_save_prints(saved, args):
    assert split_args(saved) == args


@pytest.mark.parametrize("arg", ["plain", "10.0.0.0/8", "", "it's", 'a "b"', "a\\b", "x y",
                                 'name: "net" id: "cid"', "!", "fd00::1/128"])
def test_quote_round_trips_through_split_args(arg):
    assert split_args(f"-A X {quote(arg)} -j ACCEPT") == ["-A", "X", arg, "-j", "ACCEPT"]


def test_quote_matches_iptables_save():
    assert quote('name: "net" id: "cid"') == '"name: \\"net\\" id: \\"cid\\""'
    assert quote("it's") == '"it\\\'s"'


def test_split_args_rejects_an_unterminated_quote():
    with pytest.raises(ValueError, match="unterminated"):
        split_args('-A X --comment "open')


def test_parse_save_keeps_one_table_and_skips_comments():
    text = ("# Warning: iptables-legacy tables present\n*filter\n:INPUT ACCEPT [0:0]\n"
            "-A INPUT -j DROP\nCOMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n:X - [0:0]\n"
            "-A POSTROUTING -j X\nCOMMIT\n")
    live = parse_save(text, "nat")
    assert live.chains == {"POSTROUTING": [("-j", "X")], "X": []}
    assert live.jumps_to("X") == [Rule("POSTROUTING", ("-j", "X"))]


# --- apply: create, no-op, change, delete --------------------------------------------------

def test_apply_creates_chain_and_jump_in_one_restore(fake, ipt):
    assert ipt.apply(STATE) is True
    assert fake.restores == [["iptables-nft-restore", "--noflush", "--wait"]]
    assert body(fake.payloads[0]) == [
        ":TARTAN-A - [0:0]",
        '-A TARTAN-A -d 10.1.0.0/24 -m comment --comment "name: \\"net\\" id: \\"cid\\""'
        " -j ACCEPT",
        '-A TARTAN-A ! -d 224.0.0.0/4 -m comment --comment "name: \\"net\\" id: \\"cid\\""'
        " -j MASQUERADE",
        '-A POSTROUTING -s 10.1.0.2/32 -m comment --comment "name: \\"net\\" id: \\"cid\\""'
        " -j TARTAN-A",
    ]
    assert fake.chains(4, "nat")["TARTAN-A"] == list(CHAIN.rules)


def test_second_apply_is_a_no_op(fake, ipt):
    ipt.apply(STATE)
    calls = len(fake.calls)
    assert ipt.apply(STATE) is False
    assert fake.calls[calls:] == [["iptables-nft-save", "-t", "nat"]]  # one read, no restore
    assert ipt.pending(STATE) == []


def test_changing_one_rule_rewrites_only_that_chain(fake, ipt):
    ipt.apply(STATE)
    changed = Chain("TARTAN-A", [("-d", "10.2.0.0/24", "-j", "ACCEPT"), CHAIN.rules[1]])
    assert ipt.apply(Table("nat", chains=[changed], rules=[JUMP])) is True
    assert body(fake.payloads[-1]) == [
        ":TARTAN-A - [0:0]",
        "-A TARTAN-A -d 10.2.0.0/24 -j ACCEPT",
        "-A TARTAN-A " + " ".join(map(quote, CHAIN.rules[1])),
    ]
    assert fake.chains(4, "nat")["TARTAN-A"] == list(changed.rules)
    assert fake.chains(4, "nat")["POSTROUTING"] == [JUMP.args]


def test_delete_chain_removes_every_jump_to_it_first(fake, ipt):
    ipt.apply(STATE)
    ipt.apply(Table("nat", rules=[Rule("OUTPUT", ("-j", "TARTAN-A")), Rule("POSTROUTING",
                                                                          ("-j", "ACCEPT"))]))
    assert ipt.apply(Table("nat", delete_chains=["TARTAN-A"])) is True
    assert body(fake.payloads[-1]) == [
        ":TARTAN-A - [0:0]",
        "-D OUTPUT -j TARTAN-A",
        "-D POSTROUTING " + " ".join(map(quote, JUMP.args)),
        "-X TARTAN-A",
    ]
    nat = fake.chains(4, "nat")
    assert "TARTAN-A" not in nat
    assert nat["POSTROUTING"] == [("-j", "ACCEPT")]  # other rules stay
    assert nat["OUTPUT"] == []


def test_deleting_an_absent_chain_runs_no_restore(fake, ipt):
    assert ipt.apply(Table("nat", delete_chains=["TARTAN-GONE"])) is False
    assert fake.restores == []


def test_delete_rules_removes_every_copy(fake, ipt):
    extra = Rule("POSTROUTING", ("-s", "10.9.0.0/16", "-j", "MASQUERADE"))
    fake.chains(4, "nat")["POSTROUTING"] += [extra.args, extra.args]
    assert ipt.apply(Table("nat", delete_rules=[extra])) is True
    assert fake.chains(4, "nat")["POSTROUTING"] == []
    assert ipt.apply(Table("nat", delete_rules=[extra])) is False


def test_duplicate_shared_rules_are_reduced_to_one(fake, ipt):
    ipt.apply(STATE)
    fake.chains(4, "nat")["POSTROUTING"].append(JUMP.args)
    assert ipt.apply(STATE) is True
    assert fake.chains(4, "nat")["POSTROUTING"] == [JUMP.args]


def test_inserted_rules_go_first_in_the_given_order(fake, ipt):
    fake.chains(4, "filter")["FORWARD"].append(("-j", "DROP"))
    first, second = (Rule("FORWARD", (*x, "-j", "ACCEPT"), insert=True)
                     for x in (("-s", "10.0.0.1/32"), ("-s", "10.0.0.2/32")))
    assert ipt.apply(Table("filter", rules=[first, second])) is True
    assert fake.chains(4, "filter")["FORWARD"] == [first.args, second.args, ("-j", "DROP")]
    assert ipt.apply(Table("filter", rules=[first, second])) is False


def test_owned_chains_may_jump_to_each_other(fake, ipt):
    state = Table("filter", chains=[Chain("A", [("-j", "B")]), Chain("B", [("-j", "DROP")])])
    assert ipt.apply(state) is True
    assert ipt.apply(state) is False


def test_ipv6_and_legacy_use_their_own_binaries(fake):
    ipt = Iptables(6, backend="legacy", runner=fake)
    ipt.apply(STATE)
    assert [argv[0] for argv in fake.calls] == ["ip6tables-legacy-save",
                                                "ip6tables-legacy-restore"]
    assert fake.chains(6, "nat")["TARTAN-A"] and "TARTAN-A" not in fake.chains(4, "nat")


def test_default_backend_comes_from_host_detection(fake, monkeypatch):
    monkeypatch.setattr(iptables, "host_backend", lambda: "legacy")
    assert Iptables(4, runner=fake).save_cmd == "iptables-legacy-save"


# --- verify (second pass must be empty) ----------------------------------------------------

def canonicalising(fake: FakeIptables):
    """A runner that stores `-s 10.0.0.1` as `-s 10.0.0.1/32`, as the kernel does."""
    def run(argv, stdin):
        return fake(argv, stdin and stdin.replace("-s 10.0.0.1 ", "-s 10.0.0.1/32 "))
    return run


def test_verify_catches_rules_not_in_canonical_form(fake):
    state = Table("filter", rules=[Rule("FORWARD", ("-s", "10.0.0.1", "-j", "ACCEPT"))])
    with pytest.raises(errors.IptablesFailure, match="did not converge") as info:
        Iptables(4, backend="nft", runner=canonicalising(fake), verify=True).apply(state)
    assert "-A FORWARD -s 10.0.0.1 -j ACCEPT" in info.value.details


def test_without_verify_a_non_canonical_rule_is_never_a_no_op(fake):
    state = Table("filter", rules=[Rule("FORWARD", ("-s", "10.0.0.1", "-j", "ACCEPT"))])
    ipt = Iptables(4, backend="nft", runner=canonicalising(fake))
    assert ipt.apply(state) and ipt.apply(state)  # why tests run with verify=True


# --- validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "-X", "A" * 29, "has space", "semi;colon", "a/b",
                                  "ACCEPT", "quote'"])
def test_bad_chain_names_are_refused_before_any_command(fake, name):
    with pytest.raises(InvalidName, match="invalid iptables chain name"):
        Table("nat", chains=[Chain(name)])
    with pytest.raises(InvalidName):
        Table("nat", rules=[Rule(name, ("-j", "ACCEPT"))])
    with pytest.raises(InvalidName):
        Table("nat", delete_chains=[name])
    assert fake.calls == []


def test_longest_chain_name_is_accepted():
    assert Table("nat", chains=[Chain("A" * 28)]).chains[0].name == "A" * 28


def test_bad_table_is_refused(ipt):
    with pytest.raises(InvalidName, match="invalid iptables table 'security'"):
        Table("security")
    with pytest.raises(InvalidName):
        ipt.read("nat; rm -rf /")


@pytest.mark.parametrize("arg", ["a\nb", "x\r", "nul\0"])
def test_multi_line_arguments_are_refused(arg):
    with pytest.raises(InvalidName, match="one-line"):
        Table("nat", rules=[Rule("POSTROUTING", ("--comment", arg))])
    with pytest.raises(InvalidName, match="one-line"):
        Table("nat", chains=[Chain("X", [("--comment", arg)])])


def test_builtin_chains_cannot_be_owned():
    with pytest.raises(InvalidName, match="built-in"):
        Chain("POSTROUTING", [])


def test_conflicting_chain_declarations_are_refused():
    with pytest.raises(InvalidName, match="both"):
        Table("nat", chains=[Chain("X")], delete_chains=["X"])
    with pytest.raises(InvalidName, match="both"):
        Table("nat", chains=[Chain("X")], rules=[Rule("X", ("-j", "ACCEPT"))])
    with pytest.raises(InvalidName, match="twice"):
        Table("nat", chains=[Chain("X"), Chain("X", [("-j", "ACCEPT")])])


def test_invalid_name_is_an_iptables_failure_with_its_code():
    assert issubclass(InvalidName, errors.IptablesFailure)
    assert InvalidName("x").code == errors.IPTABLES_FAILURE == 102


def test_bad_family_and_backend(fake):
    with pytest.raises(ValueError, match="family"):
        Iptables(5, backend="nft", runner=fake)
    with pytest.raises(ValueError, match="backend"):
        Iptables(4, backend="iptables; reboot", runner=fake)


# --- failures --------------------------------------------------------------------------------

def test_restore_failure_names_table_and_rule_with_numbered_context(fake, ipt):
    bad = Chain("X", [("-j", "ACCEPT"), ("-j", "NOPE"), ("-j", "ACCEPT")])
    with pytest.raises(errors.IptablesFailure) as info:
        ipt.apply(Table("filter", chains=[bad]))
    err = info.value
    assert err.code == 102
    assert "table filter" in err.msg and "line 4 (-A X -j NOPE)" in err.msg
    assert "Chain 'NOPE' does not exist" in err.msg
    assert ">    4  -A X -j NOPE" in err.details
    assert "     3  -A X -j ACCEPT" in err.details and "     6  COMMIT" in err.details
    assert "X" not in fake.chains(4, "filter")  # the restore was atomic


def test_line_n_failed_is_reported_with_context(fake, ipt):
    state = Table("nat", rules=[Rule("NOSUCHCHAIN", ("-j", "ACCEPT"))])
    with pytest.raises(errors.IptablesFailure, match=r"line 2 \(-A NOSUCHCHAIN -j ACCEPT\)") as i:
        ipt.apply(state)
    assert ">    2  -A NOSUCHCHAIN -j ACCEPT" in i.value.details


def test_failure_without_a_line_number_shows_the_whole_payload():
    def runner(argv, stdin):
        if argv[0].endswith("-save"):
            return subprocess.CompletedProcess(argv, 0, "*nat\nCOMMIT\n", "")
        return subprocess.CompletedProcess(argv, 4, "", "Another app holds the xtables lock\n")

    with pytest.raises(errors.IptablesFailure, match="holds the xtables lock") as info:
        Iptables(4, backend="legacy", runner=runner).apply(STATE)
    assert "table nat" in info.value.msg
    assert "     1  *nat" in info.value.details and "COMMIT" in info.value.details


def test_save_failure_is_an_iptables_failure():
    def runner(argv, stdin):
        return subprocess.CompletedProcess(argv, 1, "", "can't initialize iptables table `nat'\n")

    with pytest.raises(errors.IptablesFailure, match="iptables-nft-save -t nat failed: can't"):
        Iptables(4, backend="nft", runner=runner).read("nat")


def test_run_command_uses_argument_lists_and_maps_errors():
    assert run_command(["echo", "a;b $(x)"], None).stdout == "a;b $(x)\n"
    assert run_command(["cat"], "payload\n").stdout == "payload\n"
    with pytest.raises(errors.IptablesFailure, match="not found"):
        run_command(["tartan-no-such-iptables-save"], None)


# --- backend detection ---------------------------------------------------------------------

def no_exec(argv, stdin):
    raise AssertionError(f"detection should not run {argv}")


@pytest.mark.parametrize(("target", "backend"), [
    ("/usr/sbin/xtables-nft-multi", "nft"),
    ("/usr/sbin/xtables-legacy-multi", "legacy"),
    ("/usr/sbin/iptables-nft", "nft"),
])
def test_backend_from_the_iptables_symlink_without_exec(target, backend):
    got = detect_backend(which=lambda name: "/usr/sbin/iptables", realpath=lambda p: target,
                         runner=no_exec, chosen="")
    assert got == backend


@pytest.mark.parametrize(("version", "backend"), [
    ("iptables v1.8.9 (nf_tables)\n", "nft"),
    ("iptables v1.8.9 (legacy)\n", "legacy"),
    ("iptables v1.6.1\n", "legacy"),
])
def test_backend_from_version_when_the_symlink_says_nothing(version, backend):
    calls = []

    def runner(argv, stdin):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, version, "")

    got = detect_backend(which=lambda name: "/usr/local/sbin/iptables",
                         realpath=lambda p: "/usr/local/sbin/iptables-wrapper", runner=runner,
                         chosen="")
    assert got == backend
    assert calls == [["/usr/local/sbin/iptables", "--version"]]


def test_backend_detection_without_iptables_is_a_clear_error():
    with pytest.raises(errors.IptablesFailure, match="iptables not found"):
        detect_backend(which=lambda name: None, runner=no_exec, chosen="")


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_a_named_backend_is_taken_as_it_is(backend):
    assert detect_backend(which=lambda name: None, runner=no_exec, chosen=backend) == backend


def test_an_unknown_backend_name_is_one_clear_error():
    with pytest.raises(errors.IptablesFailure, match="TARTAN_IPTABLES_BACKEND='xt'"):
        detect_backend(runner=no_exec, chosen="xt")


def saving(tables):
    """A runner answering `<family>-<backend>-save` from `tables`; a missing one is absent."""
    def runner(argv, stdin):
        if argv[0] not in tables:
            raise errors.IptablesFailure(f"{argv[0]} not found")
        return subprocess.CompletedProcess(argv, 0, tables[argv[0]], "")
    return runner


RULES = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n-A INPUT -j DROP\nCOMMIT\n"
HINT = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"


@pytest.mark.parametrize(("tables", "backend"), [
    ({"iptables-legacy-save": HINT, "iptables-nft-save": RULES}, "legacy"),  # kubelet's sign
    ({"iptables-nft-save": HINT, "iptables-legacy-save": RULES}, "nft"),
    ({"iptables-legacy-save": RULES, "iptables-nft-save": ""}, "legacy"),  # more rules
    ({"ip6tables-legacy-save": RULES, "iptables-nft-save": ""}, "legacy"),
    ({"iptables-legacy-save": "", "iptables-nft-save": RULES}, "nft"),
    ({"iptables-legacy-save": "", "iptables-nft-save": ""}, "nft"),  # nothing anywhere
    ({"iptables-nft-save": ""}, "nft"),  # no legacy commands at all
])
def test_auto_takes_the_backend_the_node_already_uses(tables, backend):
    assert detect_backend(which=lambda name: None, runner=saving(tables), chosen="auto") == backend
