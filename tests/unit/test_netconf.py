"""flannel's net-conf.json: every default, flannel's key matching, and every error."""

from __future__ import annotations

import json
from ipaddress import ip_network as net

import pytest

from tartan.ipam.netconf import NetConfError, parse_network_config


def parse(**fields):
    return parse_network_config({"Network": "10.244.0.0/16", **fields})


# -- defaults -------------------------------------------------------------------------


def test_defaults_for_a_16():
    conf = parse()
    assert conf.network == net("10.244.0.0/16")
    assert conf.subnet_len == 24
    assert conf.subnet_min == net("10.244.1.0/24")  # the first subnet is skipped
    assert conf.subnet_max == net("10.244.255.0/24")
    assert conf.backend == {}  # parsed by the backend it names (test_backend_config.py)
    assert conf.raw == {"Network": "10.244.0.0/16"}


@pytest.mark.parametrize(("network", "length"), [
    ("10.0.0.0/8", 24), ("10.244.0.0/22", 24), ("10.244.0.0/23", 25), ("10.244.0.0/26", 28),
    ("10.244.0.0/28", 30),
])
def test_default_subnet_len(network: str, length: int):
    assert parse(Network=network).subnet_len == length


def test_range_follows_an_explicit_subnet_len():
    conf = parse(SubnetLen=20)
    assert (conf.subnet_min, conf.subnet_max) == (net("10.244.16.0/20"), net("10.244.240.0/20"))
    assert conf.subnet_count() == 15


def test_candidate_subnets_run_from_min_to_max():
    conf = parse(Network="10.0.0.0/28")
    assert list(conf.candidate_subnets()) == [net("10.0.0.4/30"), net("10.0.0.8/30"),
                                              net("10.0.0.12/30")]
    limited = parse(SubnetMin="10.244.10.0", SubnetMax="10.244.12.0/24")
    assert list(limited.candidate_subnets()) == [net(f"10.244.{i}.0/24") for i in (10, 11, 12)]
    assert limited.is_candidate(net("10.244.11.0/24"))
    assert not limited.is_candidate(net("10.244.13.0/24"))
    assert not limited.is_candidate(net("10.244.11.0/25"))


def test_subnet_min_and_max_may_be_one_subnet():
    conf = parse(SubnetMin="10.244.7.0", SubnetMax="10.244.7.0")
    assert list(conf.candidate_subnets()) == [net("10.244.7.0/24")]


def test_network_host_bits_are_dropped_as_flannel_does():
    assert parse(Network="10.244.3.7/16").network == net("10.244.0.0/16")


def test_the_last_duplicate_key_wins_as_in_go():
    text = '{"Network": "10.1.0.0/16", "network": "10.2.0.0/16"}'
    assert parse_network_config(text).network == net("10.2.0.0/16")


def test_text_bytes_nulls_and_unknown_keys():
    text = json.dumps({"Network": "10.244.0.0/16", "SubnetLen": None, "Backend": None,
                       "EnableNFTables": True})
    assert parse_network_config(text) == parse_network_config(text.encode()) == parse()


def test_valid_ipv6_fields_are_accepted_while_ipv6_is_off():
    conf = parse(EnableIPv6=False, IPv6Network="fd00:10:244::/56", IPv6SubnetLen=64,
                 IPv6SubnetMin="fd00:10:244:1::", EnableIPv4=True)
    assert conf.subnet_len == 24


# -- errors ---------------------------------------------------------------------------


def fails(field: str, match: str, **fields) -> NetConfError:
    with pytest.raises(NetConfError, match=match) as exc:
        parse(**fields)
    assert exc.value.field == field
    assert isinstance(exc.value, ValueError) and "\n" not in str(exc.value)
    return exc.value


@pytest.mark.parametrize("text", ['{"Network": ', "", b"\xff", "[1]", "null"])
def test_not_a_json_object(text):
    with pytest.raises(NetConfError, match="net-conf.json (is not valid JSON|must be a JSON "
                                           "object)") as exc:
        parse_network_config(text)
    assert exc.value.field == "net-conf.json"


def test_network_missing():
    with pytest.raises(NetConfError, match="Network is missing; set it") as exc:
        parse_network_config({"SubnetLen": 24})
    assert exc.value.field == "Network"


@pytest.mark.parametrize("value", ["10.244.0.0", "10.244.0.0/33", "banana/16", "", "10.0.0.0/"])
def test_network_bad_cidr(value: str):
    fails("Network", "is not a valid CIDR; use address/prefix", Network=value)


def test_network_wrong_type_or_family():
    fails("Network", "Network must be a string, not 10", Network=10)
    fails("Network", "is not an IPv4 CIDR", Network="fd00::/48")


@pytest.mark.parametrize("network", ["10.0.0.0/29", "10.0.0.0/30", "10.0.0.1/32"])
def test_network_too_small(network: str):
    fails("Network", "too small to split into node subnets; use a prefix of /28", Network=network)


@pytest.mark.parametrize("length", [31, 32, 40])
def test_subnet_len_too_long(length: int):
    fails("SubnetLen", f"SubnetLen {length} is too long.*use 30 or less", SubnetLen=length)


@pytest.mark.parametrize("length", [16, 8, -1])
def test_subnet_len_not_longer_than_the_network(length: int):
    fails("SubnetLen", f"SubnetLen {length} must be longer than the /16 of Network",
          SubnetLen=length)


@pytest.mark.parametrize("value", ["24", 24.5, True])
def test_subnet_len_wrong_type(value):
    fails("SubnetLen", "SubnetLen must be a whole number", SubnetLen=value)


def test_subnet_min_after_max():
    fails("SubnetMin", "SubnetMin 10.244.20.0/24 is after SubnetMax 10.244.10.0/24",
          SubnetMin="10.244.20.0", SubnetMax="10.244.10.0")


@pytest.mark.parametrize("name", ["SubnetMin", "SubnetMax"])
def test_subnet_bounds(name: str):
    fails(name, f"{name} 10.244.1.5 is not a subnet of size /24.*use 10.244.1.0",
          **{name: "10.244.1.5"})
    fails(name, f"{name} 10.244.1.0/25 is not a subnet of size /24",
          **{name: "10.244.1.0/25"})
    fails(name, f"{name} 10.245.0.0/24 is outside Network 10.244.0.0/16",
          **{name: "10.245.0.0"})
    fails(name, f'{name} "abc" is not an IPv4 address', **{name: "abc"})
    fails(name, f'{name} "fd00::" is not an IPv4 address', **{name: "fd00::"})
    fails(name, f"{name} must be a string", **{name: 5})


def test_backend_not_an_object():
    fails("Backend", 'Backend must be an object such as {"Type": "vxlan"}', Backend="vxlan")


def test_the_backend_section_is_kept_for_its_backend_with_keys_folded():
    conf = parse(Backend={"Type": "VXLAN", "VNI": 3, "DirectRouting": True})
    assert conf.backend == {"type": "VXLAN", "vni": 3, "directrouting": True}


def test_ipv6_is_validated_then_refused():
    fails("EnableIPv6", "IPv6 is not supported yet: remove EnableIPv6", EnableIPv6=True,
          IPv6Network="fd00:10:244::/56")
    fails("IPv6Network", "IPv6Network \"fd00::\" is not a valid CIDR", IPv6Network="fd00::")
    fails("IPv6Network", "is not an IPv6 CIDR", IPv6Network="10.0.0.0/8")
    fails("IPv6SubnetLen", "between 0 and 128", IPv6SubnetLen=200)
    fails("IPv6SubnetMax", "is not an IPv6 address", IPv6SubnetMax="10.0.0.1")
    fails("EnableIPv6", "must be true or false", EnableIPv6="true")
    fails("IPv6Networks", "IPv6 is not supported yet", IPv6Networks=["fd00::/48"])


def test_ipv4_cannot_be_disabled():
    fails("EnableIPv4", "EnableIPv4: false is not supported.*remove EnableIPv4", EnableIPv4=False)
    fails("EnableIPv4", "EnableIPv4 must be true or false", EnableIPv4="no")


def test_several_networks_are_not_supported():
    fails("Networks", "Networks .* is not supported yet; use one Network",
          Networks=["10.1.0.0/16", "10.2.0.0/16"])
