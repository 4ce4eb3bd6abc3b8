"""The LeaseStore contract: every store (memory, SQLite, etcd) behaves the same."""

from __future__ import annotations

import math
import threading
import time

import pytest
from lease_kit import StoreKit, attrs, net, wait_until

from tartan.ipam.lease import Lease

from harness import HANG_GUARD, completes

SUBNET = net("10.244.7.0/24")
TTL = 60.0
NEVER = 3600.0  # a wait's timeout that no test sits out: only a wake returns it


def test_config_round_trip(kit: StoreKit):
    store, other = kit.open(), kit.open()
    assert store.get_config() is None
    store.put_config({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}})
    assert other.get_config() == {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
    other.put_config({"Network": "10.5.0.0/16"})
    assert store.get_config() == {"Network": "10.5.0.0/16"}


def test_create_then_list(kit: StoreKit):
    store, other = kit.open(), kit.open()
    before = kit.clock()
    lease = store.create(SUBNET, attrs(), TTL)
    assert lease is not None
    assert (lease.subnet, lease.attrs) == (SUBNET, attrs())
    assert before + TTL - 1 <= lease.expiration <= kit.clock() + TTL + 1
    leases, revision = other.list_leases()
    assert leases == [Lease(SUBNET, attrs(), pytest.approx(lease.expiration, abs=1.5),
                            lease.version)]
    assert isinstance(revision, int)


def test_list_is_sorted_by_subnet(kit: StoreKit):
    store = kit.open()
    for text in ("10.244.9.0/24", "10.244.1.0/24", "10.244.10.0/24"):
        assert store.create(net(text), attrs(), TTL)
    subnets = [lease.subnet for lease in store.list_leases()[0]]
    assert subnets == [net("10.244.1.0/24"), net("10.244.9.0/24"), net("10.244.10.0/24")]


def test_create_is_refused_when_taken(kit: StoreKit):
    store, other = kit.open(), kit.open()
    first = store.create(SUBNET, attrs("192.168.50.1"), TTL)
    assert first is not None
    assert other.create(SUBNET, attrs("192.168.50.2"), TTL) is None
    assert [lease.attrs.public_ip for lease in other.list_leases()[0]] == ["192.168.50.1"]


def test_update_is_compare_and_set(kit: StoreKit):
    store, other = kit.open(), kit.open()
    lease = store.create(SUBNET, attrs(mac="aa:aa:aa:aa:aa:01"), kit.min_ttl * 5)
    kit.advance(1)
    renewed = store.update(lease, attrs(mac="aa:aa:aa:aa:aa:02"), TTL)
    assert renewed is not None and renewed.version != lease.version
    assert renewed.expiration > lease.expiration
    assert renewed.attrs.backend_data["VtepMAC"] == "aa:aa:aa:aa:aa:02"
    assert other.update(lease, attrs(mac="ee:ee:ee:ee:ee:ee"), TTL) is None  # stale version
    (listed,), _ = other.list_leases()
    assert (listed.version, listed.attrs) == (renewed.version, renewed.attrs)
    assert other.update(listed, listed.attrs, TTL) is not None


def test_update_of_a_deleted_or_recreated_lease_fails(kit: StoreKit):
    store, other = kit.open(), kit.open()
    lease = store.create(SUBNET, attrs("192.168.50.1"), TTL)
    other.delete(SUBNET)
    assert store.update(lease, attrs("192.168.50.1"), TTL) is None
    stolen = other.create(SUBNET, attrs("192.168.50.2"), TTL)
    assert stolen is not None and stolen.version != lease.version  # no ABA
    assert store.update(lease, attrs("192.168.50.1"), TTL) is None
    assert [x.attrs.public_ip for x in store.list_leases()[0]] == ["192.168.50.2"]


def test_delete(kit: StoreKit):
    store = kit.open()
    store.create(SUBNET, attrs(), TTL)
    store.delete(SUBNET)
    assert store.list_leases()[0] == []
    store.delete(SUBNET)  # already gone: fine
    assert store.create(SUBNET, attrs(), TTL) is not None


def test_expired_lease_is_absent_and_wakes_waiters(kit: StoreKit):
    store, other = kit.open(), kit.open()
    lease = store.create(SUBNET, attrs("192.168.50.1"), kit.min_ttl)
    assert len(other.list_leases()[0]) == 1
    threading.Timer(0.2, kit.advance, (kit.min_ttl + 0.5,)).start()
    assert wait_until(other, lambda: other.list_leases()[0] == [], timeout=10)
    assert store.update(lease, attrs("192.168.50.1"), TTL) is None
    assert other.create(SUBNET, attrs("192.168.50.2"), TTL) is not None


def test_wait_wakes_on_a_write_from_another_client(kit: StoreKit):
    """The wait's own timeout is far beyond the hang guard: it returns only by waking."""
    store, other = kit.open(), kit.open()
    _, revision = store.list_leases()
    waiting, woke = threading.Event(), []

    def waiter() -> None:
        waiting.set()
        woke.append(store.wait(revision, NEVER))

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    assert waiting.wait(HANG_GUARD)
    assert woke == []  # nothing changed yet: it cannot have returned
    other.create(SUBNET, attrs(), TTL)  # written after the wait began
    thread.join(HANG_GUARD)
    assert not thread.is_alive(), "wait did not wake on the other client's write"
    assert woke != [revision]
    assert [lease.subnet for lease in store.list_leases()[0]] == [SUBNET]


def test_wait_returns_at_once_when_already_changed(kit: StoreKit):
    store, other = kit.open(), kit.open()
    _, revision = store.list_leases()
    other.create(SUBNET, attrs(), TTL)
    # Nothing changes after the call: with a wait that long, returning means "at once".
    assert completes(lambda: store.wait(revision, NEVER)) != revision


def test_wait_times_out(kit: StoreKit):
    store = kit.open()
    store.create(SUBNET, attrs(), TTL)
    _, revision = store.list_leases()
    started = time.monotonic()
    assert completes(lambda: store.wait(revision, 0.3)) == revision
    assert time.monotonic() - started >= 0.25  # not before its timeout (load only adds)


def test_renewal_keeps_the_subnet_through_its_first_ttl(kit: StoreKit):
    store = kit.open()
    lease = store.create(SUBNET, attrs(), kit.min_ttl * 2)
    kit.advance(kit.min_ttl)
    renewed = store.update(lease, attrs(), kit.min_ttl * 2)
    kit.advance(kit.min_ttl * 1.5)  # past the first expiry, inside the renewed one
    assert [x.version for x in store.list_leases()[0]] == [renewed.version]
    assert not math.isinf(renewed.expiration)


def _apply_changes(listing: dict, changes) -> dict:
    for lease in changes.changed:
        listing[lease.subnet] = lease
    for subnet in changes.deleted:
        listing.pop(subnet, None)
    return listing


def _listing(store) -> dict:
    return {lease.subnet: lease for lease in store.list_leases()[0]}


def _comparable(listing: dict) -> dict:
    """etcd's expirations are each client's reading of the TTL: compare the rest."""
    return {subnet: (lease.attrs, lease.version) for subnet, lease in listing.items()}


def test_lease_changes_tell_what_was_written_and_deleted_since(kit: StoreKit):
    """What the agent's incremental path follows: from the revision its listing gave."""
    store, other = kit.open(), kit.open()
    kept, renewed, dropped = net("10.244.1.0/24"), net("10.244.2.0/24"), net("10.244.3.0/24")
    for subnet in (kept, renewed, dropped):
        store.create(subnet, attrs(), TTL)
    leases, start = other.list_leases()
    nothing = other.lease_changes(start)
    assert nothing is not None and len(nothing) == 0 and nothing.revision == start
    old = next(lease for lease in leases if lease.subnet == renewed)
    assert store.update(old, attrs(mac="aa:bb:cc:00:00:99"), TTL) is not None
    store.delete(dropped)
    store.create(SUBNET, attrs("192.168.50.9"), TTL)
    store.create(net("10.244.9.0/24"), attrs(), TTL)
    store.delete(net("10.244.9.0/24"))  # made and gone since: at most a deletion
    changes = other.lease_changes(nothing.revision)
    assert changes is not None
    assert {lease.subnet for lease in changes.changed} == {renewed, SUBNET}
    assert set(changes.deleted) - {net("10.244.9.0/24")} == {dropped}
    assert changes.revision == other.list_leases()[1]
    assert [lease.attrs.backend_data["VtepMAC"] for lease in changes.changed
            if lease.subnet == renewed] == ["aa:bb:cc:00:00:99"]


def test_lease_changes_applied_to_a_listing_give_the_next_listing(kit: StoreKit):
    store, other = kit.open(), kit.open()
    for index in range(1, 7):
        store.create(net(f"10.244.{index}.0/24"), attrs(), TTL)
    leases, revision = other.list_leases()
    listing = {lease.subnet: lease for lease in leases}
    for round_ in range(3):
        store.delete(net(f"10.244.{round_ * 2 + 1}.0/24"))
        store.create(net(f"10.244.{20 + round_}.0/24"), attrs(), TTL)
        changes = other.lease_changes(revision)
        assert changes is not None
        listing, revision = _apply_changes(listing, changes), changes.revision
        assert _comparable(listing) == _comparable(_listing(store))


def test_an_expired_lease_is_a_deletion(kit: StoreKit):
    store, other = kit.open(), kit.open()
    store.create(SUBNET, attrs(), kit.min_ttl)
    store.create(net("10.244.8.0/24"), attrs(), TTL)
    _, revision = other.list_leases()
    threading.Timer(0.2, kit.advance, (kit.min_ttl + 0.5,)).start()
    assert wait_until(other, lambda: len(other.list_leases()[0]) == 1, timeout=10)
    changes = other.lease_changes(revision)
    if changes is None:  # this client listed meanwhile: from that listing, then
        return
    assert changes.deleted == [SUBNET] and changes.changed == []


def test_lease_changes_from_a_revision_never_reported_is_none(kit: StoreKit):
    store = kit.open()
    store.create(SUBNET, attrs(), TTL)
    _, revision = store.list_leases()
    assert store.lease_changes(revision + 1000) is None


def test_a_listing_after_a_write_shows_it_to_the_client_that_listed_before(kit: StoreKit):
    """Stores may reuse what they listed before (SQLite does): never a stale lease."""
    store, other = kit.open(), kit.open()
    for index in range(1, 4):
        store.create(net(f"10.244.{index}.0/24"), attrs(), TTL)
    (first, *_), _ = other.list_leases()
    store.update(first, attrs(mac="aa:bb:cc:00:00:42"), TTL)
    store.delete(net("10.244.2.0/24"))
    store.create(net("10.244.5.0/24"), attrs("192.168.50.5"), TTL)
    leases, _ = other.list_leases()
    assert [str(lease.subnet) for lease in leases] == ["10.244.1.0/24", "10.244.3.0/24",
                                                        "10.244.5.0/24"]
    assert leases[0].attrs.backend_data["VtepMAC"] == "aa:bb:cc:00:00:42"
    assert leases[2].attrs.public_ip == "192.168.50.5"
