"""StoreSource: the cluster as the store holds it (manifests + the nodes' pod records)."""

from __future__ import annotations

import ipaddress

from tartan.ipam.lease_memory import MemoryLeaseStore
from tartan.netpol.source import StoreSource

POD = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"namespace": "x", "name": "a", "labels": {"pod": "a"}},
       "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "http"}]}]}}
POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"namespace": "x", "name": "deny"}, "spec": {"podSelector": {}}}
BROKEN = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"namespace": "x", "name": "broken"},
          "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}}


def store_with(**objects) -> MemoryLeaseStore:
    store = MemoryLeaseStore()
    for kind, items in objects.items():
        for key, value in items.items():
            store.put_object(kind, key, value)
    return store


def test_a_pods_addresses_and_node_come_from_its_cni_record():
    store = store_with(pods={"x/a": POD},
                       podips={"x/a": {"ips": ["10.244.1.5"], "node": "node1",
                                       "containerID": "c1"}})
    (pod,) = StoreSource(store).snapshot().cluster.pods
    assert (pod.key, pod.node, pod.ips) == ("x/a", "node1", (ipaddress.ip_address("10.244.1.5"),))
    assert pod.labels == {"pod": "a"} and pod.named_port("http", pod.ports[0].protocol) == 80


def test_a_pod_served_by_cni_but_never_applied_counts_without_labels():
    store = store_with(podips={"y/b": {"ips": ["10.244.2.9"], "node": "node2"}})
    (pod,) = StoreSource(store).snapshot().cluster.pods
    assert (pod.key, pod.labels, pod.node) == ("y/b", {}, "node2")


def test_an_invalid_object_is_reported_and_the_rest_kept():
    snapshot = StoreSource(store_with(networkpolicies={"x/deny": POLICY,
                                                       "x/broken": BROKEN})).snapshot()
    assert [p.key for p in snapshot.cluster.policies] == ["x/deny"]
    (problem,) = snapshot.problems
    assert "NetworkPolicy x/broken" in problem.message and "70000" in problem.message


def test_a_change_is_seen_by_the_next_snapshot_and_the_stored_object_is_not_touched():
    store = store_with(pods={"x/a": POD}, podips={"x/a": {"ips": ["10.244.1.5"],
                                                          "node": "node1"}})
    source = StoreSource(store)
    first = source.snapshot()
    store.put_object("pods", "x/a", {**POD, "metadata": {**POD["metadata"],
                                                          "labels": {"pod": "z"}}})
    second = source.snapshot()
    assert second.revision != first.revision
    assert second.cluster.pods[0].labels == {"pod": "z"}
    stored, _ = store.list_objects()
    assert "status" not in stored["pods"]["x/a"]  # the record is merged, never written back
    assert source.snapshot().cluster == second.cluster


def test_after_the_first_listing_a_snapshot_follows_the_stores_changes():
    store = store_with(pods={"x/a": POD}, podips={"x/a": {"ips": ["10.244.1.5"],
                                                          "node": "node1"}},
                       networkpolicies={"x/deny": POLICY})
    source = StoreSource(store)
    first = source.snapshot()
    assert source.listings == 1
    assert source.snapshot().cluster is first.cluster  # nothing changed: the same cluster
    store.put_object("podips", "y/b", {"ips": ["10.244.1.6"], "node": "node1"})
    store.delete_object("networkpolicies", "x/deny")
    store.put_object("networkpolicies", "x/broken", BROKEN)
    store.delete_object("podips", "x/a")  # the manifest stays: a pod without addresses
    after = source.snapshot()
    assert source.listings == 1
    assert sorted((p.key, p.ips) for p in after.cluster.pods) == [
        ("x/a", ()), ("y/b", (ipaddress.ip_address("10.244.1.6"),))]
    assert after.cluster.policies == () and len(after.problems) == 1
    assert after.revision == store.list_objects()[1]
    store.delete_object("pods", "x/a")
    assert [p.key for p in source.snapshot().cluster.pods] == ["y/b"]


def test_an_unchanged_document_is_not_validated_again(monkeypatch):
    from tartan.netpol import source as source_module

    store = store_with(pods={"x/a": POD}, networkpolicies={"x/deny": POLICY})
    source = StoreSource(store)
    source.snapshot()
    loads = []
    real = source_module.load_objects
    monkeypatch.setattr(source_module, "load_objects",
                        lambda docs, where: loads.append(docs) or real(docs, where))
    store.put_object("networkpolicies", "x/deny", POLICY)  # rewritten, the same
    store.put_object("podips", "x/a", {"ips": ["10.244.1.5"], "node": "node1"})
    source.snapshot()
    assert [doc[0]["kind"] for doc in loads] == ["Pod"]


def test_when_the_store_cannot_tell_the_changes_it_lists_again():
    store = store_with(pods={"x/a": POD})
    source = StoreSource(store)
    source.snapshot()
    store.put_object("pods", "x/b", {**POD, "metadata": {"namespace": "x", "name": "b"}})
    store.object_changes = lambda since: None  # type: ignore[method-assign]
    assert sorted(p.key for p in source.snapshot().cluster.pods) == ["x/a", "x/b"]
    assert source.listings == 2


def test_followed_changes_give_what_a_fresh_listing_gives():
    store = store_with(pods={"x/a": POD}, networkpolicies={"x/deny": POLICY})
    source = StoreSource(store)
    source.snapshot()
    for index in range(5):
        name = f"p{index}"
        store.put_object("pods", f"x/{name}", {**POD, "metadata": {
            "namespace": "x", "name": name, "labels": {"pod": name}}})
        store.put_object("podips", f"x/{name}", {"ips": [f"10.244.1.{10 + index}"],
                                                 "node": "node1"})
    store.delete_object("pods", "x/p1")
    store.put_object("namespaces", "x", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": "x", "labels": {"team": "t"}}})
    followed, fresh = source.snapshot(), StoreSource(store).snapshot()
    assert sorted(followed.cluster.pods, key=lambda p: p.key) == sorted(
        fresh.cluster.pods, key=lambda p: p.key)
    assert followed.cluster.namespaces == fresh.cluster.namespaces
    assert followed.cluster.policies == fresh.cluster.policies
