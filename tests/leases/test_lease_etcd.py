"""The etcd store against a real etcd: flannel's layout, etcd leases, outages."""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Iterator

import pytest
from etcd_server import EtcdServer, free_port
from lease_kit import attrs, net

from tartan.ipam.lease import DEFAULT_ETCD_PREFIX as DEFAULT_PREFIX
from tartan.ipam.lease import LeaseManager, StoreUnavailable, open_store
from tartan.ipam.lease_etcd import EtcdLeaseStore, parse_endpoint
from tartan.ipam.netconf import parse_network_config

from harness import completes

FLANNEL_CONFIG = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": 7}}'
FLANNEL_LEASE = ('{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"vxlan",'
                 '"BackendData":{"VNI":7,"VtepMAC":"5e:14:c7:4b:a1:01"}}')
NEVER = 3600.0  # a wait's timeout that no test sits out
FLANNEL_RESERVED = '{"PublicIP":"192.168.1.11","BackendType":"vxlan","BackendData":null}'


@pytest.fixture
def raw(etcd: EtcdServer) -> Iterator:
    """A plain etcd3 client, as flanneld or etcdctl would write keys."""
    import etcd3

    client = etcd3.client(*parse_endpoint(etcd.url))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def flannel_tree(raw) -> Iterator[str]:
    """flannel's tree at its default prefix: a config, a lease with a TTL, a reservation
    (no TTL) and a key flannel would skip as bad."""
    subnets = f"{DEFAULT_PREFIX}/subnets/"
    raw.put(f"{DEFAULT_PREFIX}/config", FLANNEL_CONFIG)
    raw.put(subnets + "10.5.1.0-24", FLANNEL_LEASE, lease=raw.lease(600))
    raw.put(subnets + "10.5.2.0-24", FLANNEL_RESERVED)
    raw.put(subnets + "not-a-subnet", "{}")
    try:
        yield DEFAULT_PREFIX
    finally:
        raw.delete_prefix(DEFAULT_PREFIX + "/")


def test_an_existing_flannel_tree_is_read_as_is(etcd: EtcdServer, flannel_tree: str):
    store = EtcdLeaseStore(etcd.url)
    try:
        conf = parse_network_config(store.get_config())
        assert (str(conf.network), conf.backend["vni"]) == ("10.5.0.0/16", 7)
        leased, reserved = store.list_leases()[0]
        assert (leased.subnet, leased.attrs.public_ip) == (net("10.5.1.0/24"), "192.168.1.10")
        assert leased.attrs.backend_data == {"VNI": 7, "VtepMAC": "5e:14:c7:4b:a1:01"}
        assert time.time() + 590 < leased.expiration <= time.time() + 600
        assert (reserved.subnet, reserved.expiration) == (net("10.5.2.0/24"), math.inf)
    finally:
        store.close()


def test_a_flannel_node_keeps_its_subnet_and_reservations_stay(etcd, flannel_tree, raw):
    store = EtcdLeaseStore(etcd.url)
    manager = LeaseManager(store, parse_network_config(store.get_config()), ttl=300)
    try:
        mine = manager.acquire(attrs("192.168.1.10", mac="5e:14:c7:4b:a1:02"))
        reserved = manager.acquire(attrs("192.168.1.11"))
        assert (mine.subnet, reserved.subnet) == (net("10.5.1.0/24"), net("10.5.2.0/24"))
        assert math.isinf(reserved.expiration)  # a reservation stays one when renewed
        value, meta = raw.get(f"{flannel_tree}/subnets/10.5.1.0-24")
        assert json.loads(value) == {"PublicIP": "192.168.1.10", "BackendType": "vxlan",
                                     "BackendData": {"VNI": 1, "VtepMAC": "5e:14:c7:4b:a1:02"}}
        assert 290 <= raw.get_lease_info(meta.lease_id).TTL <= 300
        assert raw.get(f"{flannel_tree}/subnets/10.5.2.0-24")[1].lease_id == 0
    finally:
        store.close()


def test_each_write_attaches_a_fresh_etcd_lease(etcd: EtcdServer, raw):
    prefix = f"/tartan-test/{uuid.uuid4().hex[:12]}"
    store = EtcdLeaseStore([etcd.url], prefix=prefix)
    try:
        lease = store.create(net("10.244.3.0/24"), attrs(), 30)
        key = f"{prefix}/subnets/10.244.3.0-24"
        _, first = raw.get(key)
        assert lease.version == first.mod_revision
        assert 28 <= raw.get_lease_info(first.lease_id).TTL <= 30
        renewed = store.update(lease, attrs(), 90)
        _, second = raw.get(key)
        assert second.lease_id != first.lease_id and renewed.version == second.mod_revision
        assert 88 <= raw.get_lease_info(second.lease_id).TTL <= 90
    finally:
        store.close()


def test_wait_after_compaction_returns_the_current_revision(etcd: EtcdServer, raw):
    store = EtcdLeaseStore(etcd.url, prefix=f"/tartan-test/{uuid.uuid4().hex[:12]}")
    try:
        _, old = store.list_leases()
        store.create(net("10.244.3.0/24"), attrs(), 30)
        _, current = store.list_leases()
        raw.compact(current)
        # A wait that long returns only because the history it asks for is gone.
        assert completes(lambda: store.wait(old, NEVER)) >= current
    finally:
        store.close()


def test_the_first_reachable_endpoint_is_used(etcd: EtcdServer):
    dead = f"http://127.0.0.1:{free_port()}"
    store = open_store(f"{dead},{etcd.url}", prefix=f"/tartan-test/{uuid.uuid4().hex[:12]}")
    try:
        assert store.list_leases()[0] == []
    finally:
        store.close()


def test_every_call_raises_store_unavailable_while_etcd_is_down(etcd_factory):
    server = etcd_factory()
    store = EtcdLeaseStore(server.url, timeout=2)
    try:
        lease = store.create(net("10.244.3.0/24"), attrs(), 30)
        _, revision = store.list_leases()
        server.kill()
        calls = [store.get_config, lambda: store.put_config({}), store.list_leases,
                 lambda: store.create(net("10.244.4.0/24"), attrs(), 30),
                 lambda: store.update(lease, attrs(), 30),
                 lambda: store.delete(lease.subnet), lambda: store.wait(revision, NEVER)]
        for call in calls:  # each fails on the outage itself: none sits out a timeout of its own
            with pytest.raises(StoreUnavailable, match=f"etcd: {server.url}|etcd request"):
                completes(call)
        server.start()  # same data, same ports: the store reconnects by itself
        assert [x.subnet for x in store.list_leases()[0]] == [lease.subnet]
    finally:
        store.close()


def test_unreachable_etcd_is_named_in_the_error():
    url = f"http://127.0.0.1:{free_port()}"
    store = EtcdLeaseStore(url)
    with pytest.raises(StoreUnavailable) as exc:
        store.list_leases()
    assert str(exc.value).startswith(f"cannot reach etcd: {url} (")
    store.close()


@pytest.mark.parametrize(("url", "error"), [
    ("https://127.0.0.1:2379", "TLS is not supported yet"),
    ("127.0.0.1:2379", "is not a URL"),
    ("", "no etcd endpoint"),
])
def test_bad_endpoints(url: str, error: str):
    with pytest.raises(ValueError, match=error):
        EtcdLeaseStore(url)


def test_endpoint_forms():
    assert parse_endpoint("http://10.0.0.1") == ("10.0.0.1", 2379)
    assert parse_endpoint("http://[fd00::1]:4001") == ("[fd00::1]", 4001)


def test_protobuf_runtime_is_the_pure_python_one():
    from google.protobuf.internal import api_implementation

    assert os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] == "python"
    assert api_implementation.Type() == "python"
