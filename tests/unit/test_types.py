"""Results converted between spec versions."""

from __future__ import annotations

import pytest

from tartan.cni import errors
from tartan.cni.types import DNS, Interface, IPConfig, Result, Route


def sample() -> Result:
    return Result(
        interfaces=[Interface("cni0", "aa:bb:cc:dd:ee:ff"),
                    Interface("eth0", "02:00:00:00:00:01", sandbox="/run/netns/x", mtu=1400)],
        ips=[IPConfig("10.0.0.2/24", "10.0.0.1", interface=1),
             IPConfig("fd00::2/64", "fd00::1", interface=1)],
        routes=[Route("0.0.0.0/0", "10.0.0.1", mtu=1400, priority=10, table=100)],
        dns=DNS(nameservers=["10.0.0.10"], search=["svc.local"]),
    )


def test_1_1_keeps_everything():
    out = sample().to_dict("1.1.0")
    assert out["interfaces"][1]["mtu"] == 1400
    assert out["routes"][0] == {"dst": "0.0.0.0/0", "gw": "10.0.0.1", "mtu": 1400,
                                "priority": 10, "table": 100}
    assert "version" not in out["ips"][0]


def test_1_0_drops_1_1_fields():
    out = sample().to_dict("1.0.0")
    assert "mtu" not in out["interfaces"][1]
    assert out["routes"][0] == {"dst": "0.0.0.0/0", "gw": "10.0.0.1"}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_0_x_adds_ip_versions(version):
    out = sample().to_dict(version)
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert out["cniVersion"] == version


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_round_trip(version):
    again = Result.from_dict(sample().to_dict(version))
    assert again.ips == sample().ips
    assert again.dns == sample().dns
    assert again.to_dict(version) == sample().to_dict(version)


def test_unsupported_output_version():
    with pytest.raises(errors.IncompatibleVersion):
        sample().to_dict("0.2.0")


@pytest.mark.parametrize("bad", [{"ips": [{"address": "nope"}]}, {"ips": [{}]},
                                 {"routes": [{"dst": 5}]}, []])
def test_malformed_results_are_decode_failures(bad):
    with pytest.raises(errors.DecodeFailure):
        Result.from_dict(bad, "1.0.0")
