"""The meta plugin's config and delegate building, no root needed."""

from __future__ import annotations

import pytest

from tartan.cni import errors, subnet_env
from tartan.cni.plugins.meta_config import build_delegate, parse
from tartan.cni.subnet_env import SubnetEnv

FLANNEL = """FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.3.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true
"""
ENV = subnet_env.parse(FLANNEL, "/f")  # its parsing is tested in test_subnet_env.py
CONF = {"cniVersion": "1.0.0", "name": "cbr0", "type": "tartan"}


def test_config_defaults():
    conf = parse(CONF)
    assert conf.subnet_file == "/run/tartan/subnet.env"
    assert conf.data_dir == "/var/lib/cni/tartan"


@pytest.mark.parametrize("bad", [
    {"name": ""},
    {"subnetFile": "relative/subnet.env"},
    {"dataDir": 7},
    {"delegate": "bridge"},
    {"delegate": {"type": 3}},
    {"delegate": {"name": "other"}},
    {"delegate": {"ipam": []}},
])
def test_config_errors_are_invalid_config(bad):
    with pytest.raises(errors.InvalidConfig):
        parse({**CONF, **bad})


def test_generated_delegate():
    delegate = build_delegate(parse(CONF), ENV)
    assert delegate == {
        "type": "tartan-bridge",
        "name": "cbr0",
        "cniVersion": "1.0.0",
        "bridge": "cni0",
        "isGateway": True,
        "isDefaultGateway": False,
        "hairpinMode": True,
        "forceAddress": True,
        "ipMasq": False,
        "mtu": 1450,
        "ipam": {
            "type": "tartan-ipam",
            "ranges": [[{"subnet": "10.244.3.0/24"}]],
            "routes": [{"dst": "10.244.0.0/16"}],
        },
    }


def test_ip_masq_is_the_opposite_of_the_agents():
    env = SubnetEnv(ENV.networks, ENV.subnet, ENV.mtu, ip_masq=False)
    assert build_delegate(parse(CONF), env)["ipMasq"] is True


def test_delegate_keys_win_but_name_and_version_do_not():
    conf = parse({**CONF, "delegate": {"isDefaultGateway": True, "mtu": 1400, "ipMasq": True,
                                       "bridge": "tbr0", "cniVersion": "0.3.1"}})
    delegate = build_delegate(conf, ENV)
    assert delegate["isDefaultGateway"] is True and delegate["mtu"] == 1400
    assert delegate["ipMasq"] is True and delegate["bridge"] == "tbr0"
    assert delegate["cniVersion"] == "1.0.0" and delegate["name"] == "cbr0"


def test_other_delegate_type_gets_no_bridge_defaults():
    delegate = build_delegate(parse({**CONF, "delegate": {"type": "ipvlan"}}), ENV)
    assert delegate["type"] == "ipvlan"
    assert "bridge" not in delegate and "isGateway" not in delegate
    assert delegate["mtu"] == 1450 and delegate["ipMasq"] is False


def test_delegate_ipam_is_merged_but_ranges_come_from_the_subnet_file():
    conf = parse({**CONF,
                  "ipam": {"type": "host-local", "resolvConf": "/etc/resolv.conf"},
                  "delegate": {"ipam": {"dataDir": "/tmp/x",
                                        "ranges": [[{"subnet": "192.168.0.0/24"}]],
                                        "routes": [{"dst": "10.96.0.0/12"},
                                                   {"dst": "10.244.0.0/16"}]}}})
    ipam = build_delegate(conf, ENV)["ipam"]
    assert ipam == {
        "type": "host-local",
        "resolvConf": "/etc/resolv.conf",
        "dataDir": "/tmp/x",
        "ranges": [[{"subnet": "10.244.3.0/24"}]],
        "routes": [{"dst": "10.96.0.0/12"}, {"dst": "10.244.0.0/16"}],
    }


def test_runtime_config_and_capabilities_pass_through():
    extras = {"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 8080}]},
              "capabilities": {"portMappings": True}, "args": {"cni": {"ips": ["10.244.3.7"]}}}
    delegate = build_delegate(parse({**CONF, **extras}), ENV)
    for key, value in extras.items():
        assert delegate[key] == value


def test_building_does_not_change_the_config():
    raw = {**CONF, "delegate": {"ipam": {"dataDir": "/tmp/x"}}}
    conf = parse(raw)
    build_delegate(conf, ENV)["ipam"]["dataDir"] = "/elsewhere"
    assert raw["delegate"] == {"ipam": {"dataDir": "/tmp/x"}}
    assert "ranges" not in conf.delegate["ipam"]


def test_big_tcp_from_the_agent_reaches_tartan_bridge_only():
    env = subnet_env.parse(FLANNEL + "TARTAN_GSO_MAX_SIZE=196608\n", "/f")
    assert env.gso_max_size == 196608
    assert build_delegate(parse(CONF), env)["gsoMaxSize"] == 196608
    reference = dict(CONF, delegate={"type": "bridge"})
    assert "gsoMaxSize" not in build_delegate(parse(reference), env)
    assert "gsoMaxSize" not in build_delegate(parse(CONF), ENV)  # flannel's file: default
