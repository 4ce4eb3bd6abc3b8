"""The list + watch loop (ipam/kube_watch.py) against the test API server, through the
official client: list then watch, 410 Gone -> relist, bookmarks, a stalled watch, 500s."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from kube_kit import FAST, node

from tartan.ipam.kube_watch import Cache, Reflector

from harness import eventually

WAIT = 5.0


@pytest.fixture
def events() -> list[tuple[str, dict]]:
    return []


@pytest.fixture
def nodes(kube, events) -> Iterator[Reflector]:
    reflector = Reflector("nodes", kube.core().list_node, Cache(), settings=FAST,
                          report=lambda event, fields: events.append((event, fields)))
    try:
        yield reflector
    finally:
        reflector.stop()


def names(reflector: Reflector) -> list[str]:
    return sorted(reflector.cache.items())


def test_lists_then_watches_from_the_lists_resource_version(api_server, nodes):
    api_server.create("nodes", node("a"))
    nodes.start()
    assert nodes.cache.wait_synced(WAIT)
    assert names(nodes) == ["a"]
    eventually(lambda: api_server.count("nodes", "watch") == 1, WAIT, what="one watch")
    watch = next(r for r in api_server.requests if r.verb == "watch")
    listed = next(r for r in api_server.requests if r.verb == "list")
    assert watch.query["resourceVersion"] == str(api_server.rv)
    assert watch.query["allowWatchBookmarks"] == "true"
    assert int(watch.query["timeoutSeconds"]) == FAST.watch_timeout
    assert listed.query.get("watch") is None
    api_server.create("nodes", node("b"))
    eventually(lambda: names(nodes) == ["a", "b"], WAIT, what="b from the watch")
    assert api_server.count("nodes", "list") == 1


def test_events_are_applied_in_order_and_deletes_remembered(api_server, nodes):
    nodes.start()
    assert nodes.cache.wait_synced(WAIT)
    start = nodes.cache.revision
    api_server.create("nodes", node("a", "10.244.1.0/24"))
    api_server.patch_object("nodes", "a", {"metadata": {"labels": {"x": "1"}}})
    api_server.patch_object("nodes", "a", {"metadata": {"labels": {"x": "2"}}})
    api_server.create("nodes", node("b"))
    api_server.delete("nodes", "b")
    final = str(api_server.rv)
    eventually(lambda: nodes.resource_version == final, WAIT, what="every event")
    assert names(nodes) == ["a"]
    assert nodes.cache.get("a")["metadata"]["labels"] == {"x": "2"}
    changes = nodes.cache.changes(start)
    assert set(changes.changed) == {"a"} and set(changes.deleted) == {"b"}
    assert nodes.cache.changes(changes.revision).changed == {}
    assert nodes.counts["events"] == 5 and nodes.counts["lists"] == 1


def test_410_gone_relists_and_the_cache_follows_the_new_list(api_server, nodes, events):
    api_server.create("nodes", node("a"))
    api_server.create("nodes", node("b"))
    nodes.start()
    assert nodes.cache.wait_synced(WAIT)
    eventually(lambda: api_server.open_watches("nodes") == 1, WAIT, what="a watch")
    api_server.stall("nodes")  # the watch misses what follows ...
    api_server.delete("nodes", "b")
    api_server.create("nodes", node("c"))
    api_server.compact()  # ... and the server forgets it: watching again gets 410
    eventually(lambda: nodes.counts["relists"] == 1, WAIT, what="a relist after 410")
    eventually(lambda: names(nodes) == ["a", "c"], WAIT, what="the cache relisted")
    assert api_server.count("nodes", "list") == 2
    assert [fields["reason"] for event, fields in events if event == "kube.relist"] == [
        "410 Gone"]


def test_410_as_an_http_status_relists_too(api_server, nodes):
    api_server.gone_as_http = True
    nodes.start()
    assert nodes.cache.wait_synced(WAIT)
    eventually(lambda: api_server.open_watches("nodes") == 1, WAIT, what="a watch")
    api_server.stall("nodes")
    api_server.create("nodes", node("a"))
    api_server.compact()
    eventually(lambda: names(nodes) == ["a"], WAIT, what="a, relisted")
    assert nodes.counts["relists"] == 1
    assert api_server.count("nodes", "watch", status=410) == 1


def test_a_bookmark_moves_the_resource_version_on(api_server, nodes):
    """Writes to other resources move the server's resourceVersion; a bookmark brings the
    watcher there, so a watch opened again after compaction needs no relist."""
    nodes.start()
    assert nodes.cache.wait_synced(WAIT)
    listed = nodes.resource_version
    for i in range(3):
        api_server.create("namespaces", {"metadata": {"name": f"ns{i}"}})
    current = str(api_server.rv)
    api_server.bookmark("nodes")
    eventually(lambda: nodes.resource_version == current, WAIT, what="the bookmark's version")
    assert current != listed and nodes.counts["bookmarks"] >= 1
    assert nodes.counts["events"] == 0
    api_server.compact()
    watches = api_server.count("nodes", "watch")
    api_server.stall("nodes")  # the watch is taken for dead and opened again ...
    eventually(lambda: api_server.count("nodes", "watch") > watches, WAIT, what="a new watch")
    api_server.create("nodes", node("a"))
    eventually(lambda: names(nodes) == ["a"], WAIT, what="a, watched")
    assert nodes.counts["relists"] == 0  # ... from the bookmark's version: no 410


def test_a_stalled_watch_is_noticed_and_restarted(api_server, nodes):
    nodes.start()
    assert nodes.cache.wait_synced(WAIT)
    eventually(lambda: api_server.open_watches("nodes") == 1, WAIT, what="a watch")
    assert api_server.stall("nodes") == 1
    api_server.create("nodes", node("late"))
    eventually(lambda: names(nodes) == ["late"], WAIT, what="the event after the stall")
    assert nodes.counts["stalls"] >= 1 and nodes.counts["relists"] == 0
    assert api_server.count("nodes", "list") == 1  # watched again, not listed again


def test_bookmarks_keep_an_idle_watch_alive(api_server, nodes):
    """Nothing changes for several stall timeouts: the server's bookmarks (every 0.2 s here)
    are not a stall."""
    nodes.start()
    assert nodes.cache.wait_synced(WAIT)
    eventually(lambda: nodes.counts["bookmarks"] >= 8, WAIT, what="bookmarks for 1.6 s")
    assert nodes.counts["stalls"] == 0 and nodes.counts["watches"] == 1


def test_errors_back_off_exponentially_up_to_the_cap(api_server, kube, events):
    sleeps: list[float] = []
    reflector = Reflector("nodes", kube.core().list_node, Cache(), settings=FAST,
                          report=lambda event, fields: events.append((event, fields)),
                          sleep=sleeps.append)
    api_server.fail(6, 500, "nodes")
    api_server.create("nodes", node("a"))
    try:
        reflector.start()
        assert reflector.cache.wait_synced(WAIT)
    finally:
        reflector.stop()
    assert sleeps[:6] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]
    assert api_server.count("nodes", "list", status=500) == 6
    assert names(reflector) == ["a"]
    unavailable = [fields for event, fields in events if event == "kube.unavailable"]
    assert len(unavailable) == 1  # said once while it lasts
    assert "HTTP 500" in unavailable[0]["error"]
    assert any(event == "kube.recovered" for event, _ in events)
    assert reflector.error == "" and reflector.backoff == FAST.backoff_initial


def test_a_failing_watch_backs_off_and_keeps_the_cache(api_server, nodes):
    api_server.create("nodes", node("a"))
    nodes.start()
    assert nodes.cache.wait_synced(WAIT)
    eventually(lambda: api_server.open_watches("nodes") == 1, WAIT, what="a watch")
    api_server.fail(3, 503, "nodes", "watch")
    api_server.stall("nodes")
    eventually(lambda: nodes.counts["errors"] == 3, WAIT, what="three failed watches")
    assert names(nodes) == ["a"]  # the cache stays as it was
    api_server.create("nodes", node("b"))
    eventually(lambda: names(nodes) == ["a", "b"], WAIT, what="b once the watch works")
    assert nodes.error == ""


def test_an_unreachable_api_is_retried_and_said(events):
    from tartan.ipam.kube_client import connect

    api = connect(None, "http://127.0.0.1:9")
    reflector = Reflector("nodes", api.core().list_node, Cache(), settings=FAST,
                          report=lambda event, fields: events.append((event, fields)))
    try:
        reflector.start()
        eventually(lambda: reflector.counts["errors"] >= 2, WAIT, what="retries")
        state = reflector.state()
        assert state["synced"] is False and "Connection refused" in str(state["error"])
    finally:
        reflector.stop()
        api.close()


def test_a_long_list_comes_in_pages_of_one_snapshot(api_server, kube):
    for i in range(7):
        api_server.create("nodes", node(f"n{i}"))
    listed_at = str(api_server.rv)
    settings = dataclasses.replace(FAST, page_size=3)
    reflector = Reflector("nodes", kube.core().list_node, Cache(), settings=settings)
    try:
        reflector.start()
        assert reflector.cache.wait_synced(WAIT)
    finally:
        reflector.stop()
    assert names(reflector) == [f"n{i}" for i in range(7)]
    pages = [r for r in api_server.requests if r.verb == "list"]
    assert [r.query["limit"] for r in pages] == ["3", "3", "3"]
    assert "continue" not in pages[0].query and all("continue" in r.query for r in pages[1:])
    assert reflector.resource_version == listed_at and reflector.counts["lists"] == 1


def test_an_expired_continue_lists_again_from_the_start(api_server, kube, monkeypatch):
    for i in range(5):
        api_server.create("nodes", node(f"n{i}"))
    original = api_server._list
    expired = []

    def forgetful(route, query):
        if query.get("continue") and not expired:
            expired.append(True)
            api_server.expire_continues()
        return original(route, query)

    monkeypatch.setattr(api_server, "_list", forgetful)
    settings = dataclasses.replace(FAST, page_size=2)
    reflector = Reflector("nodes", kube.core().list_node, Cache(), settings=settings)
    try:
        reflector.start()
        assert reflector.cache.wait_synced(WAIT)
    finally:
        reflector.stop()
    assert names(reflector) == [f"n{i}" for i in range(5)]
    assert reflector.counts["relists"] == 1
    assert api_server.count("nodes", "list", status=410) == 1


def test_the_cache_forgets_old_deletions_and_then_cannot_say_what_changed(monkeypatch):
    from tartan.ipam import kube_watch

    monkeypatch.setattr(kube_watch, "TOMBSTONES", 2)
    cache = Cache()
    cache.replace([node(f"n{i}") | {"metadata": {"name": f"n{i}", "resourceVersion": str(i)}}
                   for i in range(4)])
    start = cache.revision
    for i in range(3):
        cache.apply("DELETED", {"metadata": {"name": f"n{i}"}})
    assert cache.changes(start) is None  # the oldest deletion is forgotten: list again
    recent = cache.changes(cache.revision - 1)
    assert recent is not None and set(recent.deleted) == {"n2"}
    # a relist that changes nothing is no change
    before = cache.revision
    assert cache.replace([{"metadata": {"name": "n3", "resourceVersion": "3"}}]) == 0
    assert cache.revision == before
