"""host-local's config fields: parsing, defaults, and every bad input with its code."""

from __future__ import annotations

from ipaddress import ip_address as ip
from ipaddress import ip_network as net

import pytest

from tartan.cni import errors
from tartan.cni.types import Route
from tartan.ipam import config
from tartan.ipam.store import Attachment


def conf(ipam: dict | None = None, **top) -> dict:
    base = {"cniVersion": "1.1.0", "name": "podnet", "type": "tartan-ipam"}
    if ipam is not None:
        base["ipam"] = {"type": "tartan-ipam", **ipam}
    return {**base, **top}


def ranges(*sets) -> dict:
    return {"ranges": [list(s) for s in sets]}


def test_minimal_ranges_config():
    parsed = config.parse(conf(ranges([{"subnet": "10.1.0.0/24"}])))
    assert parsed.name == "podnet"
    assert parsed.data_dir == "/var/lib/cni/networks"
    assert parsed.routes == () and parsed.requested == () and parsed.resolv_conf == ""
    (rs,) = parsed.range_sets
    (r,) = rs.ranges
    assert (r.subnet, r.start, r.end, r.gateway) == (
        net("10.1.0.0/24"), ip("10.1.0.1"), ip("10.1.0.254"), ip("10.1.0.1"))


def test_dual_stack_and_all_fields():
    parsed = config.parse(conf({
        **ranges(
            [{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20",
              "gateway": "10.1.0.254"}, {"subnet": "10.2.0.0/24"}],
            [{"subnet": "fd00:1::/64"}],
        ),
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.0.254"},
                   {"dst": "::/0"}],
        "dataDir": "/tmp/x",
        "resolvConf": "/etc/resolv.conf",
        "someUnknownField": {"ignored": True},
    }))
    v4, v6 = parsed.range_sets
    assert [r.subnet for r in v4.ranges] == [net("10.1.0.0/24"), net("10.2.0.0/24")]
    assert v4.ranges[0].start == ip("10.1.0.10") and v4.ranges[0].gateway == ip("10.1.0.254")
    assert v6.version == 6 and v6.ranges[0].end == ip("fd00:1::ffff:ffff:ffff:ffff")
    assert parsed.routes == (Route("0.0.0.0/0"), Route("10.9.0.0/16", "10.1.0.254"), Route("::/0"))
    assert parsed.data_dir == "/tmp/x" and parsed.resolv_conf == "/etc/resolv.conf"


def test_legacy_single_range_comes_first():
    parsed = config.parse(conf({
        "subnet": "10.5.0.0/16", "rangeStart": "10.5.1.0", "rangeEnd": "10.5.1.255",
        "gateway": "10.5.0.1", **ranges([{"subnet": "fd00::/120"}]),
    }))
    legacy, v6 = parsed.range_sets
    r = legacy.ranges[0]
    assert (r.start, r.end, r.gateway) == (ip("10.5.1.0"), ip("10.5.1.255"), ip("10.5.0.1"))
    assert v6.version == 6


def test_empty_strings_mean_unset_like_host_local():
    parsed = config.parse(conf(ranges([{"subnet": "10.1.0.0/24", "gateway": "",
                                        "rangeStart": ""}])))
    assert parsed.range_sets[0].ranges[0].gateway == ip("10.1.0.1")


def test_requested_ips_from_every_source_in_host_local_order():
    parsed = config.parse(
        conf(ranges([{"subnet": "10.1.0.0/24"}]),
             args={"cni": {"ips": ["10.1.0.7/24"]}},
             runtimeConfig={"ips": ["10.1.0.8"]}),
        {"IP": "10.1.0.5, fd00::5", "K8S_POD_NAME": "ignored"},
    )
    assert parsed.requested == (ip("10.1.0.5"), ip("fd00::5"), ip("10.1.0.7"), ip("10.1.0.8"))


def test_resolv_conf_parsing(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text(
        "# comment\n; also comment\nnameserver 10.0.0.10\nnameserver fd00::10\n"
        "domain cluster.local\nsearch a.svc b.svc\nsearch c.svc\noptions ndots:5 edns0\n"
        "nameserver\nbogus line here\n"
    )
    dns = config.read_resolv_conf(str(path))
    assert dns.nameservers == ["10.0.0.10", "fd00::10"]
    assert dns.domain == "cluster.local"
    assert dns.search == ["a.svc", "b.svc", "c.svc"]
    assert dns.options == ["ndots:5", "edns0"]


def test_unreadable_resolv_conf(tmp_path):
    with pytest.raises(errors.InvalidConfig, match=r"ipam.resolvConf .* cannot be read"):
        config.read_resolv_conf(str(tmp_path / "missing"))


SUBNET = {"subnet": "10.1.0.0/24"}

BAD = [
    # (config, code, words in the message)
    (conf(ranges([{"subnet": "10.0.0.0/33"}])), 7,
     'ipam.ranges[0][0].subnet "10.0.0.0/33" is not a valid CIDR'),
    (conf(ranges([{"subnet": "10.0.0.0"}])), 7, "ipam.ranges[0][0].subnet \"10.0.0.0\" is not a"),
    (conf(ranges([{"subnet": "fe80::%eth0/64"}])), 7, "is not a valid CIDR"),
    (conf(ranges([{"subnet": "10.0.0.5/24"}])), 7, "has host bits set; use 10.0.0.0/24"),
    (conf(ranges([{"subnet": "10.0.0.0/31"}])), 7, "ipam.ranges[0][0].subnet 10.0.0.0/31 is too"),
    (conf(ranges([{}])), 7, "ipam.ranges[0][0].subnet is missing"),
    (conf(ranges([{**SUBNET, "rangeStart": "10.2.0.1"}])), 7,
     "ipam.ranges[0][0].rangeStart 10.2.0.1 is outside subnet 10.1.0.0/24; use an address in "
     "10.1.0.1-10.1.0.254"),
    (conf(ranges([{**SUBNET, "rangeEnd": "10.1.1.1"}])), 7,
     "ipam.ranges[0][0].rangeEnd 10.1.1.1 is outside"),
    (conf(ranges([{**SUBNET, "gateway": "10.9.0.1"}])), 7,
     "ipam.ranges[0][0].gateway 10.9.0.1 is outside"),
    (conf(ranges([{**SUBNET, "rangeStart": "10.1.0.50", "rangeEnd": "10.1.0.40"}])), 7,
     "rangeEnd 10.1.0.40 is before rangeStart 10.1.0.50"),
    (conf(ranges([{**SUBNET, "rangeStart": "banana"}])), 7,
     'ipam.ranges[0][0].rangeStart "banana" is not an IP address'),
    (conf(ranges([SUBNET, {"subnet": "10.1.0.0/25"}])), 7,
     "ipam.ranges[0][1] 10.1.0.0/25 (10.1.0.2-10.1.0.126) overlaps ipam.ranges[0][0]"),
    (conf(ranges([SUBNET, {"subnet": "fd00::/64"}])), 7,
     "ipam.ranges[0][1] is IPv6 but ipam.ranges[0][0] is IPv4"),
    (conf(ranges([SUBNET], [{"subnet": "10.1.0.128/25"}])), 7,
     "ipam.ranges[1] (10.1.0.128/25 (10.1.0.130-10.1.0.254)) overlaps ipam.ranges[0]"),
    (conf({"subnet": "10.1.0.0/24", **ranges([SUBNET])}), 7,
     "ipam.ranges[0] (10.1.0.0/24 (10.1.0.2-10.1.0.254)) overlaps ipam"),
    (conf(ranges([])), 7, "ipam.ranges[0] is empty"),
    (conf({"ranges": []}), 7, "ipam has no address ranges"),
    (conf({}), 7, "ipam has no address ranges"),
    (conf(), 7, 'network config has no "ipam" section'),
    (conf(ranges([SUBNET]), name=""), 7, 'network config has no "name"'),
    ({k: v for k, v in conf(ranges([SUBNET])).items() if k != "name"}, 7, 'has no "name"'),
    (conf(ranges([SUBNET]), name="../etc"), 7, 'name "../etc" is not a valid network name'),
    (conf(ranges([SUBNET]), name="a/b"), 7, "is not a valid network name"),
    (conf(ranges([SUBNET]), name=".hidden"), 7, "is not a valid network name"),
    (conf(ranges([SUBNET]), name="x" * 256), 7, "at most 255 characters"),
    (conf({**ranges([SUBNET]), "dataDir": "relative/dir"}), 7,
     'ipam.dataDir "relative/dir" is not an absolute path'),
    (conf({**ranges([SUBNET]), "routes": [{"dst": "10.0.0.0/40"}]}), 7,
     'ipam.routes[0].dst "10.0.0.0/40" is not a valid CIDR'),
    (conf({**ranges([SUBNET]), "routes": [{"gw": "10.1.0.1"}]}), 7,
     "ipam.routes[0].dst is missing"),
    (conf({**ranges([SUBNET]), "routes": [{"dst": "0.0.0.0/0", "gw": "nope"}]}), 7,
     'ipam.routes[0].gw "nope" is not an IP address'),
    (conf({**ranges([SUBNET]), "routes": [{"dst": "::/0", "gw": "10.1.0.1"}]}), 7,
     "ipam.routes[0].gw 10.1.0.1 is IPv4 but dst ::/0 is IPv6"),
    (conf(ranges([SUBNET]), runtimeConfig={"ips": ["10.1.0.300"]}), 7,
     'runtimeConfig.ips[0] "10.1.0.300" is not an IP address'),
    (conf(ranges([SUBNET]), args={"cni": {"ips": ["x"]}}), 7,
     'args.cni.ips[0] "x" is not an IP address'),
    # wrong JSON types: decode failures
    (conf({"ranges": "10.1.0.0/24"}), 6, 'ipam.ranges must be a list, not "10.1.0.0/24"'),
    (conf({"ranges": [{"subnet": "10.1.0.0/24"}]}), 6, "ipam.ranges[0] must be a list"),
    (conf({"ranges": [["10.1.0.0/24"]]}), 6, "ipam.ranges[0][0] must be an object"),
    (conf(ranges([{"subnet": 10}])), 6, "ipam.ranges[0][0].subnet must be a string, not 10"),
    (conf(ranges([{**SUBNET, "gateway": 1}])), 6, "ipam.ranges[0][0].gateway must be a string"),
    (conf(ranges([SUBNET]), name=5), 6, "name must be a string"),
    ({**conf(), "ipam": "host-local"}, 6, "ipam must be an object"),
    (conf({**ranges([SUBNET]), "routes": {"dst": "0.0.0.0/0"}}), 6, "ipam.routes must be a list"),
    (conf({**ranges([SUBNET]), "dataDir": ["/x"]}), 6, "ipam.dataDir must be a string"),
    (conf({**ranges([SUBNET]), "resolvConf": 1}), 6, "ipam.resolvConf must be a string"),
    (conf(ranges([SUBNET]), runtimeConfig={"ips": "10.1.0.5"}), 6,
     "runtimeConfig.ips must be a list"),
    (conf(ranges([SUBNET]), runtimeConfig={"ips": [5]}), 6, "runtimeConfig.ips[0] must be a"),
    (conf(ranges([SUBNET]), args={"cni": []}), 6, "args.cni must be an object"),
]


@pytest.mark.parametrize(("raw", "code", "words"), BAD)
def test_bad_config(raw, code, words):
    with pytest.raises(errors.CniError) as caught:
        config.parse(raw)
    assert caught.value.code == code
    assert words in caught.value.msg


def test_bad_cni_args_ip_is_an_environment_error():
    with pytest.raises(errors.InvalidEnv, match='CNI_ARGS IP "10.1.0.x" is not an IP address'):
        config.parse(conf(ranges([SUBNET])), {"IP": "10.1.0.5,10.1.0.x"})


def test_valid_attachments_both_keys():
    new = {"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}
    old = {"cni.dev/attachments": [{"containerID": "b", "ifname": "net1"}]}
    assert config.valid_attachments(new) == {Attachment("a", "eth0")}
    assert config.valid_attachments(old) == {Attachment("b", "net1")}
    assert config.valid_attachments({**new, **old}) == {Attachment("a", "eth0"),
                                                        Attachment("b", "net1")}
    assert config.valid_attachments({"cni.dev/valid-attachments": None}) == frozenset()


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        ({}, 7, "GC needs cni.dev/valid-attachments"),
        ({"cni.dev/valid-attachments": {}}, 6, "cni.dev/valid-attachments must be a list"),
        ({"cni.dev/valid-attachments": [{"containerID": "a"}]}, 7, "needs both containerID"),
        ({"cni.dev/attachments": ["a"]}, 6, "cni.dev/attachments[0] must be an object"),
    ],
)
def test_bad_valid_attachments(raw, code, words):
    with pytest.raises(errors.CniError) as caught:
        config.valid_attachments(raw)
    assert caught.value.code == code and words in caught.value.msg
