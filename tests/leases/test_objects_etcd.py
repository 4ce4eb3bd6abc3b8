"""The etcd store's objects against a real etcd: their keys beside flannel's, watches, outages."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from etcd_server import EtcdServer, free_port
from test_object_contract import while_waiting

from tartan.ipam.lease import DEFAULT_ETCD_PREFIX, StoreUnavailable
from tartan.ipam.lease_etcd import EtcdLeaseStore, parse_endpoint
from tartan.ipam.objects import KINDS, NAMESPACES, PODS, InvalidObjectKey

from harness import completes

NEVER = 3600.0  # a wait's timeout that no test sits out
POD = {"kind": "Pod", "metadata": {"namespace": "prod", "name": "web-1"}}
FLANNEL_CONFIG = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": 7}}'
FLANNEL_LEASE = '{"PublicIP":"192.168.1.10","BackendType":"vxlan","BackendData":{"VNI":7}}'


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
def prefix(raw) -> Iterator[str]:
    prefix = f"/tartan-test/{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        raw.delete_prefix(prefix + "/")


@pytest.fixture
def store(etcd: EtcdServer, prefix: str) -> Iterator[EtcdLeaseStore]:
    made = EtcdLeaseStore(etcd.url, prefix=prefix)
    try:
        yield made
    finally:
        made.close()


def test_objects_live_under_the_tartan_subtree(store: EtcdLeaseStore, prefix: str, raw):
    store.put_object(PODS, "prod/web-1", POD)
    store.put_object(NAMESPACES, "prod", {"kind": "Namespace"})
    value, _ = raw.get(f"{prefix}/tartan/pods/prod/web-1")
    assert json.loads(value) == POD
    assert json.loads(raw.get(f"{prefix}/tartan/namespaces/prod")[0]) == {"kind": "Namespace"}
    assert store.delete_object(PODS, "prod/web-1") is True
    assert raw.get(f"{prefix}/tartan/pods/prod/web-1") == (None, None)


def test_a_flannel_tree_is_unaffected(etcd: EtcdServer, raw):
    """Objects at flannel's own prefix: flannel's config and subnets read as before, and
    objects never show up as leases."""
    subnets = f"{DEFAULT_ETCD_PREFIX}/subnets/"
    raw.put(f"{DEFAULT_ETCD_PREFIX}/config", FLANNEL_CONFIG)
    raw.put(subnets + "10.5.1.0-24", FLANNEL_LEASE)
    store = EtcdLeaseStore(etcd.url)
    try:
        before = store.list_leases()[0]
        store.put_object(PODS, "prod/web-1", POD)
        store.put_object(NAMESPACES, "subnets", {"kind": "Namespace"})  # a look-alike name
        assert store.list_leases()[0] == before
        assert [str(lease.subnet) for lease in before] == ["10.5.1.0/24"]
        assert store.get_config() == json.loads(FLANNEL_CONFIG)
        keys = sorted(meta.key.decode() for _, meta in raw.get_prefix(subnets))
        assert keys == [subnets + "10.5.1.0-24"]
        assert list(store.list_objects()[0][PODS]) == ["prod/web-1"]
    finally:
        store.close()
        raw.delete_prefix(DEFAULT_ETCD_PREFIX + "/")


def test_keys_not_written_by_tartan_are_skipped(store: EtcdLeaseStore, prefix: str, raw):
    store.put_object(PODS, "prod/web-1", POD)
    for key, value in [("services/prod/web", "{}"), ("pods/no-namespace", "{}"),
                       ("pods/prod/not-json", "{nope"), ("pods/prod/a-list", "[1]"),
                       ("pods", "{}")]:
        raw.put(f"{prefix}/tartan/{key}", value)
    objects, _ = store.list_objects()
    assert objects == {kind: {} for kind in KINDS} | {PODS: {"prod/web-1": POD}}


@pytest.mark.parametrize("key", ["config", "v6subnets/fd00::-64"])
def test_the_lease_wait_still_wakes_on_the_rest_of_the_prefix(store: EtcdLeaseStore,
                                                              prefix: str, raw, key: str):
    """The lease watch leaves out only `<prefix>/tartan/`: the config and keys after the
    objects' subtree (such as a v6subnets/ folder) still wake it."""
    _, revision = store.list_leases()
    woke = while_waiting(lambda: store.wait(revision, NEVER),
                         lambda: raw.put(f"{prefix}/{key}", "{}"))
    assert woke > revision


def test_wait_objects_after_compaction_returns_the_current_revision(store: EtcdLeaseStore, raw):
    _, old = store.list_objects()
    store.put_object(PODS, "prod/web-1", POD)
    _, current = store.list_objects()
    raw.compact(current)
    # A wait that long returns only because the history it asks for is gone.
    assert completes(lambda: store.wait_objects(old, NEVER)) >= current


def test_bad_keys_and_values_are_refused_before_etcd_is_reached():
    store = EtcdLeaseStore(f"http://127.0.0.1:{free_port()}")  # nobody listens there
    try:
        with pytest.raises(InvalidObjectKey):
            store.put_object(PODS, "web-1", POD)
        with pytest.raises(InvalidObjectKey):
            store.delete_object(NAMESPACES, "prod/web")
        with pytest.raises(ValueError, match="cannot be stored as JSON"):
            store.put_object(PODS, "prod/web-1", {"x": float("inf")})
    finally:
        store.close()


def test_every_object_call_raises_store_unavailable_while_etcd_is_down(etcd_factory):
    server = etcd_factory()
    store = EtcdLeaseStore(server.url, timeout=2)
    try:
        store.put_object(PODS, "prod/web-1", POD)
        _, revision = store.list_objects()
        server.kill()
        calls = [lambda: store.put_object(PODS, "prod/web-2", POD),
                 lambda: store.delete_object(PODS, "prod/web-1"), store.list_objects,
                 lambda: store.wait_objects(revision, NEVER)]
        for call in calls:  # each fails on the outage itself: none sits out a timeout of its own
            with pytest.raises(StoreUnavailable, match=f"etcd: {server.url}|etcd request"):
                completes(call)
        server.start()  # same data, same ports: the store reconnects by itself
        assert list(store.list_objects()[0][PODS]) == ["prod/web-1"]
    finally:
        store.close()


def test_a_wait_objects_in_progress_fails_when_etcd_goes_down(etcd_factory):
    server = etcd_factory()
    store = EtcdLeaseStore(server.url, timeout=2)
    try:
        _, revision = store.list_objects()
        with pytest.raises(StoreUnavailable, match="etcd request failed"):
            while_waiting(lambda: store.wait_objects(revision, NEVER), server.kill)
    finally:
        store.close()



def test_a_delete_leaves_a_tombstone_that_a_write_takes_away(store: EtcdLeaseStore,
                                                             prefix: str, raw):
    store.put_object(PODS, "prod/web-1", POD)
    _, start = store.list_objects()
    assert store.delete_object(PODS, "prod/web-1") is True
    assert raw.get(f"{prefix}/tartan/~deleted/pods/prod/web-1")[0] == b""
    assert store.list_objects()[0] == {kind: {} for kind in KINDS}  # not an object
    assert store.object_changes(start).deleted[PODS] == {"prod/web-1"}
    store.put_object(PODS, "prod/web-1", POD)
    assert raw.get(f"{prefix}/tartan/~deleted/pods/prod/web-1") == (None, None)


def test_listings_and_changes_come_in_pages(store: EtcdLeaseStore, monkeypatch):
    from tartan.ipam import lease_etcd

    monkeypatch.setattr(lease_etcd, "PAGE", 3)
    _, start = store.list_objects()
    for index in range(10):
        store.put_object(PODS, f"prod/p{index:02d}", {"n": index})
    objects, _ = store.list_objects()
    assert list(objects[PODS]) == [f"prod/p{index:02d}" for index in range(10)]
    for index in range(0, 10, 3):
        store.delete_object(PODS, f"prod/p{index:02d}")
    changes = store.object_changes(start)
    assert sorted(changes.changed[PODS]) == [f"prod/p{i:02d}" for i in range(10) if i % 3]
    assert changes.deleted[PODS] == {f"prod/p{i:02d}" for i in range(0, 10, 3)}


def test_pruned_tombstones_make_older_changes_list_again(store: EtcdLeaseStore, prefix: str,
                                                         raw):
    store.put_object(PODS, "prod/web-1", POD)
    _, start = store.list_objects()
    store.delete_object(PODS, "prod/web-1")
    _, now = store.list_objects()
    with store._session() as client:
        store._prune_tombstones(client, now)
    assert raw.get(f"{prefix}/tartan/~deleted/pods/prod/web-1") == (None, None)
    assert store.object_changes(start) is None
    assert store.object_changes(now) is not None
