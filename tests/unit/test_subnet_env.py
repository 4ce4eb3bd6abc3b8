"""/run/tartan/subnet.env: tartand writes it, the meta plugin and the lab read it back."""

from __future__ import annotations

import ipaddress
import os

import pytest

from tartan.cni import errors, subnet_env
from tartan.cni.subnet_env import SubnetEnv

FLANNEL = """FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.3.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true
"""
ENV = SubnetEnv(
    networks=(ipaddress.ip_network("10.244.0.0/16"),),
    subnet=ipaddress.ip_interface("10.244.3.1/24"),
    mtu=1450,
    ip_masq=True,
)
NET = ipaddress.ip_network("10.244.0.0/16")
OWN = ipaddress.ip_network("10.244.3.0/24")


def test_flannel_file_as_flanneld_writes_it():
    assert subnet_env.parse(FLANNEL, "/f") == ENV


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
    assert subnet_env.parse(text, "/f") == ENV


def test_several_networks_are_all_routed():
    env = subnet_env.parse(FLANNEL.replace("10.244.0.0/16", "10.244.0.0/16, 10.96.0.0/12"), "/f")
    assert [str(n) for n in env.networks] == ["10.244.0.0/16", "10.96.0.0/12"]


@pytest.mark.parametrize("value,expected", [("false", False), ("0", False), ("1", True)])
def test_ip_masq_accepts_go_booleans(value, expected):
    env = subnet_env.parse(FLANNEL.replace("IPMASQ=true", f"IPMASQ={value}"), "/f")
    assert env.ip_masq is expected


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
        subnet_env.parse("\n".join([*lines, f"{var}={bad}"]), "/run/tartan/subnet.env")
    assert "/run/tartan/subnet.env" in info.value.msg
    assert var in info.value.msg and bad in info.value.msg


def test_missing_variables_are_listed():
    with pytest.raises(errors.InvalidConfig) as info:
        subnet_env.parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=\n", "/f")
    assert "FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ" in info.value.msg


def test_missing_file_is_try_again_later(tmp_path):
    path = tmp_path / "subnet.env"
    with pytest.raises(errors.TryAgainLater) as info:
        subnet_env.read(str(path))
    assert info.value.code == 11
    assert f"subnet file {path} does not exist: is tartand running" in info.value.msg


def test_read_subnet_file(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text(FLANNEL)
    assert subnet_env.read(str(path)) == ENV


def test_written_as_flanneld_writes_it_and_read_back_the_same(tmp_path):
    path = tmp_path / "run" / "subnet.env"
    written = SubnetEnv.for_lease(NET, OWN, 1450, True)
    assert written == ENV
    assert subnet_env.write(path, written)
    assert path.read_text() == FLANNEL
    assert subnet_env.read(path) == ENV
    assert not subnet_env.write(path, written)  # identical: left alone
    assert subnet_env.previous_subnet(path) == OWN
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def test_big_tcp_is_written_only_when_the_backend_allows_it(tmp_path):
    text = SubnetEnv.for_lease(NET, OWN, 1500, False, 196608).render()
    assert text.endswith("FLANNEL_IPMASQ=false\nTARTAN_GSO_MAX_SIZE=196608\n")
    assert "TARTAN" not in SubnetEnv.for_lease(NET, OWN, 1500, False, 0).render()
    path = tmp_path / "subnet.env"
    subnet_env.write(path, SubnetEnv.for_lease(NET, OWN, 1500, False, 196608))
    assert subnet_env.read(path).gso_max_size == 196608


def test_a_changed_lease_replaces_the_file(tmp_path):
    path = tmp_path / "subnet.env"
    subnet_env.write(path, ENV)
    moved = SubnetEnv.for_lease(NET, ipaddress.ip_network("10.244.9.0/24"), 1450, True)
    assert subnet_env.write(path, moved)
    assert subnet_env.read(path).subnet == ipaddress.ip_interface("10.244.9.1/24")


def test_previous_subnet_tolerates_missing_or_broken_files(tmp_path):
    assert subnet_env.previous_subnet(tmp_path / "nope") is None
    (tmp_path / "bad").write_text("FLANNEL_SUBNET=garbage\n")
    assert subnet_env.previous_subnet(tmp_path / "bad") is None


def test_unreadable_file_is_an_io_failure(tmp_path):
    path = tmp_path / "subnet.env"
    path.mkdir()  # reading a directory fails with EISDIR, as root too
    with pytest.raises(errors.IOFailure) as info:
        subnet_env.read(path)
    assert str(path) in info.value.msg and os.strerror(21) in info.value.msg
