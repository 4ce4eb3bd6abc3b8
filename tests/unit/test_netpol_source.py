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
