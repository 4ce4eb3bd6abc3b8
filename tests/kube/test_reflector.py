"""The list + watch loop (ipam/kube_watch.py) against the test API server, through the
official client: list then watch, 410 Gone -> relist, bookmarks, a stalled watch, 500s, the
backoff of watches that fail or end at once, connections never reused half read."""

from __future__ import annotations

import dataclasses
import http.client
import json
import time
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


def test_bookmarks_keep_an_idle_watch_alive(api_server, kube):
    """Nothing changes for longer than the stall timeout: the server's bookmarks are not a
    stall. A bookmark every 0.1 s against a stall timeout of 1.5 s: a loaded box that delays
    a few of them by a second still does not miss it."""
    api_server.bookmark_interval = 0.1
    settings = dataclasses.replace(FAST, stall_timeout=1.5)
    reflector = Reflector("nodes", kube.core().list_node, Cache(), settings=settings)
    try:
        reflector.start()
        assert reflector.cache.wait_synced(WAIT)
        started = time.monotonic()
        eventually(lambda: time.monotonic() - started > settings.stall_timeout + 0.5 and
                   reflector.counts["bookmarks"] >= 10, WAIT, what="bookmarks for 2 s")
        assert reflector.counts["stalls"] == 0 and reflector.counts["watches"] == 1
    finally:
        reflector.stop()


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
        # the backoff starts over once the watch delivers (a bookmark: every 0.2 s)
        eventually(lambda: reflector.backoff == FAST.backoff_initial, WAIT,
                   what="the backoff reset by the watch's first bookmark")
    finally:
        reflector.stop()
    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]
    assert api_server.count("nodes", "list", status=500) == 6
    assert names(reflector) == ["a"]
    unavailable = [fields for event, fields in events if event == "kube.unavailable"]
    assert len(unavailable) == 1  # said once while it lasts
    assert "HTTP 500" in unavailable[0]["error"]
    assert any(event == "kube.recovered" for event, _ in events)
    assert reflector.error == ""


def recording(kube, events, sleeps: list[float]) -> Reflector:
    """A Node reflector whose backoff sleeps are recorded (and not slept)."""
    return Reflector("nodes", kube.core().list_node, Cache(), settings=FAST,
                     report=lambda event, fields: events.append((event, fields)),
                     sleep=sleeps.append)


def test_a_watch_that_opens_then_sends_an_error_backs_off(api_server, kube, events):
    """The server answers the watch (200), then its first event is an ERROR 500: that is no
    answer, and the backoff grows as for an HTTP error."""
    sleeps: list[float] = []
    reflector = recording(kube, events, sleeps)
    api_server.break_watches(5, 500, "nodes")
    try:
        reflector.start()
        eventually(lambda: reflector.counts["bookmarks"] >= 1, WAIT, what="a working watch")
        eventually(lambda: reflector.backoff == FAST.backoff_initial, WAIT, what="a reset")
    finally:
        reflector.stop()
    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.4]
    assert reflector.counts["errors"] == 5 and reflector.counts["lists"] == 1
    unavailable = [fields for event, fields in events if event == "kube.unavailable"]
    assert len(unavailable) == 1 and "watch ERROR 500" in unavailable[0]["error"]
    assert [event for event, _ in events].count("kube.recovered") == 1
    assert reflector.error == ""


def test_a_watch_the_server_ends_at_once_backs_off(api_server, kube, events):
    """A watch that ends as soon as it opened, with nothing sent, is a failure: not a loop
    of watches without a pause."""
    sleeps: list[float] = []
    reflector = recording(kube, events, sleeps)
    api_server.break_watches(4, None, "nodes")
    try:
        reflector.start()
        eventually(lambda: reflector.counts["bookmarks"] >= 1, WAIT, what="a working watch")
    finally:
        reflector.stop()
    assert sleeps == [0.05, 0.1, 0.2, 0.4]
    assert reflector.counts["errors"] == 4 and reflector.counts["watches"] == 5
    unavailable = [fields for event, fields in events if event == "kube.unavailable"]
    assert len(unavailable) == 1 and "without an event" in unavailable[0]["error"]


def test_a_relist_that_meets_410_again_backs_off(api_server, kube, events):
    """The first 410 relists at once; a 410 again before a watch delivered anything waits
    the backoff, which grows."""
    sleeps: list[float] = []
    reflector = recording(kube, events, sleeps)
    api_server.break_watches(4, 410, "nodes")
    try:
        reflector.start()
        eventually(lambda: reflector.counts["bookmarks"] >= 1, WAIT, what="a working watch")
        eventually(lambda: reflector.backoff == FAST.backoff_initial, WAIT, what="a reset")
    finally:
        reflector.stop()
    assert sleeps == [0.05, 0.1, 0.2]
    assert reflector.counts["relists"] == 4 and reflector.counts["lists"] == 5
    # one 410 after the watch delivered again is one immediate relist again
    sleeps.clear()
    reflector = recording(kube, events, sleeps)
    try:
        reflector.start()
        eventually(lambda: reflector.counts["bookmarks"] >= 1, WAIT, what="a working watch")
        api_server.break_watches(1, 410, "nodes")
        api_server.stall("nodes")  # watched again after the stall timeout: 410
        eventually(lambda: reflector.counts["relists"] == 1, WAIT, what="a relist")
        eventually(lambda: reflector.counts["lists"] == 2, WAIT, what="listed again")
    finally:
        reflector.stop()
    assert sleeps == []


def test_a_watch_left_mid_stream_is_closed_not_put_back_half_read(api_server, kube):
    """A watch left on an ERROR event has the rest of its stream unread: its connection is
    closed, so that no later request of the pool reads it."""
    list_node = kube.core().list_node
    watches = []

    def recorded(**kwargs):
        response = list_node(**kwargs)
        if kwargs.get("watch"):
            watches.append(response)
        return response

    closed_when_left: list[bool] = []  # looked at in the backoff, before the next request

    def sleep(seconds: float) -> None:
        closed_when_left.append(watches[-1].closed)

    api_server.break_watches(1, 500, "nodes")
    reflector = Reflector("nodes", recorded, Cache(), settings=FAST, sleep=sleep)
    try:
        reflector.start()
        eventually(lambda: reflector.counts["bookmarks"] >= 1, WAIT, what="a working watch")
        api_server.create("nodes", node("a"))  # the pool still serves every request
        eventually(lambda: names(reflector) == ["a"], WAIT, what="a, watched")
    finally:
        reflector.stop()
    assert closed_when_left == [True] and reflector.counts["errors"] == 1


class FakeResponse:
    """A response of the client (`_preload_content=False`): what the reflector calls."""

    def __init__(self, data: bytes = b"", lines: tuple[bytes, ...] = ()) -> None:
        self.data, self.lines, self.calls = data, lines, []

    def stream(self, amt=None, decode_content=False):
        yield from self.lines

    def close(self) -> None:
        self.calls.append("close")

    def release_conn(self) -> None:
        self.calls.append("release_conn")


def test_a_watch_left_mid_stream_is_closed_and_one_read_to_its_end_is_put_back():
    """The reflector's own part (CPython's collection of the abandoned stream happens to
    close it too, which the test above cannot tell from this)."""
    bookmark = b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"6"}}}\n'
    error = b'{"type":"ERROR","object":{"code":500,"message":"injected"}}\n'
    listed = FakeResponse(json.dumps({"metadata": {"resourceVersion": "5"},
                                      "items": []}).encode())
    whole = FakeResponse(lines=(bookmark,))  # ends after its bookmark
    left = FakeResponse(lines=(error, bookmark))  # left at its ERROR, the bookmark unread
    responses = [listed, whole, left]
    reflector = Reflector("nodes", lambda **kwargs: responses.pop(0), Cache(), settings=FAST,
                          sleep=lambda seconds: reflector._stop.set())
    reflector.run()  # list, watch to the end, watch again: ERROR, the backoff stops it
    assert listed.calls == ["release_conn"] and whole.calls == ["release_conn"]
    assert left.calls == ["close", "release_conn"]
    assert reflector.counts == {**reflector.counts, "lists": 1, "watches": 2, "errors": 1}


def test_a_410_watch_stream_is_ended_as_the_api_server_ends_it(api_server):
    """The test server ends the chunked stream after the 410 ERROR (a client reading to the
    end is not left waiting)."""
    api_server.create("nodes", node("a"))
    api_server.compact()
    conn = http.client.HTTPConnection(api_server.host, api_server.port, timeout=3)
    try:
        conn.request("GET", "/api/v1/nodes?watch=1&resourceVersion=1",
                     headers={"Authorization": f"Bearer {api_server.token}"})
        response = conn.getresponse()
        body = response.read()  # to the last chunk: a timeout if the stream never ends
    finally:
        conn.close()
    events = [json.loads(line) for line in body.splitlines() if line.strip()]
    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]


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
