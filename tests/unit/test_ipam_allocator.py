"""Allocation policy against the in-memory store: round robin, wrap, exhaustion, requests."""

from __future__ import annotations

from ipaddress import ip_address as ip
from ipaddress import ip_network as net

import pytest

from tartan.cni import errors
from tartan.ipam import allocator
from tartan.ipam.allocator import Allocator
from tartan.ipam.ranges import Range, RangeSet
from tartan.ipam.store import Attachment, MemoryStore


def rset(*subnets: str, **bounds) -> RangeSet:
    return RangeSet(tuple(Range.build(net(s), **bounds) for s in subnets))


def who(n: int | str, ifname: str = "eth0") -> Attachment:
    return Attachment(f"c{n}", ifname)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def test_first_address_skips_the_gateway(store):
    lease = Allocator(rset("10.1.0.0/24"), store, 0).get(who(1))
    assert lease.ip == ip("10.1.0.2") and lease.new
    assert lease.address == "10.1.0.2/24" and lease.range.gateway == ip("10.1.0.1")
    assert store.last_reserved(0) == ip("10.1.0.2")


def test_round_robin_does_not_reuse_a_just_released_address(store):
    alloc = Allocator(rset("10.1.0.0/24"), store, 0)
    first = alloc.get(who(1)).ip
    alloc.release(who(1))
    assert alloc.get(who(2)).ip == first + 1


def test_wraps_to_the_start_after_the_end(store):
    alloc = Allocator(rset("10.1.0.0/29"), store, 0)
    got = [alloc.get(who(n)).ip for n in range(5)]
    assert [str(a) for a in got] == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    alloc.release(who(1))
    assert alloc.get(who(9)).ip == ip("10.1.0.3")


def test_exhaustion_is_try_again_later_naming_the_set(store):
    alloc = Allocator(rset("10.1.0.0/29"), store, 0)
    for n in range(5):
        alloc.get(who(n))
    with pytest.raises(errors.TryAgainLater) as caught:
        alloc.get(who(99))
    assert caught.value.code == 11
    assert caught.value.msg == (
        "no free address in range set 10.1.0.0/29 (10.1.0.2-10.1.0.6): 5 of 5 reserved"
    )
    assert alloc.free() == 0


def test_multi_range_set_spills_into_the_next_range(store):
    alloc = Allocator(rset("10.1.0.0/30", "10.2.0.0/30"), store, 0)
    assert [str(alloc.get(who(n)).ip) for n in range(2)] == ["10.1.0.2", "10.2.0.2"]
    with pytest.raises(errors.TryAgainLater, match=r"10.1.0.0/30 .*, 10.2.0.0/30 .*2 of 2"):
        alloc.get(who(3))


def test_v6(store):
    alloc = Allocator(rset("fd00::/126"), store, 1)
    assert [str(alloc.get(who(n)).ip) for n in range(2)] == ["fd00::2", "fd00::3"]
    assert store.last_reserved(1) == ip("fd00::3")


def test_same_container_and_ifname_gets_its_reservation_back(store):
    alloc = Allocator(rset("10.1.0.0/24"), store, 0)
    first = alloc.get(who(1))
    again = alloc.get(who(1))
    assert again.ip == first.ip and not again.new
    assert alloc.get(who(1, "net1")).ip != first.ip


def test_requested_address(store):
    alloc = Allocator(rset("10.1.0.0/24"), store, 0)
    assert alloc.get(who(1), ip("10.1.0.77")).ip == ip("10.1.0.77")
    assert store.last_reserved(0) == ip("10.1.0.77")
    assert alloc.get(who(1), ip("10.1.0.77")).ip == ip("10.1.0.77")  # repeated ADD


def test_requested_address_taken_by_another(store):
    alloc = Allocator(rset("10.1.0.0/24"), store, 0)
    alloc.get(who(1), ip("10.1.0.77"))
    with pytest.raises(errors.TryAgainLater, match="10.1.0.77 is already reserved by container c1"):
        alloc.get(who(2), ip("10.1.0.77"))


@pytest.mark.parametrize(
    ("requested", "words"),
    [("10.1.0.1", "is the gateway of 10.1.0.0/24"), ("10.9.0.1", "is not in range set")],
)
def test_requested_address_not_allocatable(store, requested, words):
    with pytest.raises(errors.InvalidConfig, match=words):
        Allocator(rset("10.1.0.0/24"), store, 0).get(who(1), ip(requested))
    assert store.reservations() == {}


def test_requested_address_differs_from_the_held_one(store):
    alloc = Allocator(rset("10.1.0.0/24"), store, 0)
    alloc.get(who(1))
    with pytest.raises(errors.InvalidConfig, match="already holds 10.1.0.2 .* not the requested"):
        alloc.get(who(1), ip("10.1.0.50"))


def test_allocate_gives_one_address_per_set(store):
    sets = [rset("10.1.0.0/24"), rset("fd00::/64")]
    leases = allocator.allocate(sets, store, who(1), [ip("fd00::99")])
    assert [str(lease.ip) for lease in leases] == ["10.1.0.2", "fd00::99"]
    assert store.last_reserved(0) == ip("10.1.0.2") and store.last_reserved(1) == ip("fd00::99")


def test_allocate_is_all_or_nothing(store):
    sets = [rset("10.1.0.0/24"), rset("fd00::/126")]
    allocator.allocate(sets, store, who(1))
    allocator.allocate(sets, store, who(2))
    before = store.reservations()
    with pytest.raises(errors.TryAgainLater, match="fd00::/126"):
        allocator.allocate(sets, store, who(3))
    assert store.reservations() == before


def test_allocate_rollback_keeps_what_the_owner_held_before(store):
    sets = [rset("10.1.0.0/24"), rset("fd00::/126")]
    allocator.allocate(sets[:1], store, who(1))
    allocator.allocate(sets[1:], store, who(2))
    allocator.allocate(sets[1:], store, who(3))
    with pytest.raises(errors.TryAgainLater):
        allocator.allocate(sets, store, who(1))
    assert store.find_by_id(who(1)) == [ip("10.1.0.2")]


@pytest.mark.parametrize(
    ("requested", "words"),
    [
        (["10.9.0.1"], "requested IP 10.9.0.1 is not in any range set"),
        (["10.1.0.5", "10.1.0.6"], "more than one requested IP in one range set"),
    ],
)
def test_allocate_rejects_requests_it_cannot_place(store, requested, words):
    with pytest.raises(errors.InvalidConfig, match=words):
        allocator.allocate([rset("10.1.0.0/24")], store, who(1), [ip(r) for r in requested])
    assert store.reservations() == {}


def test_collect_garbage_keeps_only_valid_attachments(store):
    sets = [rset("10.1.0.0/24")]
    for n in range(4):
        allocator.allocate(sets, store, who(n))
    store.held[ip("10.1.0.100")] = Attachment("c1", "")  # host-local's old one-line format
    store.held[ip("10.1.0.101")] = Attachment("c7", "")
    gone = allocator.collect_garbage(store, {who(1), who(3)})
    assert sorted(str(a) for a in gone) == ["10.1.0.101", "10.1.0.2", "10.1.0.4"]
    assert sorted(h.container_id for h in store.reservations().values()) == ["c1", "c1", "c3"]


def test_missing_sets(store):
    sets = [rset("10.1.0.0/24"), rset("fd00::/64")]
    allocator.allocate(sets[:1], store, who(1))
    assert allocator.missing_sets(sets, store.find_by_id(who(1))) == [sets[1]]
    assert allocator.missing_sets(sets, store.find_by_id(who(2))) == sets


def test_old_format_reservation_matches_any_ifname(store):
    store.held[ip("10.1.0.9")] = Attachment("c1", "")
    assert store.release_by_id(who(1, "net7")) == [ip("10.1.0.9")]
