"""Every input a user or runtime can get wrong: the right CNI code, and nothing half-made."""

from __future__ import annotations

import os
import stat

import pytest

pytestmark = pytest.mark.kernel


def assert_nothing_left(net, pod) -> None:
    assert net.host_veths() == []
    assert net.reservations() == []
    assert net.masq_rules() == []
    assert pod.ns.links() == ["lo"]


@pytest.mark.parametrize(
    ("stdin", "code"),
    [
        (b"{not json", 6),
        (b"[1, 2]", 6),
        (b'{"cniVersion": "9.9.9", "name": "n", "type": "tartan-bridge"}', 1),
        (b'{"name": "n", "type": "tartan-bridge"}', 7),
    ],
)
def test_undecodable_or_unversioned_config(bridge_net, stdin, code):
    pod = bridge_net.add(config=stdin)
    assert pod.reply.error_code == code, pod.reply.stdout
    assert pod.reply.json["msg"]
    assert_nothing_left(bridge_net, pod)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"ipam": None}, "ipam.type"),
        ({"ipam": {"subnet": "10.0.0.0/24"}}, "ipam.type"),
        ({"vlan": 5000}, "vlan"),
        ({"mtu": "big"}, "mtu"),
        ({"isGateway": "yes"}, "isGateway"),
        ({"bridge": "a-very-long-bridge-name"}, "bridge"),
        ({"name": "bad/name"}, "name"),
        ({"gsoMaxSize": 1500}, "gsoMaxSize"),
        ({"gsoMaxSize": "196608"}, "gsoMaxSize"),
    ],
)
def test_invalid_bridge_config_names_the_field(bridge_net, overrides, field):
    pod = bridge_net.add(bridge_net.conf(**overrides))
    assert pod.reply.error_code == 7, pod.reply.stdout
    assert field in pod.reply.json["msg"]
    assert_nothing_left(bridge_net, pod)


def test_invalid_cidr_is_invalid_config(bridge_net, data_dir):
    pod = bridge_net.add(bridge_net.conf(ipam={"type": "tartan-ipam", "subnet": "10.0.0.0/33",
                                               "dataDir": str(data_dir)}))
    assert pod.reply.error_code == 7, pod.reply.stdout
    assert "10.0.0.0/33" in pod.reply.json["msg"]
    assert_nothing_left(bridge_net, pod)


def test_missing_netns_is_container_unknown(bridge_net):
    pod = bridge_net.add(netns="/run/netns/does-not-exist")
    assert pod.reply.error_code == 3, pod.reply.stdout
    assert_nothing_left(bridge_net, pod)


@pytest.mark.parametrize(
    ("env", "code"),
    [
        ({"ifname": "eth0/x"}, 4),
        ({"ifname": "a-name-longer-than-15"}, 4),
        ({"container_id": "-starts-with-dash"}, 4),
        ({"netns": ""}, 4),
    ],
)
def test_invalid_environment(bridge_net, env, code):
    pod = bridge_net.add(**env)
    assert pod.reply.error_code == code, pod.reply.stdout
    assert_nothing_left(bridge_net, pod)


def test_unknown_command_is_invalid_env(bridge_net):
    pod = bridge_net.add()
    assert bridge_net.run("FROB", pod).error_code == 4


def test_check_and_gc_need_their_spec_versions(bridge_net):
    pod = bridge_net.add(bridge_net.conf(cniVersion="0.3.1"))
    conf = bridge_net.conf(cniVersion="0.3.1", prevResult=pod.reply.json)
    assert bridge_net.run("CHECK", pod, conf).error_code == 1
    gc = bridge_net.conf(cniVersion="1.0.0")
    gc["cni.dev/valid-attachments"] = []
    assert bridge_net.run("GC", config=gc, ifname="").error_code == 1


def test_exhausted_range_is_try_again_later_and_undoes_the_veth(bridge_net, data_dir):
    conf = bridge_net.conf(ipam={"type": "tartan-ipam", "subnet": "10.250.0.0/30",
                                 "dataDir": str(data_dir)})
    first = bridge_net.add(conf)
    assert first.reply.code == 0, first.reply.stdout
    second = bridge_net.add(conf)
    assert second.reply.error_code == 11, second.reply.stdout
    assert "10.250.0.0/30" in second.reply.json["msg"]
    assert second.ns.links() == ["lo"]
    assert len(bridge_net.host_veths()) == 1


def test_ipam_plugin_not_on_path(bridge_net):
    pod = bridge_net.add(bridge_net.conf(ipam={"type": "no-such-ipam"}))
    assert pod.reply.error_code == 7, pod.reply.stdout
    assert "no-such-ipam" in pod.reply.json["msg"]
    assert_nothing_left(bridge_net, pod)


def test_stale_gateway_on_the_bridge_names_both_addresses_and_the_fix(bridge_net):
    bridge_net.host.run("ip", "link", "add", "cni0", "type", "bridge")
    bridge_net.host.run("ip", "addr", "add", "10.244.7.1/24", "dev", "cni0")
    pod = bridge_net.add()
    assert pod.reply.error_code == 7, pod.reply.stdout
    msg = pod.reply.json["msg"]
    assert "10.244.7.1/24" in msg and "10.250.0.1/24" in msg and "forceAddress" in msg
    assert_nothing_left(bridge_net, pod)
    forced = bridge_net.add(bridge_net.conf(forceAddress=True))
    assert forced.reply.code == 0, forced.reply.stdout
    v4 = [a for a in bridge_net.host.addresses("cni0") if ":" not in a]
    assert v4 == ["10.250.0.1/24"]


def test_bridge_name_taken_by_another_kind_of_link(bridge_net):
    bridge_net.host.run("ip", "link", "add", "cni0", "type", "veth", "peer", "name", "cni0p")
    pod = bridge_net.add()
    assert pod.reply.error_code == 101, pod.reply.stdout
    assert "not a bridge" in pod.reply.json["msg"]
    assert bridge_net.reservations() == [] and pod.ns.links() == ["lo"]


def test_interface_already_in_the_container(bridge_net):
    pod = bridge_net.add()
    again = bridge_net.add(ns=pod.ns)
    assert again.reply.error_code == 7, again.reply.stdout
    assert len(bridge_net.host_veths()) == 1
    assert len(bridge_net.reservations()) == 1


def test_route_failure_after_ipam_undoes_everything(bridge_net, data_dir):
    conf = bridge_net.conf(ipam={"type": "tartan-ipam", "subnet": "10.250.0.0/24",
                                 "dataDir": str(data_dir),
                                 "routes": [{"dst": "192.0.2.0/24", "gw": "10.99.99.1"}]})
    pod = bridge_net.add(conf)
    assert pod.reply.error_code == 101, pod.reply.stdout
    assert "192.0.2.0/24" in pod.reply.json["msg"]
    assert_nothing_left(bridge_net, pod)


def test_masquerade_failure_undoes_everything(bridge_net, tmp_path):
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for name in ("iptables-restore", "iptables-nft-restore", "iptables-legacy-restore"):
        script = fake / name
        script.write_text("#!/bin/sh\necho 'iptables-restore: line 2 failed' >&2\nexit 1\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    path = f"{fake}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"
    pod = bridge_net.add(bridge_net.conf(ipMasq=True), extra_env={"PATH": path})
    assert pod.reply.error_code == 102, pod.reply.stdout
    assert_nothing_left(bridge_net, pod)
