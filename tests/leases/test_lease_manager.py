"""LeaseManager: the allocation and renewal policy, over real stores."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from lease_kit import FakeClock, StoreKit, attrs, config, net, one_free_subnet, wait_until

from tartan.ipam.lease import (
    Lease,
    LeaseContention,
    LeaseLost,
    LeaseManager,
    SubnetsExhausted,
)
from tartan.ipam.lease_memory import MemoryLeaseStore

AGENT = Path(__file__).with_name("lease_agent.py")
fake_clock_kits = pytest.mark.parametrize("kit", ["memory", "sqlite"], indirect=True)


def manager(kit: StoreKit, conf=None, ttl: float = 600, seed: int = 0) -> LeaseManager:
    return LeaseManager(kit.open(), conf or config(), clock=kit.clock, ttl=ttl,
                        rng=random.Random(seed))


def memory_manager(conf=None, ttl: float = 600, seed: int = 0,
                   store: MemoryLeaseStore | None = None) -> LeaseManager:
    clock = store.clock if store else FakeClock()
    return LeaseManager(store or MemoryLeaseStore(clock), conf or config(), clock=clock,
                        ttl=ttl, rng=random.Random(seed))


# -- agents starting at once ----------------------------------------------------------


def race(kit: StoreKit, nodes: int) -> list[Lease | SubnetsExhausted]:
    managers = [manager(kit, one_free_subnet(), seed=i) for i in range(nodes)]
    barrier = threading.Barrier(nodes)
    results: list = [None] * nodes

    def node(i: int) -> None:
        barrier.wait()
        try:
            results[i] = managers[i].acquire(attrs(f"192.168.50.{i + 1}"))
        except SubnetsExhausted as exc:
            results[i] = exc

    threads = [threading.Thread(target=node, args=(i,)) for i in range(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_agents_racing_for_the_last_subnet_get_it_once(kit: StoreKit):
    store = kit.open()
    for _ in range(3):
        results = race(kit, nodes=3)
        winners = [r for r in results if isinstance(r, Lease)]
        assert len(winners) == 1 and winners[0].subnet == net("10.9.0.64/26")
        assert sum(isinstance(r, SubnetsExhausted) for r in results) == 2
        (held,), _ = store.list_leases()
        assert held.attrs == winners[0].attrs
        store.delete(held.subnet)


def run_agents(url: str, prefix: str, count: int) -> list[dict]:
    netconf = json.dumps(one_free_subnet().raw)
    start_at = str(time.time() + 1.5)  # after every interpreter has started
    procs = [subprocess.Popen([sys.executable, str(AGENT), url, f"192.168.60.{i + 1}",
                               start_at, prefix, netconf], stdout=subprocess.PIPE, text=True)
             for i in range(count)]
    return [json.loads(proc.communicate(timeout=60)[0]) for proc in procs]


@pytest.mark.parametrize("kind", ["sqlite", "etcd"])
def test_agent_processes_racing_for_the_last_subnet(kind: str, tmp_path: Path,
                                                    request: pytest.FixtureRequest):
    if kind == "sqlite":
        url = f"sqlite:{tmp_path}/shared/leases.db"
    else:
        url = request.getfixturevalue("etcd").url
    results = run_agents(url, f"/tartan-test/{uuid.uuid4().hex[:12]}", count=3)
    assert sorted(r.get("subnet", r.get("error")) for r in results) == [
        "10.9.0.64/26", "SubnetsExhausted", "SubnetsExhausted"]
    assert all("10.9.0.0/24" in r["msg"] for r in results if "error" in r)


# -- renewal --------------------------------------------------------------------------


def test_renewal_extends_expiry(kit: StoreKit):
    node = manager(kit, ttl=kit.min_ttl * 4)
    lease = node.acquire(attrs())
    kit.advance(kit.min_ttl * 2.5)
    time.sleep(0.01)
    renewed = node.renew(lease)
    assert renewed.subnet == lease.subnet and renewed.version != lease.version
    assert renewed.expiration > lease.expiration
    assert [x.version for x in kit.open().list_leases()[0]] == [renewed.version]


def test_renewal_policy_is_half_the_ttl():
    node = memory_manager(ttl=5)
    clock = node.clock
    lease = node.acquire(attrs())
    assert lease.expiration == clock() + 5
    assert node.renew_at(lease) == lease.expiration - 2.5
    clock.advance(2.4)
    assert not node.needs_renewal(lease)
    clock.advance(0.1)
    assert node.needs_renewal(lease)
    assert not node.needs_renewal(node.renew(lease))
    day = memory_manager()
    day.ttl = 24 * 3600
    assert day.renew_at(Lease(net("10.244.1.0/24"), attrs(), 100_000.0, 1)) == 100_000 - 12 * 3600


def test_renew_can_change_attrs(kit: StoreKit):
    node = manager(kit)
    lease = node.acquire(attrs(mac="aa:aa:aa:aa:aa:01"))
    renewed = node.renew(lease, attrs(mac="aa:aa:aa:aa:aa:02"))
    (listed,), _ = kit.open().list_leases()
    assert listed.attrs == renewed.attrs == attrs(mac="aa:aa:aa:aa:aa:02")


# -- expiry and lost leases ----------------------------------------------------------


def test_expiry_frees_the_subnet_for_another_node(kit: StoreKit):
    ttl = kit.min_ttl
    first = manager(kit, one_free_subnet(), ttl=ttl)
    second = manager(kit, one_free_subnet(), ttl=ttl, seed=1)
    lease = first.acquire(attrs("192.168.50.1"))
    with pytest.raises(SubnetsExhausted):
        second.acquire(attrs("192.168.50.2"))
    kit.advance(ttl + 0.5)
    assert wait_until(second.store, lambda: second.store.list_leases()[0] == [])
    taken = second.acquire(attrs("192.168.50.2"))
    assert taken.subnet == lease.subnet
    with pytest.raises(LeaseLost, match="10.9.0.64/26"):
        first.renew(lease)  # back from a partition: the subnet is someone else's now
    assert [x.attrs.public_ip for x in first.store.list_leases()[0]] == ["192.168.50.2"]


def test_renew_of_a_deleted_lease_is_lost(kit: StoreKit):
    node = manager(kit)
    lease = node.acquire(attrs())
    kit.open().delete(lease.subnet)
    with pytest.raises(LeaseLost):
        node.renew(lease)
    assert kit.open().list_leases()[0] == []  # renew did not put it back


def test_renew_of_a_reassigned_lease_is_lost(kit: StoreKit):
    node = manager(kit)
    lease = node.acquire(attrs("192.168.50.1"))
    other = kit.open()
    other.delete(lease.subnet)
    assert other.create(lease.subnet, attrs("192.168.50.9"), 600) is not None
    with pytest.raises(LeaseLost):
        node.renew(lease)
    assert [x.attrs.public_ip for x in other.list_leases()[0]] == ["192.168.50.9"]


# -- restarts -------------------------------------------------------------------------


def test_restart_takes_over_its_own_lease_by_public_ip(kit: StoreKit):
    lease = manager(kit, seed=1).acquire(attrs("192.168.50.1", mac="aa:aa:aa:aa:aa:01"))
    kit.advance(10)
    restarted = manager(kit, seed=2).acquire(attrs("192.168.50.1", mac="aa:aa:aa:aa:aa:02"))
    assert restarted.subnet == lease.subnet and restarted.version != lease.version
    assert restarted.expiration > lease.expiration
    (listed,), _ = kit.open().list_leases()
    assert listed.attrs.backend_data["VtepMAC"] == "aa:aa:aa:aa:aa:02"


def test_restart_reuses_the_previous_subnet_from_its_file(kit: StoreKit):
    previous = net("10.244.77.0/24")
    kit.open().create(net("10.244.5.0/24"), attrs("192.168.50.2"), 600)
    lease = manager(kit, seed=3).acquire(attrs("192.168.50.1"), previous=previous)
    assert lease.subnet == previous


def test_previous_subnet_held_by_another_node_is_not_taken():
    node = memory_manager()
    node.store.create(net("10.244.77.0/24"), attrs("192.168.50.2"), 600)
    lease = node.acquire(attrs("192.168.50.1"), previous=net("10.244.77.0/24"))
    assert lease.subnet != net("10.244.77.0/24") and node.config.is_candidate(lease.subnet)


@pytest.mark.parametrize("previous", ["10.99.0.0/24", "10.244.0.0/24", "10.244.7.0/25"])
def test_previous_subnet_outside_the_range_is_ignored(previous: str):
    node = memory_manager()
    lease = node.acquire(attrs(), previous=net(previous))
    assert node.config.is_candidate(lease.subnet) and lease.subnet != net(previous)


def test_own_lease_prefers_the_previous_subnet():
    node = memory_manager()
    for subnet in ("10.244.3.0/24", "10.244.4.0/24"):
        node.store.create(net(subnet), attrs("192.168.50.1"), 600)
    assert node.acquire(attrs("192.168.50.1"), net("10.244.4.0/24")).subnet == net(
        "10.244.4.0/24")


def test_own_lease_outside_the_range_is_not_reused():
    node = memory_manager()
    node.store.create(net("10.99.1.0/24"), attrs("192.168.50.1"), 600)
    lease = node.acquire(attrs("192.168.50.1"))
    assert node.config.is_candidate(lease.subnet)


# -- choosing a subnet ---------------------------------------------------------------


def test_nodes_get_distinct_random_subnets_never_the_first():
    store = MemoryLeaseStore(FakeClock())
    subnets = {memory_manager(seed=i, store=store).acquire(attrs(f"192.168.1.{i}")).subnet
               for i in range(1, 41)}
    assert len(subnets) == 40
    assert net("10.244.0.0/24") not in subnets
    assert len({s for s in subnets if s.network_address.packed[2] < 41}) < 40  # not in order


def test_every_subnet_is_handed_out_then_exhausted():
    conf = config(Network="10.0.0.0/28")  # /30 subnets: .4, .8, .12 (.0 is skipped)
    store = MemoryLeaseStore(FakeClock())
    got = {memory_manager(conf, seed=i, store=store).acquire(attrs(f"192.168.1.{i}")).subnet
           for i in range(1, 4)}
    assert got == {net("10.0.0.4/30"), net("10.0.0.8/30"), net("10.0.0.12/30")}
    with pytest.raises(SubnetsExhausted) as exc:
        memory_manager(conf, store=store).acquire(attrs("192.168.1.9"))
    assert str(exc.value) == (
        "no free subnet in Network 10.0.0.0/28: all 3 /30 subnets from 10.0.0.4 (SubnetMin) "
        "to 10.0.0.12 (SubnetMax) are leased (3 leases held); wait for a stale lease to "
        "expire, delete one, or widen the range")


def test_leases_of_another_size_block_the_subnets_they_overlap():
    conf = config(SubnetMin="10.244.4.0", SubnetMax="10.244.8.0")
    store = MemoryLeaseStore(FakeClock())
    store.create(net("10.244.4.0/23"), attrs("192.168.1.100"), 600)
    store.create(net("10.244.8.128/25"), attrs("192.168.1.101"), 600)
    got = {memory_manager(conf, seed=i, store=store).acquire(attrs(f"192.168.1.{i}")).subnet
           for i in range(1, 3)}
    assert got == {net("10.244.6.0/24"), net("10.244.7.0/24")}
    with pytest.raises(SubnetsExhausted):
        memory_manager(conf, store=store).acquire(attrs("192.168.1.3"))


class AlwaysTaken(MemoryLeaseStore):
    """Another node wins every create."""

    def create(self, subnet, attrs, ttl):
        return None


def test_endless_lost_races_give_up_with_contention():
    node = memory_manager(store=AlwaysTaken(FakeClock()))
    with pytest.raises(LeaseContention, match="retry"):
        node.acquire(attrs())
