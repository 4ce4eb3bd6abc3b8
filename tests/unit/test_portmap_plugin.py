"""tartan-portmap's handlers on the in-memory iptables: ADD, CHECK, DEL, GC, and their errors."""

from __future__ import annotations

import functools
import json

import pytest

from tartan.cni import errors, skel
from tartan.cni.plugins import portmap
from tartan.cni.plugins import portmap_rules as rules
from tartan.kernel.iptables import Iptables

from fake_iptables import FakeIptables

PREV = {"cniVersion": "1.1.0",
        "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                       {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/p"}],
        "ips": [{"address": "10.250.0.5/24", "gateway": "10.250.0.1", "interface": 1},
                {"address": "fd00:250::5/64", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.250.0.1"}], "dns": {"nameservers": ["1.1.1.1"]}}
TCP = {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
UDP = {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}


class Recorder:
    def __init__(self) -> None:
        self.localnet: list[str] = []
        self.cleared: list[tuple[int, int]] = []

    def route_localnet(self, address) -> None:
        self.localnet.append(str(address))

    def clear_udp(self, version: int, port: int) -> int:
        self.cleared.append((version, port))
        return 0


@pytest.fixture
def fake() -> FakeIptables:
    return FakeIptables()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def kernel(fake, rec) -> portmap.Kernel:
    applier = functools.partial(Iptables, backend="nft", runner=fake, verify=True)
    return portmap.Kernel(applier=applier, route_localnet=rec.route_localnet,
                          clear_udp=rec.clear_udp)


def cmd(command: str, *entries: dict, prev: dict | None = PREV, container: str = "abc",
        **fields) -> skel.CmdArgs:
    config = {"cniVersion": "1.1.0", "name": "mynet", "type": "tartan-portmap",
              "capabilities": {"portMappings": True},
              "runtimeConfig": {"portMappings": list(entries)}, **fields}
    if prev is not None:
        config["prevResult"] = prev
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/run/netns/p",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    return skel.read_cmd_args(command, env, json.dumps(config).encode())


def chains(fake: FakeIptables, family: int = 4) -> dict:
    return {k: v for k, v in fake.chains(family, "nat").items() if k.startswith("CNI-")}


def test_add_passes_the_prev_result_through_unchanged(kernel):
    result = portmap.cmd_add(cmd("ADD", TCP), kernel)
    assert result.to_dict("1.1.0") == PREV


def test_add_makes_both_families_clears_udp_and_sets_route_localnet(kernel, fake, rec):
    portmap.cmd_add(cmd("ADD", TCP, UDP), kernel)
    chain = rules.chain_name("mynet", "abc")
    assert len(chains(fake, 4)[chain]) == 6 and len(chains(fake, 6)[chain]) == 4
    assert rec.localnet == ["10.250.0.5/24"]
    assert rec.cleared == [(4, 5353), (6, 5353)]
    restores = len(fake.restores)
    portmap.cmd_add(cmd("ADD", TCP, UDP), kernel)
    assert len(fake.restores) == restores  # in place: nothing sent


def test_without_snat_route_localnet_is_left_alone(kernel, rec):
    portmap.cmd_add(cmd("ADD", TCP, snat=False), kernel)
    assert rec.localnet == []


def test_no_mappings_touch_nothing(kernel, fake):
    assert portmap.cmd_add(cmd("ADD"), kernel).to_dict("1.1.0") == PREV
    portmap.cmd_check(cmd("CHECK"), kernel)
    portmap.cmd_del(cmd("DEL", prev=None), kernel)
    assert fake.calls == []


@pytest.mark.parametrize("command", ["ADD", "CHECK"])
def test_add_and_check_need_the_prev_result(kernel, command):
    handler = portmap.cmd_add if command == "ADD" else portmap.cmd_check
    with pytest.raises(errors.InvalidConfig, match="chained plugin.*prevResult"):
        handler(cmd(command, TCP, prev=None), kernel)


def test_check_passes_then_names_what_is_missing(kernel, fake):
    portmap.cmd_add(cmd("ADD", TCP), kernel)
    portmap.cmd_check(cmd("CHECK", TCP), kernel)
    chain = rules.chain_name("mynet", "abc")
    fake.chains(4, "nat")[chain].pop()
    with pytest.raises(errors.CheckMismatch, match="IPv4 port mappings of container abc"):
        portmap.cmd_check(cmd("CHECK", TCP), kernel)
    with pytest.raises(errors.CheckMismatch):
        portmap.cmd_check(cmd("CHECK", TCP, UDP), kernel)


def test_del_without_prev_result_removes_the_chains_and_twice_is_fine(kernel, fake):
    portmap.cmd_add(cmd("ADD", TCP, container="abc"), kernel)
    portmap.cmd_add(cmd("ADD", TCP, container="other"), kernel)
    portmap.cmd_del(cmd("DEL", TCP, prev=None), kernel)
    portmap.cmd_del(cmd("DEL", TCP, prev=None), kernel)
    for family in (4, 6):
        left = chains(fake, family)
        assert rules.chain_name("mynet", "abc") not in left
        assert rules.chain_name("mynet", "other") in left
        assert all("abc" not in " ".join(r) for r in left["CNI-HOSTPORT-DNAT"])


def test_del_succeeds_when_one_family_cannot_be_read(fake, rec):
    def runner(argv, stdin):
        if argv[0].startswith("ip6tables"):
            return fake._done(argv, 1, "", "ip6tables-nft-save: no nat table\n")
        return fake(argv, stdin)

    kernel = portmap.Kernel(applier=functools.partial(Iptables, backend="nft", runner=runner),
                            route_localnet=rec.route_localnet, clear_udp=rec.clear_udp)
    portmap.cmd_add(cmd("ADD", TCP, prev={**PREV, "ips": PREV["ips"][:1]}), kernel)
    portmap.cmd_del(cmd("DEL", TCP, prev=None), kernel)
    assert rules.chain_name("mynet", "abc") not in chains(fake, 4)


def test_a_failing_family_undoes_the_one_made_before(fake, rec):
    def runner(argv, stdin):
        if argv[0].startswith("ip6tables") and argv[0].endswith("restore"):
            return fake._done(argv, 1, "", "ip6tables-restore: line 2 failed\n")
        return fake(argv, stdin)

    kernel = portmap.Kernel(applier=functools.partial(Iptables, backend="nft", runner=runner),
                            route_localnet=rec.route_localnet, clear_udp=rec.clear_udp)
    with pytest.raises(errors.IptablesFailure):
        portmap.cmd_add(cmd("ADD", TCP), kernel)
    assert rules.chain_name("mynet", "abc") not in chains(fake, 4)


def test_bad_conditions_are_named_in_the_iptables_error(fake, rec):
    def runner(argv, stdin):
        if argv[0].endswith("restore"):
            return fake._done(argv, 2, "", "iptables-restore: line 9 failed\n")
        return fake(argv, stdin)

    kernel = portmap.Kernel(applier=functools.partial(Iptables, backend="nft", runner=runner),
                            route_localnet=rec.route_localnet, clear_udp=rec.clear_udp)
    with pytest.raises(errors.IptablesFailure, match=r"conditionsV4 is \['-m', 'bogus'\]"):
        portmap.cmd_add(cmd("ADD", TCP, conditionsV4=["-m", "bogus"]), kernel)


def test_an_external_mark_chain_must_exist(kernel, fake):
    with pytest.raises(errors.InvalidConfig, match="externalSetMarkChain MY-MARK does not"):
        portmap.cmd_add(cmd("ADD", TCP, externalSetMarkChain="MY-MARK"), kernel)
    for family in (4, 6):
        fake.chains(family, "nat")["MY-MARK"] = []
    portmap.cmd_add(cmd("ADD", TCP, externalSetMarkChain="MY-MARK"), kernel)
    assert "CNI-HOSTPORT-SETMARK" not in chains(fake)


def test_a_conntrack_failure_is_reported_not_fatal(fake, rec, capsys):
    def broken(version: int, port: int) -> int:
        raise errors.KernelFailure("no nf_conntrack_netlink")

    kernel = portmap.Kernel(applier=functools.partial(Iptables, backend="nft", runner=fake),
                            route_localnet=rec.route_localnet, clear_udp=broken)
    portmap.cmd_add(cmd("ADD", UDP), kernel)
    assert "stale UDP conntrack entries to port 5353 stay" in capsys.readouterr().err


def test_gc_removes_the_chains_of_containers_not_valid(kernel, fake):
    for container in ("keep", "gone1", "gone2"):
        portmap.cmd_add(cmd("ADD", TCP, container=container), kernel)
    portmap.cmd_add(cmd("ADD", TCP, container="gone1", name="othernet"), kernel)
    gc = cmd("GC", prev=None, **{"cni.dev/valid-attachments": [
        {"containerID": "keep", "ifname": "eth0"}]})
    portmap.cmd_gc(gc, kernel)
    for family in (4, 6):
        left = chains(fake, family)
        assert rules.chain_name("mynet", "keep") in left
        assert rules.chain_name("othernet", "gone1") in left
        assert rules.chain_name("mynet", "gone1") not in left
        assert rules.chain_name("mynet", "gone2") not in left
        assert len(left["CNI-HOSTPORT-DNAT"]) == 2


def test_gc_needs_the_valid_attachments(kernel):
    with pytest.raises(errors.InvalidConfig, match="cni.dev/valid-attachments"):
        portmap.cmd_gc(cmd("GC", prev=None), kernel)


def test_the_dispatcher_answers_bad_config_with_error_json():
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/run/netns/p",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    config = {"cniVersion": "1.0.0", "name": "mynet", "type": "tartan-portmap",
              "markMasqBit": 40, "prevResult": PREV}
    reply = skel.run(portmap.PLUGIN, env, json.dumps(config).encode())
    assert reply.exit_code == 1
    assert json.loads(reply.stdout) == {"cniVersion": "1.0.0", "code": 7,
                                        "msg": "markMasqBit must be an integer 0..31 (a bit "
                                               "of the packet mark), got 40"}


def test_conntrack_unreachable_is_a_kernel_failure_not_a_traceback(monkeypatch):
    from tartan.kernel import conntrack
    from tartan.kernel.errors import KernelFailure

    def no_netlink():
        raise OSError(93, "Protocol not supported")  # no nf_conntrack_netlink

    monkeypatch.setattr(conntrack, "Conntrack", no_netlink)
    with pytest.raises(KernelFailure, match="conntrack entries to port 53"):
        conntrack.delete_to_port(4, "udp", 53)
