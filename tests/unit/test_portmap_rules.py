"""tartan-portmap's rules, compared line by line with what the reference portmap writes."""

from __future__ import annotations

import ipaddress

from tartan.cni.plugins import portmap_rules as rules
from tartan.cni.plugins.portmap_config import parse
from tartan.cni.types import Result
from tartan.kernel.iptables import LiveTable, Rule, applied_live, plan, rule_line

V4 = ipaddress.ip_interface("10.250.0.5/24")
V6 = ipaddress.ip_interface("fd00:250::5/64")
CHAIN = "CNI-DN-70a29d9dc18bc4d652ea5"  # the reference's name for ("mynet", "abc123")
NOTE = '-m comment --comment "dnat name: \\"mynet\\" id: \\"abc123\\""'


def config(*entries: dict, **fields) -> dict:
    out = {"cniVersion": "1.1.0", "name": "mynet", "type": "tartan-portmap",
           "runtimeConfig": {"portMappings": list(entries)}}
    out.update(fields)
    return out


TCP = {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
UDP = {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "10.9.9.9"}


def lines(conf: dict, address=V4, container: str = "abc123") -> list[str]:
    """The restore lines ADD sends to an empty nat table."""
    state = rules.table(parse(conf), container, address)
    return plan(state, LiveTable("nat", {c: [] for c in
                                         ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}))


def test_chain_name_and_comment_are_the_reference_plugins():
    assert rules.chain_name("mynet", "abc123") == CHAIN
    assert len(rules.chain_name("n" * 100, "c" * 100)) == 28
    assert rules.comment("mynet", "abc123") == 'dnat name: "mynet" id: "abc123"'
    long = rules.comment("n", "c" * 300)
    assert len(long) == 255 and long.endswith("...")
    assert rules.mark(13) == "0x2000/0x2000" and rules.mark(0) == "0x1/0x1"
    assert rules.mark(31) == "0x80000000/0x80000000"


def test_ipv4_add_is_the_reference_layout_line_by_line():
    assert lines(config(TCP, UDP)) == [
        f":{CHAIN} - [0:0]",
        ":CNI-HOSTPORT-DNAT - [0:0]",
        ":CNI-HOSTPORT-SETMARK - [0:0]",
        ":CNI-HOSTPORT-MASQ - [0:0]",
        f"-A {CHAIN} -s 10.250.0.0/24 -p tcp -m tcp --dport 8080 {NOTE} "
        "-j CNI-HOSTPORT-SETMARK",
        f"-A {CHAIN} -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 {NOTE} -j CNI-HOSTPORT-SETMARK",
        f"-A {CHAIN} -p tcp -m tcp --dport 8080 {NOTE} -j DNAT --to-destination 10.250.0.5:80",
        f"-A {CHAIN} -s 10.250.0.0/24 -d 10.9.9.9/32 -p udp -m udp --dport 5353 {NOTE} "
        "-j CNI-HOSTPORT-SETMARK",
        f"-A {CHAIN} -s 127.0.0.1/32 -d 10.9.9.9/32 -p udp -m udp --dport 5353 {NOTE} "
        "-j CNI-HOSTPORT-SETMARK",
        f"-A {CHAIN} -d 10.9.9.9/32 -p udp -m udp --dport 5353 {NOTE} "
        "-j DNAT --to-destination 10.250.0.5:53",
        '-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" '
        "-j MARK --set-xmark 0x2000/0x2000",
        "-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        f"-A CNI-HOSTPORT-DNAT -p tcp {NOTE} -m multiport --dports 8080 -j {CHAIN}",
        f"-A CNI-HOSTPORT-DNAT -p udp {NOTE} -m multiport --dports 5353 -j {CHAIN}",
        '-I POSTROUTING 1 -m comment --comment "CNI portfwd requiring masquerade" '
        "-j CNI-HOSTPORT-MASQ",
    ]


def test_ipv6_has_no_localhost_rule_and_brackets_the_destination():
    out = lines(config(TCP, {"hostPort": 9, "containerPort": 9, "hostIP": "10.0.0.1"}), V6)
    chain_rules = [line for line in out if line.startswith(f"-A {CHAIN}")]
    assert chain_rules == [
        f"-A {CHAIN} -s fd00:250::/64 -p tcp -m tcp --dport 8080 {NOTE} -j CNI-HOSTPORT-SETMARK",
        f"-A {CHAIN} -p tcp -m tcp --dport 8080 {NOTE} -j DNAT --to-destination "
        '"[fd00:250::5]:80"',  # quoted in the payload: restore reads it as one token
    ]  # the IPv4 hostIP mapping is for the other family


def test_snat_false_has_no_mark_rules_and_no_shared_mark_chains():
    out = lines(config(TCP, snat=False))
    assert out == [
        f":{CHAIN} - [0:0]",
        ":CNI-HOSTPORT-DNAT - [0:0]",
        f"-A {CHAIN} -p tcp -m tcp --dport 8080 {NOTE} -j DNAT --to-destination 10.250.0.5:80",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        f"-A CNI-HOSTPORT-DNAT -p tcp {NOTE} -m multiport --dports 8080 -j {CHAIN}",
    ]


def test_mark_bit_and_external_chain():
    out = lines(config(TCP, markMasqBit=5))
    assert ("-A CNI-HOSTPORT-MASQ -m mark --mark 0x20/0x20 -j MASQUERADE") in out
    external = lines(config(TCP, externalSetMarkChain="KUBE-MARK-MASQ"))
    assert not [line for line in external if "SETMARK" in line or "MASQ " in line
                or "CNI-HOSTPORT-MASQ" in line]
    assert sum("-j KUBE-MARK-MASQ" in line for line in external) == 2


def test_conditions_go_on_the_jump_with_addresses_where_iptables_save_prints_them():
    out = lines(config(TCP, conditionsV4=["-m", "set", "--match-set", "s", "dst", "!",
                                          "--destination", "192.0.2.1", "-s", "10.1.0.0/16"]))
    jump = [line for line in out if line.startswith("-A CNI-HOSTPORT-DNAT")]
    assert jump == [f"-A CNI-HOSTPORT-DNAT -s 10.1.0.0/16 ! -d 192.0.2.1/32 -p tcp {NOTE} "
                    "-m multiport --dports 8080 -m set --match-set s dst -j " + CHAIN]
    assert "! -d" not in "".join(lines(config(TCP, conditionsV6=["!", "-d", "::1"])))


def test_ports_group_by_protocol_fifteen_to_a_multiport():
    entries = [{"hostPort": 1000 + n, "containerPort": 80} for n in range(16)]
    entries += [{"hostPort": 1000, "containerPort": 81, "hostIP": "10.0.0.1"},
                {"hostPort": 7, "containerPort": 7, "protocol": "udp"}]
    jumps = [r.args for r in rules.table(parse(config(*entries)), "abc123", V4).rules
             if r.chain == rules.DNAT_CHAIN]
    ports = [args[args.index("--dports") + 1] for args in jumps]
    assert ports == [",".join(str(1000 + n) for n in range(15)), "1015", "7"]
    assert [args[1] for args in jumps] == ["tcp", "tcp", "udp"]


def test_container_addresses_are_the_first_of_each_family_on_the_sandbox_interface():
    prev = Result.from_dict({"cniVersion": "1.1.0", "interfaces": [
        {"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"},
        {"name": "net1", "sandbox": "/run/netns/x"}], "ips": [
        {"address": "10.0.0.1/24", "interface": 0},
        {"address": "10.9.0.2/24", "interface": 3},
        {"address": "10.250.0.5/24", "interface": 2},
        {"address": "10.250.0.6/24", "interface": 2},
        {"address": "fd00::5/64"}]})
    assert rules.container_addresses(prev, "eth0") == {
        4: ipaddress.ip_interface("10.250.0.5/24"), 6: ipaddress.ip_interface("fd00::5/64")}
    assert rules.container_addresses(prev, "net1")[4] == ipaddress.ip_interface("10.9.0.2/24")


def test_owner_and_containers_come_from_comments_confirmed_by_the_chain_name():
    state = rules.table(parse(config(TCP)), "abc123", V4)
    live = applied_live(state)
    assert rules.containers(live, "mynet") == {"abc123"}
    assert rules.containers(live, "other") == set()
    fake = rules.comment("mynet", "forged")
    live.chains["CNI-HOSTPORT-DNAT"].append(("-m", "comment", "--comment", fake, "-j", CHAIN))
    assert rules.containers(live, "mynet") == {"abc123"}
    assert rules.owner(("-m", "comment", "--comment", 'dnat name: "a" id: "b"')) == ("a", "b")
    assert rules.owner(("-j", "X")) is None


def test_stale_jumps_to_the_container_chain_are_deleted():
    state = rules.table(parse(config(TCP)), "abc123", V4)
    live = applied_live(state)
    old = ("-p", "udp", "-j", CHAIN)
    live.chains["CNI-HOSTPORT-DNAT"].append(old)
    wanted = rules.without_stale_jumps(state, live)
    assert wanted.delete_rules == (Rule("CNI-HOSTPORT-DNAT", old),)
    assert plan(wanted, live) == [rule_line("-D", "CNI-HOSTPORT-DNAT", old)]


def test_a_second_add_against_its_own_result_sends_nothing():
    state = rules.table(parse(config(TCP, UDP, conditionsV4=["-d", "10.0.0.1"])), "abc123", V4)
    assert plan(state, applied_live(state)) == []


def test_teardown_removes_the_chains_and_every_jump_to_them():
    state = rules.table(parse(config(TCP)), "abc123", V4)
    live = applied_live(state)
    out = plan(rules.teardown_table("mynet", ["abc123"]), live)
    assert out == [f":{CHAIN} - [0:0]",
                   f"-D CNI-HOSTPORT-DNAT -p tcp {NOTE} -m multiport --dports 8080 -j {CHAIN}",
                   f"-X {CHAIN}"]
