"""List + watch of one Kubernetes resource (a "reflector", as client-go calls it) feeding an
in-memory cache that says what changed.

The loop, per resource:
- list (in pages of `page_size`), and replace the cache with the items (the difference is
  recorded as changes);
- watch from the list's resourceVersion (`allowWatchBookmarks`, `timeoutSeconds`): ADDED,
  MODIFIED and DELETED are applied in order, a BOOKMARK only moves the resourceVersion on;
- a watch the server ends (its timeout) is opened again from the last resourceVersion;
- `410 Gone` (an ERROR event with code 410, or the HTTP status) means the server no longer
  keeps that resourceVersion: list again at once; but a 410 again before the watch after
  that list delivered anything is a server that cannot be followed now, and waits the
  backoff first;
- a watch that sends nothing, not even a bookmark, for `stall_timeout` seconds is dead (the
  client's read timeout notices it): it is opened again at once;
- a watch that ends within `short_watch` seconds of opening, having sent nothing (a proxy,
  or a server, that closes it at once), failed;
- a failure (that one, an HTTP error, an ERROR event, a refused connection) is retried after
  a backoff that starts at `backoff_initial`, doubles up to `backoff_max`, and starts over
  only once a watch delivers again (an event or a bookmark): a server that accepts a request
  and then fails it has not answered.
The cache keeps what it last had while the API is away. A watch left before its end (410,
an ERROR, a stall, a stop) has its connection closed, never handed back half read.

Objects are kept as the API's JSON (dicts), never as the client's models: nothing is lost
and nothing is converted twice. The caches of one consumer may share one `Notifier`, so that
one wait covers every resource it follows.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

Report = Callable[[str, dict[str, object]], None]  # event, fields (the agent's log)
ListFunc = Callable[..., Any]  # a list function of the client: CoreV1Api.list_node, ...
TOMBSTONES = 10_000  # deleted keys remembered for `changes`; older ones make it answer None


def object_key(obj: Mapping[str, Any]) -> str:
    """`namespace/name`, or `name` for cluster-scoped objects."""
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name") or "", meta.get("namespace") or ""
    return f"{namespace}/{name}" if namespace else name


def resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Notifier:
    """A revision counter and its condition, shared by the caches of one consumer."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.revision = 0

    def bump(self) -> int:
        """The next revision (the caller holds `cond`); wakes every waiter."""
        self.revision += 1
        self.cond.notify_all()
        return self.revision

    def wait(self, revision: int, timeout: float) -> int:
        with self.cond:
            self.cond.wait_for(lambda: self.revision != revision, timeout)
            return self.revision


@dataclass(frozen=True)
class CacheChanges:
    """What changed after a revision: objects written (as they are now) and objects deleted
    (as they were last seen), by key; `revision` is the one they bring the caller to."""

    revision: int
    changed: dict[str, dict[str, Any]]
    deleted: dict[str, dict[str, Any]]


class Cache:
    """The objects of one resource by key, with the revision of each key's last change."""

    def __init__(self, notifier: Notifier | None = None) -> None:
        self.notifier = notifier or Notifier()
        self._objects: dict[str, dict[str, Any]] = {}
        self._written: dict[str, int] = {}
        self._gone: dict[str, tuple[int, dict[str, Any]]] = {}
        self._horizon = 0  # changes after a revision below this are no longer known
        self.synced = False  # listed at least once

    @property
    def revision(self) -> int:
        return self.notifier.revision

    def get(self, key: str) -> dict[str, Any] | None:
        with self.notifier.cond:
            return self._objects.get(key)

    def items(self) -> dict[str, dict[str, Any]]:
        with self.notifier.cond:
            return dict(self._objects)

    def replace(self, objects: list[dict[str, Any]]) -> int:
        """The state of a list; returns how many keys it changed."""
        fresh = {object_key(obj): obj for obj in objects}
        with self.notifier.cond:
            changed = 0
            for key in [k for k in self._objects if k not in fresh]:
                self._delete(key)
                changed += 1
            for key, obj in fresh.items():
                old = self._objects.get(key)
                if old is None or resource_version(old) != resource_version(obj) or (
                        not resource_version(obj) and old != obj):
                    self._put(key, obj)
                    changed += 1
            self.synced = True
            self.notifier.cond.notify_all()
            return changed

    def apply(self, kind: str, obj: dict[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED)."""
        key = object_key(obj)
        with self.notifier.cond:
            if kind == "DELETED":
                if key in self._objects:
                    self._delete(key, obj)
            else:
                self._put(key, obj)

    def changes(self, since: int) -> CacheChanges | None:
        """What changed after `since` (a revision this cache's notifier reported); None when
        that is older than what the cache remembers of deletions (list it all again)."""
        with self.notifier.cond:
            if since < self._horizon or since > self.notifier.revision:
                return None
            changed = {key: self._objects[key] for key, at in self._written.items()
                       if at > since}
            deleted = {key: obj for key, (at, obj) in self._gone.items() if at > since}
            return CacheChanges(self.notifier.revision, changed, deleted)

    def wait_synced(self, timeout: float) -> bool:
        with self.notifier.cond:
            return self.notifier.cond.wait_for(lambda: self.synced, timeout)

    def _put(self, key: str, obj: dict[str, Any]) -> None:
        self._objects[key] = obj
        self._written[key] = self.notifier.bump()
        self._gone.pop(key, None)

    def _delete(self, key: str, last: dict[str, Any] | None = None) -> None:
        old = self._objects.pop(key)
        self._written.pop(key, None)
        self._gone[key] = (self.notifier.bump(), last or old)
        if len(self._gone) > TOMBSTONES:
            oldest = min(self._gone, key=lambda k: self._gone[k][0])
            self._horizon = self._gone.pop(oldest)[0]


@dataclass(frozen=True)
class WatchSettings:
    """The loop's timings (tests pass short ones)."""

    watch_timeout: int = 300  # timeoutSeconds: the server ends a watch after this long
    # no byte (event or bookmark) for this long and the watch is taken for dead; the API
    # server sends a bookmark about once a minute to watchers that allow them
    stall_timeout: float = 90.0
    connect_timeout: float = 10.0
    list_timeout: float = 60.0  # read timeout of a list
    page_size: int = 500  # objects per list request (`limit`; the rest by `continue`)
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # a watch that ends sooner than this after it opened, having sent nothing, failed
    short_watch: float = 1.0


class Gone(Exception):
    """410: the resourceVersion is older than what the server keeps."""


class WatchFailed(Exception):
    """An ERROR event other than 410, or a response that is not an event stream."""


class Reflector:
    """List, then watch, forever (see the module's docstring), into `cache`."""

    def __init__(self, resource: str, list_func: ListFunc, cache: Cache, *,
                 settings: WatchSettings | None = None, report: Report | None = None,
                 sleep: Callable[[float], Any] | None = None) -> None:
        self.resource, self.list_func, self.cache = resource, list_func, cache
        self.settings = settings or WatchSettings()
        self.report = report or (lambda event, fields: None)
        self.resource_version = ""
        self.backoff = self.settings.backoff_initial
        self.counts = {"lists": 0, "watches": 0, "events": 0, "bookmarks": 0, "relists": 0,
                       "stalls": 0, "errors": 0}
        self.error = ""  # the failure being retried, "" while the API answers
        self.retry_at = 0.0
        self._gone_again = False  # a 410 came, and no watch delivered anything since
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._response: Any = None
        self.thread: threading.Thread | None = None

    # -- running -----------------------------------------------------------------------

    def start(self) -> Reflector:
        self.thread = threading.Thread(target=self.run, name=f"kube-{self.resource}",
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        _shutdown(self._response)
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=5)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.resource_version:
                    self._list()
                self._watch()
            except Exception as exc:
                if self._stop.is_set():
                    return
                if isinstance(exc, Gone) or is_gone(exc):
                    if self._gone_again:  # the relist's own watch (or list) got 410 too
                        self._pause()
                    self._gone_again = True
                    self._relist()
                elif isinstance(exc, _Stalled):
                    self.counts["stalls"] += 1
                    self.report("kube.watch_stalled", {
                        "resource": self.resource, "resourceVersion": self.resource_version,
                        "seconds": self.settings.stall_timeout, "note": "watching again"})
                else:
                    self._failed(exc)

    def _relist(self) -> None:
        self.counts["relists"] += 1
        self.report("kube.relist", {"resource": self.resource, "reason": "410 Gone",
                                    "resourceVersion": self.resource_version})
        self.resource_version = ""

    def _failed(self, exc: Exception) -> None:
        text = describe_error(exc)
        self.counts["errors"] += 1
        if text != self.error:
            self.report("kube.unavailable", {"resource": self.resource, "error": text,
                                             "retry_in": self.backoff})
        self.error = text
        self._pause()

    def _pause(self) -> None:
        """Wait the backoff (until `stop`), and double it for the next time."""
        self.retry_at = time.monotonic() + self.backoff
        self._sleep(self.backoff)
        self.backoff = min(self.backoff * 2, self.settings.backoff_max)

    def _answered(self) -> None:
        """A list came back: the API answers (the backoff stays until a watch delivers)."""
        if self.error:
            self.report("kube.recovered", {"resource": self.resource})
        self.error = ""

    def _delivered(self) -> None:
        """A watch's first event or bookmark: the server can be followed again."""
        self._answered()
        self.backoff, self._gone_again = self.settings.backoff_initial, False

    def _list(self) -> None:
        """Every object, a page at a time (one consistent snapshot: the server answers the
        pages after the first at the first's resourceVersion, or 410 once it cannot)."""
        timeout = (self.settings.connect_timeout, self.settings.list_timeout)
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            page = {"_continue": token} if token else {}
            response = self.list_func(limit=self.settings.page_size, _preload_content=False,
                                      _request_timeout=timeout, **page)
            try:
                doc = json.loads(response.data)
            finally:
                response.release_conn()
            self._answered()
            items += doc.get("items") or []
            token = (doc.get("metadata") or {}).get("continue") or ""
            if not token:
                break
        self.counts["lists"] += 1
        changed = self.cache.replace(items)
        self.resource_version = resource_version(doc)
        self.report("kube.listed", {"resource": self.resource, "objects": len(items),
                                    "changed": changed,
                                    "resourceVersion": self.resource_version})

    def _watch(self) -> None:
        timeout = (self.settings.connect_timeout, self.settings.stall_timeout)
        response = self.list_func(
            watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
            timeout_seconds=self.settings.watch_timeout, _preload_content=False,
            _request_timeout=timeout)
        self._response = response
        self.counts["watches"] += 1
        opened, delivered, ended = time.monotonic(), False, False
        try:
            for line in _lines(response):
                if self._stop.is_set():
                    return
                self._event(json.loads(line))
                if not delivered:
                    delivered = True
                    self._delivered()
            ended = True
        except Exception as exc:
            if _is_timeout(exc):
                raise _Stalled() from None
            raise
        finally:
            self._response = None
            if not ended:  # left mid-stream: the rest of it must never reach another request
                with contextlib.suppress(OSError):
                    response.close()
            response.release_conn()  # (a closed connection is opened again when reused)
        lasted = time.monotonic() - opened
        if not delivered and lasted < self.settings.short_watch:
            raise WatchFailed(f"the watch ended after {lasted:.1f} s without an event")

    def _event(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise Gone(obj.get("message") or "resourceVersion too old")
            raise WatchFailed(f"watch ERROR {code}: {obj.get('message') or obj}")
        if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            raise WatchFailed(f"unexpected watch event type {kind!r}")
        if kind == "BOOKMARK":
            self.counts["bookmarks"] += 1
        else:
            self.counts["events"] += 1
            self.cache.apply(kind, obj)
        self.resource_version = resource_version(obj) or self.resource_version

    # -- reporting ---------------------------------------------------------------------

    def state(self) -> dict[str, object]:
        return {"resource": self.resource, "synced": self.cache.synced,
                "resourceVersion": self.resource_version, **self.counts,
                "error": self.error or None,
                "retryIn": round(max(0.0, self.retry_at - time.monotonic()), 1)
                if self.error else None}


class _Stalled(Exception):
    """Nothing came in for `stall_timeout` seconds."""


def describe_error(exc: BaseException) -> str:
    """One line for a failed request (the client's ApiException carries a whole body)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        reason = getattr(exc, "reason", "") or ""
        body = getattr(exc, "body", None)
        message = ""
        if body:
            try:
                message = json.loads(body).get("message") or ""
            except (ValueError, AttributeError):
                message = ""
        return f"HTTP {status} {reason}{': ' + message if message else ''}".strip()
    reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError wraps the real one
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return f"{type(exc).__name__}: {exc}"


def is_gone(exc: BaseException) -> bool:
    return getattr(exc, "status", None) == 410


def _is_timeout(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TimeoutError | socket.timeout) or "ReadTimeout" in type(
                current).__name__:
            return True
        current = current.__cause__ or current.__context__ or (
            current.args[1] if len(current.args) > 1 and isinstance(current.args[1],
                                                                    BaseException) else None)
    return False


def _lines(response: Any) -> Iterator[str]:
    """The newline-delimited JSON of a watch, line by line, as the bytes arrive."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line.decode("utf-8", errors="replace")
    if buffer.strip():
        yield buffer.decode("utf-8", errors="replace")


def _shutdown(response: Any) -> None:
    """Unblock a thread reading `response` (as the client's Watch.stop does)."""
    if response is None:
        return
    try:
        sock = getattr(getattr(response, "connection", None), "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
