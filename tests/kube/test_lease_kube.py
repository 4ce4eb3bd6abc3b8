"""The kube subnet manager's leases (ipam/lease_kube.py) against the test API server: the
node's lease is its podCIDR, flannel's annotations are published, other nodes are peers; a
PATCH the watch has not shown yet is no lost lease."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest
from kube_kit import FAST, flannel_node, node

from tartan.backends.agent import parse_net_conf
from tartan.ipam.kube_watch import Cache, Reflector
from tartan.ipam.lease import LeaseAttrs
from tartan.ipam.lease_kube import (
    Annotations,
    KubeLeaseManager,
    KubeLeaseStore,
    KubeUnavailable,
    NodeNotReady,
    PodCidrOutsideNetwork,
)

from harness import eventually

WAIT = 5.0
CONF = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
MAC = "0e:11:22:33:44:55"
ATTRS = LeaseAttrs("198.18.1.11", "vxlan", {"VNI": 1, "VtepMAC": MAC})
FLANNEL = Annotations.parse("flannel.alpha.coreos.com")


@pytest.fixture
def leases(kube) -> Iterator[KubeLeaseStore]:
    cache = Cache()
    reflector = Reflector("nodes", kube.core().list_node, cache, settings=FAST).start()
    store = KubeLeaseStore(kube.core(), "node1", FLANNEL, cache, reflector, kube.url)
    try:
        assert cache.wait_synced(WAIT)
        yield store
    finally:
        store.close()


def manager(store: KubeLeaseStore, conf: dict = CONF) -> KubeLeaseManager:
    return KubeLeaseManager(store, parse_net_conf(conf), published_wait=WAIT)


@pytest.mark.parametrize("prefix, key", [
    ("flannel.alpha.coreos.com", "flannel.alpha.coreos.com/backend-type"),
    ("flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/backend-type"),
    ("flannel.alpha.coreos.com/prefix", "flannel.alpha.coreos.com/prefix-backend-type"),
    ("flannel.alpha.coreos.com/prefix-", "flannel.alpha.coreos.com/prefix-backend-type"),
    ("org.com/9", "org.com/9-backend-type"),
])
def test_annotation_prefixes_as_flannel_reads_them(prefix, key):
    assert Annotations.parse(prefix).backend_type == key


@pytest.mark.parametrize("prefix", ["org", "org/", "org/prefix", "org.COM", "a.b/c/d"])
def test_bad_annotation_prefixes_are_refused(prefix):
    with pytest.raises(ValueError, match="--kube-annotation-prefix"):
        Annotations.parse(prefix)


def test_nothing_is_served_before_the_first_list(api_server, kube):
    api_server.fail(100, 500, "nodes")
    cache = Cache()
    reflector = Reflector("nodes", kube.core().list_node, cache, settings=FAST).start()
    store = KubeLeaseStore(kube.core(), "node1", FLANNEL, cache, reflector, kube.url)
    try:
        eventually(lambda: reflector.error, WAIT, what="a failed list")
        with pytest.raises(KubeUnavailable, match=f"{kube.url} has not listed nodes: HTTP 500"):
            store.list_leases()
    finally:
        store.close()


def test_waits_for_the_node_then_its_pod_cidr_then_leases_it(api_server, leases):
    holder = manager(leases)
    assert leases.cache.wait_synced(WAIT)
    with pytest.raises(NodeNotReady, match="waiting for Node node1 to exist"):
        holder.acquire(ATTRS)
    api_server.create("nodes", node("node1"))
    eventually(lambda: leases.own_node() is not None, WAIT, what="node1 in the cache")
    with pytest.raises(NodeNotReady, match="node1 to get spec.podCIDR"):
        holder.acquire(ATTRS)
    assert api_server.count("nodes", "patch") == 0  # nothing published without a subnet
    api_server.patch_object("nodes", "node1", {"spec": {"podCIDR": "10.244.7.0/24",
                                                        "podCIDRs": ["10.244.7.0/24"]}})
    eventually(lambda: leases.own_node()["spec"].get("podCIDR"), WAIT, what="the podCIDR")
    lease = holder.acquire(ATTRS)
    assert lease.subnet == IPv4Network("10.244.7.0/24") and lease.attrs == ATTRS
    assert not holder.needs_renewal(lease) and holder.renew(lease) == lease


def test_publishes_flannels_annotations_with_one_status_patch(api_server, leases):
    api_server.create("nodes", node("node1", "10.244.7.0/24"))
    assert leases.cache.wait_synced(WAIT)
    eventually(lambda: leases.own_node() is not None, WAIT, what="node1")
    manager(leases).acquire(ATTRS)
    notes = api_server.get("nodes", "node1")["metadata"]["annotations"]
    assert notes == {
        "flannel.alpha.coreos.com/backend-data": '{"VNI":1,"VtepMAC":"0e:11:22:33:44:55"}',
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/public-ip": "198.18.1.11",
    }
    patches = [r for r in api_server.requests if r.verb == "patch"]
    assert len(patches) == 1
    # acquired again (a restart): the annotations are already right, nothing is written
    manager(leases).acquire(ATTRS)
    assert api_server.count("nodes", "patch") == 1
    # and the node's own lease is in the listing, as every node's
    found, _ = leases.list_leases()
    assert [(str(x.subnet), x.attrs) for x in found] == [("10.244.7.0/24", ATTRS)]


def test_a_patch_is_sent_as_strategic_merge_to_the_status_subresource(api_server, leases,
                                                                    monkeypatch):
    seen = []
    original = api_server.patch_object

    def spy(resource, name, patch, namespace="", content_type="", subresource=""):
        seen.append((content_type, subresource, patch))
        return original(resource, name, patch, namespace, content_type, subresource)

    monkeypatch.setattr(api_server, "patch_object", spy)
    api_server.create("nodes", node("node1", "10.244.7.0/24"))
    assert leases.cache.wait_synced(WAIT)
    eventually(lambda: leases.own_node() is not None, WAIT, what="node1")
    manager(leases).acquire(ATTRS)
    content_type, subresource, patch = seen[0]
    assert content_type == "application/strategic-merge-patch+json"
    assert subresource == "status"
    assert set(patch) == {"metadata"} and set(patch["metadata"]) == {"annotations"}


def test_a_flannel_node_is_a_peer(api_server, leases):
    api_server.create("nodes", flannel_node("fl1", "10.244.3.0/24", "198.18.1.20", MAC))
    hostgw = flannel_node("fl2", "10.244.4.0/24", "198.18.1.21", MAC)
    hostgw["metadata"]["annotations"].update({
        "flannel.alpha.coreos.com/backend-data": "null",
        "flannel.alpha.coreos.com/backend-type": "host-gw"})
    api_server.create("nodes", hostgw)
    api_server.create("nodes", node("plain", "10.244.5.0/24"))  # no flannel, no Tartan
    api_server.create("nodes", node("new"))  # no podCIDR yet
    eventually(lambda: len(leases.cache.items()) == 4, WAIT, what="four nodes")
    found, _ = leases.list_leases()
    assert [(str(x.subnet), x.attrs) for x in found] == [
        ("10.244.3.0/24", LeaseAttrs("198.18.1.20", "vxlan", {"VNI": 1, "VtepMAC": MAC})),
        ("10.244.4.0/24", LeaseAttrs("198.18.1.21", "host-gw", {})),
    ]


def test_changes_say_which_peers_came_and_went(api_server, leases):
    api_server.create("nodes", flannel_node("fl1", "10.244.3.0/24", "198.18.1.20", MAC))
    api_server.create("nodes", flannel_node("fl2", "10.244.4.0/24", "198.18.1.21", MAC))
    eventually(lambda: len(leases.list_leases()[0]) == 2, WAIT, what="two leases")
    _, revision = leases.list_leases()
    api_server.delete("nodes", "fl1")
    api_server.patch_object("nodes", "fl2", {"metadata": {"annotations": {
        "flannel.alpha.coreos.com/kube-subnet-manager": None}}})
    api_server.create("nodes", flannel_node("fl3", "10.244.5.0/24", "198.18.1.22", MAC))
    eventually(lambda: len(leases.cache.items()) == 2 and "fl3" in leases.cache.items(),
               WAIT, what="the three changes")
    eventually(lambda: len(leases.lease_changes(revision)) == 3, WAIT, what="three changes")
    changes = leases.lease_changes(revision)
    assert [str(x.subnet) for x in changes.changed] == ["10.244.5.0/24"]
    assert sorted(map(str, changes.deleted)) == ["10.244.3.0/24", "10.244.4.0/24"]
    assert leases.wait(changes.revision, 0.05) == changes.revision


def test_a_pod_cidr_outside_the_network_is_refused(api_server, leases):
    api_server.create("nodes", node("node1", "10.96.0.0/24"))
    assert leases.cache.wait_synced(WAIT)
    eventually(lambda: leases.own_node() is not None, WAIT, what="node1")
    with pytest.raises(PodCidrOutsideNetwork, match="10.96.0.0/24 is outside Network"):
        manager(leases).acquire(ATTRS)


def test_dual_stack_pod_cidrs_take_the_ipv4_one(api_server, leases):
    dual = node("node1")
    dual["spec"] = {"podCIDR": "fd00:10:244::/64",
                    "podCIDRs": ["fd00:10:244::/64", "10.244.9.0/24"]}
    api_server.create("nodes", dual)
    assert leases.cache.wait_synced(WAIT)
    eventually(lambda: leases.own_node() is not None, WAIT, what="node1")
    assert str(manager(leases).acquire(ATTRS).subnet) == "10.244.9.0/24"


def test_a_failed_patch_is_the_api_unavailable(api_server, leases):
    api_server.create("nodes", node("node1", "10.244.7.0/24"))
    assert leases.cache.wait_synced(WAIT)
    eventually(lambda: leases.own_node() is not None, WAIT, what="node1")
    api_server.fail(1, 500, "nodes", "patch")
    with pytest.raises(KubeUnavailable, match="PATCH of node node1's annotations"):
        manager(leases).acquire(ATTRS)
    assert json.loads(leases.keys.of(ATTRS)[FLANNEL.backend_data]) == ATTRS.backend_data


def test_a_patch_the_watch_has_not_shown_yet_keeps_the_own_lease(api_server, kube):
    """The Node watch lags (stalled here): acquire's PATCH is accepted but not seen within
    its wait. The own lease is still listed (the agent's full pass would take it for lost
    and PATCH again otherwise), an older event of the node does not delete it, acquire again
    sends nothing, and once the watch shows the PATCH the node speaks for itself."""
    events: list[tuple[str, dict]] = []
    settings = dataclasses.replace(FAST, stall_timeout=2.0)
    cache = Cache()
    reflector = Reflector("nodes", kube.core().list_node, cache, settings=settings).start()
    leases = KubeLeaseStore(kube.core(), "node1", FLANNEL, cache, reflector, kube.url,
                            report=lambda event, fields: events.append((event, fields)))
    try:
        api_server.create("nodes", node("node1", "10.244.7.0/24"))
        eventually(lambda: leases.own_node() is not None, WAIT, what="node1")
        eventually(lambda: api_server.open_watches("nodes") == 1, WAIT, what="a watch")
        api_server.stall("nodes")
        holder = KubeLeaseManager(leases, parse_net_conf(CONF), published_wait=0.2)
        lease = holder.acquire(ATTRS)
        assert lease.subnet == IPv4Network("10.244.7.0/24") and lease.attrs == ATTRS
        assert not leases._shows(FLANNEL.of(ATTRS))  # the cache has the old node still
        mine = [(str(x.subnet), x.attrs) for x in leases.list_leases()[0]]
        assert mine == [("10.244.7.0/24", ATTRS)]
        assert [event for event, _ in events] == ["kube.publish_unseen"]
        # an event of the node from before the PATCH, arriving late
        revision = cache.revision
        cache.apply("MODIFIED", node("node1", "10.244.7.0/24") | {"metadata": {
            "name": "node1", "labels": {"late": "1"}, "annotations": {}}})
        changes = leases.lease_changes(revision)
        assert changes.deleted == [] and [x.attrs for x in changes.changed] == [ATTRS]
        again = holder.acquire(ATTRS)
        assert (again.subnet, again.attrs) == (lease.subnet, lease.attrs)
        assert api_server.count("nodes", "patch") == 1  # not sent again
        # the watch comes back (after its stall timeout) with the PATCH
        eventually(lambda: leases._shows(FLANNEL.of(ATTRS)), WAIT, what="the PATCH seen")
        assert [(str(x.subnet), x.attrs) for x in leases.list_leases()[0]] == mine
        assert leases.published is None
    finally:
        leases.close()


def test_an_unseen_patch_is_trusted_for_a_while_only(api_server, kube):
    """Past PUBLISHED_TRUST the cache is believed again: a PATCH never seen makes the lease
    lost (and the agent acquires, so PATCHes, again), once, not at every pass."""
    settings = dataclasses.replace(FAST, stall_timeout=30.0)
    cache = Cache()
    reflector = Reflector("nodes", kube.core().list_node, cache, settings=settings).start()
    leases = KubeLeaseStore(kube.core(), "node1", FLANNEL, cache, reflector, kube.url)
    try:
        api_server.create("nodes", node("node1", "10.244.7.0/24"))
        eventually(lambda: leases.own_node() is not None, WAIT, what="node1")
        eventually(lambda: api_server.open_watches("nodes") == 1, WAIT, what="a watch")
        api_server.stall("nodes")
        KubeLeaseManager(leases, parse_net_conf(CONF), published_wait=0.1).acquire(ATTRS)
        assert len(leases.list_leases()[0]) == 1
        leases.published_until = 0.0  # the trust has run out
        assert leases.list_leases()[0] == []
        KubeLeaseManager(leases, parse_net_conf(CONF), published_wait=0.1).acquire(ATTRS)
        assert api_server.count("nodes", "patch") == 2
    finally:
        leases.close()
