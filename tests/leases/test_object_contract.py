"""The ObjectStore contract: every store (memory, SQLite, etcd) keeps objects the same way.

Objects have their own revision domain. In memory and SQLite that is a counter of their own;
etcd has one revision for the cluster, so there "a lease write does not wake wait_objects"
means only that the wait returns at its timeout, not earlier.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from lease_kit import StoreKit, attrs, net

from tartan.ipam.objects import (
    KINDS,
    NAMESPACES,
    NETWORK_POLICIES,
    POD_IPS,
    PODS,
    InvalidObjectKey,
)

from harness import HANG_GUARD, completes

NEVER = 3600.0  # a wait's timeout that no test sits out: only a wake returns it
QUIET = 0.4  # a wait that must sit out its timeout
TTL = 60.0

SAMPLES = {
    NAMESPACES: ("prod", {"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": "prod", "labels": {"team": "café ☕"}}}),
    PODS: ("prod/web-1", {"apiVersion": "v1", "kind": "Pod",
                          "metadata": {"namespace": "prod", "name": "web-1",
                                       "labels": {"app": "web"}},
                          "spec": {"containers": [{"name": "web", "ports": [
                              {"containerPort": 80, "protocol": "TCP"}]}]}}),
    NETWORK_POLICIES: ("prod/deny-all", {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "prod", "name": "deny-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    POD_IPS: ("prod/web-1", {"ips": ["10.244.1.5"], "node": "node-1", "containerID": "c0ffee"}),
}


def empty() -> dict[str, dict]:
    return {kind: {} for kind in KINDS}


def separate_counter(kit: StoreKit) -> bool:
    """Whether object and lease revisions are counted apart (not etcd's one revision)."""
    return kit.kind != "etcd"


def while_waiting(wait: Callable[[], int], write: Callable[[], object]) -> int:
    """What `wait` returned (run under the hang guard), with `write` done by another thread
    once the wait began."""
    began, failed = threading.Event(), []

    def writer() -> None:
        try:
            if began.wait(HANG_GUARD):
                write()
        except BaseException as exc:  # handed to the test's thread
            failed.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()

    def waiting() -> int:
        began.set()
        return wait()

    try:
        return completes(waiting)
    finally:
        thread.join(HANG_GUARD)
        if failed:
            raise failed[0]


def sits_out(call: Callable[[], int], timeout: float) -> int:
    """`call`, a wait of `timeout` seconds that must not return before it (load only adds,
    so there is no upper bound)."""
    started = time.monotonic()
    result = call()
    assert time.monotonic() - started >= timeout - 0.05, "the wait returned before its timeout"
    return result


# -- round trips ---------------------------------------------------------------------------


def test_an_empty_store_lists_every_kind(kit: StoreKit):
    objects, revision = kit.open().list_objects()
    assert objects == empty()
    assert isinstance(revision, int)


@pytest.mark.parametrize("kind", KINDS)
def test_put_replace_list_delete(kit: StoreKit, kind: str):
    store, other = kit.open(), kit.open()
    key, value = SAMPLES[kind]
    store.put_object(kind, key, value)
    assert other.list_objects()[0] == {**empty(), kind: {key: value}}
    replaced = {**value, "metadata": {"name": "replaced"}}
    other.put_object(kind, key, replaced)
    assert store.list_objects()[0][kind] == {key: replaced}
    assert store.delete_object(kind, key) is True
    assert other.list_objects()[0] == empty()
    assert other.delete_object(kind, key) is False


def test_every_kind_at_once_and_kinds_are_apart(kit: StoreKit):
    """A pod and its podips record share a key and stay two objects."""
    store, other = kit.open(), kit.open()
    for kind, (key, value) in SAMPLES.items():
        store.put_object(kind, key, value)
    store.put_object(PODS, "prod/web-2", {"kind": "Pod"})
    objects, _ = other.list_objects()
    assert objects == {kind: {key: value} for kind, (key, value) in SAMPLES.items()} | {
        PODS: {"prod/web-1": SAMPLES[PODS][1], "prod/web-2": {"kind": "Pod"}}}
    assert list(objects[PODS]) == ["prod/web-1", "prod/web-2"]
    assert other.delete_object(POD_IPS, "prod/web-1")
    assert store.list_objects()[0][PODS]["prod/web-1"] == SAMPLES[PODS][1]


def test_a_listing_is_the_callers_own(kit: StoreKit):
    store = kit.open()
    key, value = SAMPLES[PODS]
    store.put_object(PODS, key, value)
    store.list_objects()[0][PODS][key]["metadata"]["name"] = "changed by the caller"
    assert store.list_objects()[0][PODS][key] == value


@pytest.mark.parametrize(("kind", "key"), [
    ("services", "prod/web"),          # not a kind
    (PODS, "web-1"),                   # namespaced without a namespace
    (NETWORK_POLICIES, "prod/"),
    (NAMESPACES, "prod/web"),          # a namespace key with "/"
    (PODS, "Prod/web-1"),              # upper case
    (NAMESPACES, "Prod"),
    (NAMESPACES, ""),                  # empty
    (PODS, ""),
    (POD_IPS, "prod/web/1"),
    (PODS, "prod/-web"),
])
def test_keys_are_checked(kit: StoreKit, kind: str, key: str):
    store = kit.open()
    before = store.list_objects()
    with pytest.raises(InvalidObjectKey, match=f"{kind}"):
        store.put_object(kind, key, {"kind": "Pod"})
    with pytest.raises(InvalidObjectKey):
        store.delete_object(kind, key)
    assert store.list_objects() == before  # nothing written, the revision unchanged


@pytest.mark.parametrize(("value", "error"), [
    ({"x": object()}, "cannot be stored as JSON"),
    ({"x": float("nan")}, "cannot be stored as JSON"),
    ({"x": {1, 2}}, "cannot be stored as JSON"),
    (["not", "an", "object"], "must be a JSON object, not list"),
    ("text", "must be a JSON object, not str"),
])
def test_values_json_cannot_encode_are_refused(kit: StoreKit, value: object, error: str):
    store = kit.open()
    before = store.list_objects()
    with pytest.raises(ValueError, match=f"pods prod/web-1: the value {error}") as exc:
        store.put_object(PODS, "prod/web-1", value)  # type: ignore[arg-type]
    assert not isinstance(exc.value, InvalidObjectKey)
    assert store.list_objects() == before


# -- revisions -----------------------------------------------------------------------------


def test_the_revision_moves_on_every_write(kit: StoreKit):
    store, other = kit.open(), kit.open()
    key, value = SAMPLES[PODS]
    seen = [store.list_objects()[1]]
    for write in (lambda: store.put_object(PODS, key, value),
                  lambda: other.put_object(PODS, key, value),  # the same value again
                  lambda: store.put_object(PODS, key, {"kind": "Pod"}),
                  lambda: other.delete_object(PODS, key)):
        write()
        seen.append(other.list_objects()[1])
    assert seen == sorted(set(seen)), f"not rising on every write: {seen}"


def test_a_delete_of_nothing_writes_nothing(kit: StoreKit):
    store, other = kit.open(), kit.open()
    objects, revision = store.list_objects()
    assert other.delete_object(PODS, "prod/missing") is False
    if separate_counter(kit):
        assert store.list_objects() == (objects, revision)
    # In every store: it does not wake a waiter.
    assert sits_out(lambda: completes(lambda: store.wait_objects(revision, QUIET)),
                    QUIET) == revision


def test_one_revision_per_listing(kit: StoreKit):
    """While another client writes, each listing holds exactly the writes its revision
    counts (stores with a counter of their own; etcd's revision counts lease writes too)."""
    store, other = kit.open(), kit.open()
    _, base = store.list_objects()
    done = threading.Event()

    def writer() -> None:
        for n in range(40):
            other.put_object(PODS, f"prod/web-{n}", {"n": n})
        done.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    listings = []
    while not done.is_set():
        listings.append(store.list_objects())
    thread.join(HANG_GUARD)
    listings.append(store.list_objects())
    for objects, revision in listings:
        assert set(objects) == set(KINDS)
        pods = objects[PODS]
        assert sorted(pods.values(), key=lambda pod: pod["n"]) == [
            {"n": n} for n in range(len(pods))]  # the first writes, in order
        if separate_counter(kit):
            assert revision - base == len(pods)
    assert len(listings[-1][0][PODS]) == 40


# -- waiting -------------------------------------------------------------------------------


def test_wait_objects_wakes_on_a_write_from_another_client(kit: StoreKit):
    """The wait's own timeout is far beyond the hang guard: it returns only by waking."""
    store, other = kit.open(), kit.open()
    _, revision = store.list_objects()
    key, value = SAMPLES[NETWORK_POLICIES]
    woke = while_waiting(lambda: store.wait_objects(revision, NEVER),
                         lambda: other.put_object(NETWORK_POLICIES, key, value))
    assert woke != revision
    assert store.list_objects()[0][NETWORK_POLICIES] == {key: value}
    assert completes(lambda: store.wait_objects(woke, QUIET)) == woke  # that write is seen


def test_wait_objects_wakes_on_a_delete(kit: StoreKit):
    store, other = kit.open(), kit.open()
    store.put_object(NAMESPACES, "prod", {"kind": "Namespace"})
    _, revision = store.list_objects()
    woke = while_waiting(lambda: store.wait_objects(revision, NEVER),
                         lambda: other.delete_object(NAMESPACES, "prod"))
    assert woke != revision and store.list_objects()[0] == empty()


def test_wait_objects_returns_at_once_when_already_changed(kit: StoreKit):
    store, other = kit.open(), kit.open()
    _, revision = store.list_objects()
    other.put_object(PODS, "prod/web-1", {"kind": "Pod"})
    # Nothing changes after the call: with a wait that long, returning means "at once".
    assert completes(lambda: store.wait_objects(revision, NEVER)) != revision


def test_wait_objects_times_out_with_the_same_revision(kit: StoreKit):
    store = kit.open()
    store.put_object(PODS, "prod/web-1", {"kind": "Pod"})
    _, revision = store.list_objects()
    assert completes(lambda: store.wait_objects(revision, 0.3)) == revision


def test_a_lease_write_does_not_wake_wait_objects(kit: StoreKit):
    store, other = kit.open(), kit.open()
    _, revision = store.list_objects()
    other.create(net("10.244.7.0/24"), attrs(), TTL)  # before the wait, and during it
    returned = sits_out(lambda: while_waiting(
        lambda: store.wait_objects(revision, QUIET),
        lambda: other.create(net("10.244.8.0/24"), attrs(), TTL)), QUIET)
    assert returned == revision
    if separate_counter(kit):
        assert store.list_objects()[1] == revision


def test_an_object_write_does_not_wake_the_lease_wait(kit: StoreKit):
    store, other = kit.open(), kit.open()
    store.create(net("10.244.7.0/24"), attrs(), TTL)
    leases, revision = store.list_leases()
    other.put_object(PODS, "prod/web-1", {"kind": "Pod"})  # before the wait, and during it
    returned = sits_out(lambda: while_waiting(
        lambda: store.wait(revision, QUIET),
        lambda: other.put_object(POD_IPS, "prod/web-1", {"ips": ["10.244.7.2"]})), QUIET)
    if separate_counter(kit):
        assert returned == revision
        assert store.list_leases() == (leases, revision)
    else:
        assert store.list_leases()[0] == leases


# -- changes since a revision --------------------------------------------------------------


def changed(changes) -> dict[str, dict]:
    return {kind: objs for kind, objs in changes.changed.items() if objs}


def deleted(changes) -> dict[str, set]:
    return {kind: keys for kind, keys in changes.deleted.items() if keys}


def test_object_changes_tell_what_was_written_and_deleted_since(kit: StoreKit):
    store, other = kit.open(), kit.open()
    (pod_key, pod), (ns_key, ns) = SAMPLES[PODS], SAMPLES[NAMESPACES]
    store.put_object(PODS, pod_key, pod)
    store.put_object(NAMESPACES, ns_key, ns)
    _, start = other.list_objects()
    nothing = other.object_changes(start)
    assert nothing is not None and len(nothing) == 0 and nothing.revision == start
    relabelled = {**pod, "metadata": {**pod["metadata"], "labels": {"app": "db"}}}
    store.put_object(PODS, pod_key, relabelled)
    store.delete_object(NAMESPACES, ns_key)
    store.put_object(POD_IPS, "prod/web-2", {"ips": ["10.244.1.6"]})
    store.delete_object(POD_IPS, "prod/web-2")  # made and gone since: a deletion only
    changes = other.object_changes(start)
    assert changes is not None
    assert changed(changes) == {PODS: {pod_key: relabelled}}
    assert deleted(changes) == {NAMESPACES: {ns_key}, POD_IPS: {"prod/web-2"}}
    assert set(changes.changed) == set(changes.deleted) == set(KINDS)
    assert changes.revision == other.list_objects()[1]
    again = other.object_changes(changes.revision)
    assert again is not None and len(again) == 0


def test_an_object_deleted_then_written_again_is_a_change_only(kit: StoreKit):
    store = kit.open()
    key, value = SAMPLES[NETWORK_POLICIES]
    store.put_object(NETWORK_POLICIES, key, value)
    _, start = store.list_objects()
    store.delete_object(NETWORK_POLICIES, key)
    store.put_object(NETWORK_POLICIES, key, value)
    changes = store.object_changes(start)
    assert changes is not None
    assert changed(changes) == {NETWORK_POLICIES: {key: value}} and deleted(changes) == {}


def test_changes_applied_to_a_listing_give_the_next_listing(kit: StoreKit):
    """What a cache that lists once and then follows `object_changes` relies on."""
    store = kit.open()
    for index in range(6):
        store.put_object(PODS, f"prod/p{index}", {"n": index})
    cache, revision = store.list_objects()
    for index in range(0, 6, 2):
        store.delete_object(PODS, f"prod/p{index}")
    store.put_object(PODS, "prod/p1", {"n": 100})
    store.put_object(PODS, "prod/p9", {"n": 9})
    changes = store.object_changes(revision)
    assert changes is not None
    for kind in KINDS:
        cache[kind].update(changes.changed[kind])
        for key in changes.deleted[kind]:
            cache[kind].pop(key, None)
    assert cache == store.list_objects()[0]


def test_a_revision_the_store_never_had_lists_again(kit: StoreKit):
    store = kit.open()
    _, revision = store.list_objects()
    assert store.object_changes(revision + 1000) is None
    assert store.object_changes(-1) is None
