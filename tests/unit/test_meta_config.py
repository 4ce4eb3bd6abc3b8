"""The meta plugin's subnet-file parsing and delegate building, no root needed."""

from __future__ import annotations

import ipaddress

import pytest

from tartan.cni import errors
from tartan.cni.plugins.meta_config import (
    SubnetEnv,
    build_delegate,
    parse,
    parse_subnet_env,
    read_subnet_file,
)

FLANNEL = """FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.3.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true
"""
ENV = SubnetEnv(
    networks=(ipaddress.ip_network("10.244.0.0/16"),),
    subnet=ipaddress.ip_interface("10.244.3.1/24"),
    mtu=1450,
    ipmasq=True,
)
CONF = {"cniVersion": "1.0.0", "name": "cbr0", "type": "tartan"}


def test_flannel_file_as_flanneld_writes_it():
    assert parse_subnet_env(FLANNEL, "/f") == ENV


def test_quotes_whitespace_comments_and_unknown_lines_are_tolerated():
    text = """
    # written by tartand
    export FLANNEL_NETWORK = "10.244.0.0/16"
    FLANNEL_SUBNET='10.244.3.1/24'
      FLANNEL_MTU=1450
    FLANNEL_IPMASQ=True
    FLANNEL_IPV6_NETWORK=fd00::/48
    FLANNEL_IPV6_SUBNET=not-even-a-cidr
    SOMETHING_ELSE=x
    a line without an equals sign
    """
    assert parse_subnet_env(text, "/f") == ENV


def test_several_networks_are_all_routed():
    env = parse_subnet_env(FLANNEL.replace("10.244.0.0/16", "10.244.0.0/16, 10.96.0.0/12"), "/f")
    assert [str(n) for n in env.networks] == ["10.244.0.0/16", "10.96.0.0/12"]


@pytest.mark.parametrize("value,expected", [("false", False), ("0", False), ("1", True)])
def test_ipmasq_accepts_go_booleans(value, expected):
    env = parse_subnet_env(FLANNEL.replace("IPMASQ=true", f"IPMASQ={value}"), "/f")
    assert env.ipmasq is expected


@pytest.mark.parametrize("var,bad", [
    ("FLANNEL_NETWORK", "10.244.0.0/99"),
    ("FLANNEL_SUBNET", "10.244.3.1"),
    ("FLANNEL_SUBNET", "banana"),
    ("FLANNEL_MTU", "-1"),
    ("FLANNEL_MTU", "70000"),
    ("FLANNEL_MTU", "fourteen"),
    ("FLANNEL_IPMASQ", "yes"),
    ("TARTAN_GSO_MAX_SIZE", "65535"),
    ("TARTAN_GSO_MAX_SIZE", "1000000"),
    ("TARTAN_GSO_MAX_SIZE", "big"),
])
def test_malformed_value_names_the_file_and_variable(var, bad):
    lines = [line for line in FLANNEL.splitlines() if not line.startswith(var + "=")]
    with pytest.raises(errors.InvalidConfig) as info:
        parse_subnet_env("\n".join([*lines, f"{var}={bad}"]), "/run/tartan/subnet.env")
    assert "/run/tartan/subnet.env" in info.value.msg
    assert var in info.value.msg and bad in info.value.msg


def test_missing_variables_are_listed():
    with pytest.raises(errors.InvalidConfig) as info:
        parse_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=\n", "/f")
    assert "FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ" in info.value.msg


def test_missing_file_is_try_again_later(tmp_path):
    path = tmp_path / "subnet.env"
    with pytest.raises(errors.TryAgainLater) as info:
        read_subnet_file(str(path))
    assert info.value.code == 11
    assert f"subnet file {path} does not exist: is tartand running" in info.value.msg


def test_read_subnet_file(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text(FLANNEL)
    assert read_subnet_file(str(path)) == ENV


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
    env = SubnetEnv(ENV.networks, ENV.subnet, ENV.mtu, ipmasq=False)
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
    env = parse_subnet_env(FLANNEL + "TARTAN_GSO_MAX_SIZE=196608\n", "/f")
    assert env.gso_max_size == 196608
    assert build_delegate(parse(CONF), env)["gsoMaxSize"] == 196608
    reference = dict(CONF, delegate={"type": "bridge"})
    assert "gsoMaxSize" not in build_delegate(parse(reference), env)
    assert "gsoMaxSize" not in build_delegate(parse(CONF), ENV)  # flannel's file: default
