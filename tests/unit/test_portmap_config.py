"""tartan-portmap's config: every field of the reference portmap, and every bad input."""

from __future__ import annotations

import ipaddress

import pytest

from tartan.cni import errors
from tartan.cni.plugins.portmap_config import DEFAULT_MARK_BIT, PortMapping, parse


def conf(**fields) -> dict:
    out = {"cniVersion": "1.1.0", "name": "net", "type": "tartan-portmap"}
    out.update(fields)
    return out


def mappings(*entries: dict) -> dict:
    return {"runtimeConfig": {"portMappings": list(entries)}}


def test_defaults_are_the_reference_plugins():
    parsed = parse(conf())
    assert parsed.name == "net" and parsed.cni_version == "1.1.0"
    assert parsed.mappings == ()
    assert parsed.snat is True
    assert parsed.mark_masq_bit == DEFAULT_MARK_BIT == 13
    assert parsed.external_set_mark_chain is None
    assert parsed.conditions_for(4) == () and parsed.conditions_for(6) == ()


def test_every_field():
    parsed = parse(conf(
        snat=False, markMasqBit=0, conditionsV4=["-d", "192.0.2.1"],
        conditionsV6=["!", "-s", "fd00::/8"], capabilities={"portMappings": True},
        **mappings({"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                   {"hostPort": 53, "containerPort": 5353, "protocol": "UDP",
                    "hostIP": "192.0.2.1"},
                   {"hostPort": 9000, "containerPort": 9000, "hostIP": ""})))
    assert parsed.snat is False and parsed.mark_masq_bit == 0
    assert parsed.conditions_for(4) == ("-d", "192.0.2.1")
    assert parsed.conditions_for(6) == ("!", "-s", "fd00::/8")
    assert parsed.mappings == (
        PortMapping(8080, 80, "tcp"),
        PortMapping(53, 5353, "udp", ipaddress.ip_address("192.0.2.1")),
        PortMapping(9000, 9000, "tcp", None))


def test_mapping_keys_in_any_case_as_containerd_sends_them():
    # containerd 1.6's CRI writes Go's field names; the reference's decoder ignores key case
    parsed = parse(conf(**mappings(
        {"HostPort": 30080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""},
        {"HOSTPORT": 53, "containerport": 5353, "PROTOCOL": "UDP", "hostip": "192.0.2.1"})))
    assert parsed.mappings == (
        PortMapping(30080, 80, "tcp", None),
        PortMapping(53, 5353, "udp", ipaddress.ip_address("192.0.2.1")))


def test_mark_bit_bounds_and_external_chain():
    assert parse(conf(markMasqBit=31)).mark_masq_bit == 31
    ext = parse(conf(externalSetMarkChain="KUBE-MARK-MASQ"))
    assert ext.external_set_mark_chain == "KUBE-MARK-MASQ"
    assert parse(conf(markMasqBit=None, externalSetMarkChain=None)).mark_masq_bit == 13


def test_host_ip_family_and_unspecified():
    v4 = PortMapping(1, 1, host_ip=ipaddress.ip_address("192.0.2.1"))
    any6 = PortMapping(1, 1, host_ip=ipaddress.ip_address("::"))
    assert v4.applies_to(4) and not v4.applies_to(6)
    assert any6.applies_to(6) and not any6.applies_to(4) and any6.destination is None
    assert PortMapping(1, 1).applies_to(4) and PortMapping(1, 1).applies_to(6)
    assert v4.destination == ipaddress.ip_address("192.0.2.1")


@pytest.mark.parametrize(("fields", "names"), [
    ({"name": None}, "name"),
    ({"name": "bad name"}, "name"),
    ({"name": 'a"b'}, "name"),
    ({"snat": "yes"}, "snat"),
    ({"snat": 1}, "snat"),
    ({"markMasqBit": 32}, "markMasqBit"),
    ({"markMasqBit": -1}, "markMasqBit"),
    ({"markMasqBit": "13"}, "markMasqBit"),
    ({"markMasqBit": True}, "markMasqBit"),
    ({"markMasqBit": 13, "externalSetMarkChain": "X"}, "markMasqBit and externalSetMarkChain"),
    ({"externalSetMarkChain": 5}, "externalSetMarkChain"),
    ({"externalSetMarkChain": "has space"}, "externalSetMarkChain"),
    ({"externalSetMarkChain": "-j"}, "externalSetMarkChain"),
    ({"externalSetMarkChain": "A" * 29}, "externalSetMarkChain"),
    ({"externalSetMarkChain": "ACCEPT"}, "externalSetMarkChain"),
    ({"conditionsV4": "-d 1.2.3.4"}, "conditionsV4"),
    ({"conditionsV4": ["-d", 1]}, "conditionsV4"),
    ({"conditionsV4": ["-d", "1.2.3.4\n-A X"]}, "conditionsV4"),
    ({"conditionsV4": [""]}, "conditionsV4"),
    ({"conditionsV4": ["-j", "ACCEPT"]}, "conditionsV4"),
    ({"conditionsV6": ["--goto", "X"]}, "conditionsV6"),
    ({"runtimeConfig": []}, "runtimeConfig"),
    ({"runtimeConfig": {"portMappings": {}}}, "runtimeConfig.portMappings"),
    (mappings(5), "runtimeConfig.portMappings[0]"),
    (mappings({"containerPort": 80}), "runtimeConfig.portMappings[0].hostPort"),
    (mappings({"hostPort": 0, "containerPort": 80}), "runtimeConfig.portMappings[0].hostPort"),
    (mappings({"hostPort": 65536, "containerPort": 80}),
     "runtimeConfig.portMappings[0].hostPort"),
    (mappings({"hostPort": "80", "containerPort": 80}),
     "runtimeConfig.portMappings[0].hostPort"),
    (mappings({"hostPort": 80, "containerPort": 1}, {"hostPort": 80, "containerPort": -1}),
     "runtimeConfig.portMappings[1].containerPort"),
    (mappings({"hostPort": 80, "containerPort": True}),
     "runtimeConfig.portMappings[0].containerPort"),
    (mappings({"hostPort": 80, "containerPort": 80, "protocol": "icmp"}),
     "runtimeConfig.portMappings[0].protocol"),
    (mappings({"hostPort": 80, "containerPort": 80, "protocol": 6}),
     "runtimeConfig.portMappings[0].protocol"),
    (mappings({"hostPort": 80, "containerPort": 80, "hostIP": "localhost"}),
     "runtimeConfig.portMappings[0].hostIP"),
    (mappings({"hostPort": 80, "containerPort": 80, "hostIP": 1}),
     "runtimeConfig.portMappings[0].hostIP"),
])
def test_bad_fields_are_invalid_config_naming_the_field(fields, names):
    with pytest.raises(errors.InvalidConfig) as info:
        parse(conf(**fields))
    assert info.value.code == errors.INVALID_CONFIG == 7
    assert names in info.value.msg, info.value.msg


def test_empty_or_null_mappings_are_none():
    assert parse(conf(runtimeConfig={})).mappings == ()
    assert parse(conf(runtimeConfig={"portMappings": None})).mappings == ()
    assert parse(conf(runtimeConfig=None)).mappings == ()
    assert parse(conf(**mappings())).mappings == ()
