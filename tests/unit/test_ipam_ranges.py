"""Range arithmetic, defaults and round-robin order, IPv4 and IPv6."""

from __future__ import annotations

from ipaddress import ip_address as ip
from ipaddress import ip_network as net

import pytest

from tartan.ipam.ranges import Range, RangeError, RangeSet, default_end


def test_v4_defaults_are_host_locals():
    r = Range.build(net("10.1.0.0/24"))
    assert (r.start, r.end, r.gateway) == (ip("10.1.0.1"), ip("10.1.0.254"), ip("10.1.0.1"))
    assert r.size == 253  # .2-.254: the gateway is never handed out


def test_v6_default_end_is_the_last_address():
    # host-local v1.1.1 (verified by running it): IPv6 has no broadcast, the end is all-ones.
    r = Range.build(net("fd00::/120"))
    assert (r.start, r.end, r.gateway) == (ip("fd00::1"), ip("fd00::ff"), ip("fd00::1"))
    assert r.size == 254
    assert default_end(net("fd00::/126")) == ip("fd00::3")


def test_explicit_bounds_and_gateway_outside_them():
    r = Range.build(net("10.1.0.0/24"), ip("10.1.0.10"), ip("10.1.0.20"), ip("10.1.0.254"))
    assert r.size == 11
    assert r.contains(ip("10.1.0.10")) and r.contains(ip("10.1.0.20"))
    assert not r.contains(ip("10.1.0.9")) and not r.contains(ip("10.1.0.21"))
    assert not r.contains(ip("fd00::10"))


def test_str_shows_what_can_be_handed_out():
    assert str(Range.build(net("10.1.0.0/29"))) == "10.1.0.0/29 (10.1.0.2-10.1.0.6)"
    r = Range.build(net("10.1.0.0/29"), end=ip("10.1.0.5"), gateway=ip("10.1.0.5"))
    assert str(r) == "10.1.0.0/29 (10.1.0.1-10.1.0.4)"


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"subnet": net("10.0.0.0/31")}, "subnet", "too small"),
        ({"subnet": net("10.0.0.0/32")}, "subnet", "too small"),
        ({"subnet": net("fd00::/127")}, "subnet", "too small"),
        ({"start": ip("10.2.0.1")}, "rangeStart", "outside subnet 10.1.0.0/24"),
        ({"end": ip("10.2.0.1")}, "rangeEnd", "outside subnet"),
        ({"gateway": ip("10.2.0.1")}, "gateway", "outside subnet"),
        ({"gateway": ip("fd00::1")}, "gateway", "outside subnet"),
        ({"start": ip("10.1.0.0")}, "rangeStart", "network address"),
        ({"end": ip("10.1.0.255")}, "rangeEnd", "broadcast address"),
        ({"start": ip("10.1.0.20"), "end": ip("10.1.0.10")}, "rangeEnd", "before rangeStart"),
        ({"start": ip("10.1.0.1"), "end": ip("10.1.0.1")}, "rangeEnd", "no address besides"),
    ],
)
def test_unusable_ranges(kwargs, field, words):
    kwargs = {"subnet": net("10.1.0.0/24"), **kwargs}
    with pytest.raises(RangeError) as caught:
        Range.build(kwargs.pop("subnet"), **kwargs)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_smallest_subnets_work():
    assert Range.build(net("10.0.0.0/30")).size == 1  # .1 gateway, .2 for the pod
    assert Range.build(net("fd00::/126")).size == 2


def test_overlaps():
    a = Range.build(net("10.1.0.0/24"), ip("10.1.0.10"), ip("10.1.0.20"))
    assert a.overlaps(Range.build(net("10.1.0.0/24"), ip("10.1.0.20"), ip("10.1.0.30")))
    assert not a.overlaps(Range.build(net("10.1.0.0/24"), ip("10.1.0.21"), ip("10.1.0.30")))
    assert a.overlaps(Range.build(net("10.1.0.0/16")))
    assert not a.overlaps(Range.build(net("fd00::/64")))


def _set(*subnets: str) -> RangeSet:
    return RangeSet(tuple(Range.build(net(s)) for s in subnets))


def test_candidates_start_at_range_start_without_history():
    order = [str(a) for a, _ in _set("10.1.0.0/29").candidates(None)]
    assert order == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]


def test_candidates_continue_after_last_and_wrap():
    order = [str(a) for a, _ in _set("10.1.0.0/29").candidates(ip("10.1.0.4"))]
    assert order == ["10.1.0.5", "10.1.0.6", "10.1.0.2", "10.1.0.3", "10.1.0.4"]


def test_candidates_move_through_ranges_of_a_set():
    rs = _set("10.1.0.0/30", "10.2.0.0/30", "10.3.0.0/30")
    order = [str(a) for a, _ in rs.candidates(ip("10.2.0.2"))]
    assert order == ["10.3.0.2", "10.1.0.2", "10.2.0.2"]
    assert [r.subnet for _, r in rs.candidates(None)] == [r.subnet for r in rs.ranges]


def test_candidates_ignore_a_last_address_from_elsewhere():
    order = [str(a) for a, _ in _set("10.1.0.0/30").candidates(ip("192.168.0.1"))]
    assert order == ["10.1.0.2"]


def test_candidates_v6_after_the_very_last_address():
    order = [str(a) for a, _ in _set("fd00::/126").candidates(ip("fd00::3"))]
    assert order == ["fd00::2", "fd00::3"]


def test_candidates_never_materialise_a_huge_range():
    first = next(iter(_set("fd00::/64").candidates(ip("fd00::ffff"))))
    assert str(first[0]) == "fd00::1:0"


def test_set_lookup_and_size():
    rs = _set("10.1.0.0/29", "10.2.0.0/29")
    assert rs.size == 10 and rs.version == 4
    assert rs.range_for(ip("10.2.0.3")).subnet == net("10.2.0.0/29")
    assert rs.range_for(ip("10.3.0.3")) is None
    assert rs.contains(ip("10.1.0.1")) and not rs.allocatable(ip("10.1.0.1"))
    assert str(rs) == "10.1.0.0/29 (10.1.0.2-10.1.0.6), 10.2.0.0/29 (10.2.0.2-10.2.0.6)"
