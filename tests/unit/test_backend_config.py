"""Each backend parses its own Backend section of net-conf.json (tartan.backends.registry)."""

from __future__ import annotations

import pytest

from tartan.backends import registry
from tartan.backends.hostgw import HostGwConfig
from tartan.backends.vxlan import VxlanConfig
from tartan.ipam.netconf import NetConfError, parse_network_config


def backend(**fields):
    """The parsed Backend section of a net-conf.json with these top-level fields."""
    return registry.parse_config(parse_network_config({"Network": "10.244.0.0/16", **fields}))


def fails(field: str, match: str, **fields) -> NetConfError:
    with pytest.raises(NetConfError, match=match) as exc:
        backend(**fields)
    assert exc.value.field == field
    assert isinstance(exc.value, ValueError) and "\n" not in str(exc.value)
    return exc.value


def test_backend_defaults_and_fields():
    assert backend() == VxlanConfig(1, 8472, False, 0)  # no Backend at all: vxlan
    assert backend(Backend={}) == VxlanConfig()
    assert backend(Backend={"Type": "host-gw"}) == HostGwConfig(0)
    full = backend(Backend={"Type": "vxlan", "VNI": 4096, "Port": 4789, "DirectRouting": True,
                            "MTU": 1400, "GBP": False})
    assert full == VxlanConfig(4096, 4789, True, 1400)
    assert backend(Backend={"Port": 0}).port == 8472  # flannel: 0 is the default
    assert backend(Backend={"Type": "host-gw", "MTU": 1400}) == HostGwConfig(1400)


def test_each_backend_reads_only_its_own_fields():
    # flannel's host-gw has no VNI or Port: it ignores them, as flannel does
    assert backend(Backend={"Type": "host-gw", "VNI": 0, "Port": -1}) == HostGwConfig(0)


def test_keys_and_backend_type_match_case_insensitively():
    net = parse_network_config({"network": "10.5.0.0/16",
                                "BACKEND": {"type": "VXLAN", "vni": 3, "directrouting": True}})
    assert registry.parse_config(net) == VxlanConfig(3, 8472, True, 0)
    assert registry.backend_type(parse_network_config(
        {"Network": "10.5.0.0/16", "Backend": {"Type": "Host-GW"}})).name == "host-gw"


@pytest.mark.parametrize("kind", ["udp", "wireguard", "ipip", "aws-vpc", "UDP"])
def test_flannel_backends_tartan_does_not_support(kind: str):
    fails("Backend.Type", f'"{kind.lower()}" is a flannel backend Tartan does not support; '
          "use vxlan or host-gw", Backend={"Type": kind})


def test_unknown_backend_type():
    fails("Backend.Type", '"geneve" is not a backend; use vxlan or host-gw',
          Backend={"Type": "geneve"})
    fails("Backend.Type", "Backend.Type must be a string", Backend={"Type": 1})


@pytest.mark.parametrize("vni", [0, -1, 16777216])
def test_vni_out_of_range(vni: int):
    fails("Backend.VNI", f"Backend.VNI {vni} is out of range; use 1 to 16777215",
          Backend={"VNI": vni})


@pytest.mark.parametrize("port", [-1, 65536])
def test_port_out_of_range(port: int):
    fails("Backend.Port", f"Backend.Port {port} is out of range; use 1 to 65535",
          Backend={"Port": port})


def test_backend_field_types():
    fails("Backend.VNI", "Backend.VNI must be a whole number", Backend={"VNI": "1"})
    fails("Backend.DirectRouting", "must be true or false", Backend={"DirectRouting": "yes"})


@pytest.mark.parametrize("mtu", [-1, 67, 65536])
def test_mtu_out_of_range(mtu: int):
    fails("Backend.MTU", "use 68 to 65535, or 0 to derive it", Backend={"MTU": mtu})
