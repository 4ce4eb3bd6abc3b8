"""A Kubernetes API server for tests: the list and watch protocol of the few resources Tartan
uses, over HTTP, in this process (no real API server can be installed here).

Resources: core/v1 nodes (get, list, watch, PATCH of the node and of its status subresource,
strategic-merge, merge or JSON patch), namespaces, pods, and networking.k8s.io/v1
networkpolicies (list and watch; POST and DELETE too). One resourceVersion counter for
everything, as etcd gives the real server. Watches (`?watch=1&resourceVersion=N&
allowWatchBookmarks=true&timeoutSeconds=T`) stream newline-delimited JSON events over chunked
HTTP: ADDED, MODIFIED, DELETED, BOOKMARK and ERROR (code 410 when N is older than the events
the server keeps; `compact()` forgets them all; `gone_as_http` answers HTTP 410 instead).

For tests: `stall(resource)` freezes the open watches (connection open, nothing sent, not even
bookmarks), `fail(n, status)` answers the next n requests with an error, `break_watches(n,
code)` opens the next n watches and sends them an ERROR event with `code` at once (code None:
ends them at once, with nothing sent), `bookmark()` sends a bookmark now (or every
`bookmark_interval` seconds), `requests` records every request.
Lists are paged when asked (`limit`, `continue`; `expire_continues()` makes the next page
answer 410).
Objects are written with `create`, `update`, `patch_object` and `delete` from the test itself.
The official client talks to it through the kubeconfig `write_kubeconfig` writes (bearer token).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Resource:
    name: str
    prefix: str  # /api/v1 or /apis/<group>/<version>
    namespaced: bool
    kind: str
    api_version: str


RESOURCES = {r.name: r for r in (
    Resource("nodes", "/api/v1", False, "Node", "v1"),
    Resource("namespaces", "/api/v1", False, "Namespace", "v1"),
    Resource("pods", "/api/v1", True, "Pod", "v1"),
    Resource("networkpolicies", "/apis/networking.k8s.io/v1", True, "NetworkPolicy",
             "networking.k8s.io/v1"),
)}


@dataclass(frozen=True)
class Request:
    method: str
    resource: str
    verb: str  # list, watch, get, patch, create, delete
    query: dict[str, str]
    status: int = 0


@dataclass
class _Watcher:
    resource: str
    namespace: str
    stalled: bool = False
    bookmark_now: bool = False


@dataclass
class _Failure:
    remaining: int
    status: int
    resource: str | None
    verb: str | None


@dataclass
class _Route:
    resource: Resource
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 (strategic merge is the same for the maps Tartan patches)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(target: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902's add, replace and remove."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part,
                                                                                          {})
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), op["value"])
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise ApiError(422, "Invalid", f"JSON patch op {op['op']!r} is not supported here")
    return doc


class KubeApiServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, netns: str | None = None,
                 token: str = "tartan-test-token", keep_events: int = 10_000,
                 bookmark_interval: float | None = None) -> None:
        self.host, self.port, self.netns, self.token = host, port, netns, token
        self.keep_events, self.bookmark_interval = keep_events, bookmark_interval
        self.cond = threading.Condition()
        self.rv = 100
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            name: {} for name in RESOURCES}
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, resource, type, obj
        self.oldest = self.rv  # a watch from below this resourceVersion gets 410
        self.gone_as_http = False
        self.requests: list[Request] = []
        self._failures: list[_Failure] = []
        self._broken: list[_Failure] = []  # the watches break_watches breaks (status: code)
        self._watchers: list[_Watcher] = []
        self._continues: dict[str, tuple[int, list[dict[str, Any]]]] = {}  # token -> rest
        self._closing = False
        self._server: ThreadingHTTPServer | None = None

    # -- life --------------------------------------------------------------------------

    def start(self) -> KubeApiServer:
        handler = _handler(self)
        if self.netns:
            from tartan.kernel.netns import entered

            with entered(f"/run/netns/{self.netns}"):
                self._server = ThreadingHTTPServer((self.host, self.port), handler)
        else:
            self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="kube-api", daemon=True).start()
        return self

    def stop(self) -> None:
        with self.cond:
            self._closing = True
            self.cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def write_kubeconfig(self, path: Path, token: str | None = None) -> Path:
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "tartand", "user": {"token": token or self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "tartand"}}],
        }
        path.write_text(json.dumps(doc))
        return path

    # -- objects, as the test writes them ----------------------------------------------

    def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.cond:
            res = RESOURCES[resource]
            stored = copy.deepcopy(obj)
            meta = stored.setdefault("metadata", {})
            if res.namespaced:
                meta.setdefault("namespace", "default")
            key = self._key(res, meta)
            if key in self.objects[resource]:
                raise ApiError(409, "AlreadyExists", f"{resource} {meta['name']} already exists")
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()))
            stored.setdefault("kind", res.kind)
            stored.setdefault("apiVersion", res.api_version)
            return self._write(resource, key, stored, "ADDED")

    def update(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace an object (or create it)."""
        with self.cond:
            res = RESOURCES[resource]
            meta = obj.get("metadata") or {}
            key = self._key(res, {**meta, "namespace": meta.get("namespace") or (
                "default" if res.namespaced else "")})
            old = self.objects[resource].get(key)
            if old is None:
                return self.create(resource, obj)
            stored = copy.deepcopy(obj)
            stored["metadata"] = {**old["metadata"], **stored.get("metadata", {})}
            return self._write(resource, key, stored, "MODIFIED")

    def patch_object(self, resource: str, name: str, patch: Any, namespace: str = "",
                     content_type: str = "application/merge-patch+json",
                     subresource: str = "") -> dict[str, Any]:
        with self.cond:
            key = (namespace, name)
            old = self.objects[resource].get(key)
            if old is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            if "json-patch" in content_type:
                new = json_patch(old, patch)
            else:
                new = merge_patch(old, patch)
            if subresource == "status":  # the status subresource does not change the spec
                new["spec"] = copy.deepcopy(old.get("spec"))
            elif "status" in old:  # and the main resource does not change the status
                new["status"] = copy.deepcopy(old["status"])
            new["metadata"] = {**new.get("metadata", {}), "name": name,
                               "uid": old["metadata"]["uid"]}
            return self._write(resource, key, new, "MODIFIED")

    def delete(self, resource: str, name: str, namespace: str = "") -> dict[str, Any]:
        with self.cond:
            old = self.objects[resource].pop((namespace, name), None)
            if old is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            self.rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._record(resource, "DELETED", gone)
            return gone

    def get(self, resource: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        with self.cond:
            obj = self.objects[resource].get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    # -- faults, for tests -------------------------------------------------------------

    def compact(self) -> int:
        """Forget every event so far: a watch from an older resourceVersion gets 410."""
        with self.cond:
            self.events.clear()
            self.oldest = self.rv
            return self.rv

    def stall(self, resource: str | None = None) -> int:
        """Freeze the watches open now (of `resource`, or all); how many."""
        with self.cond:
            frozen = [w for w in self._watchers if resource in (None, w.resource)]
            for watcher in frozen:
                watcher.stalled = True
            return len(frozen)

    def fail(self, count: int, status: int = 500, resource: str | None = None,
             verb: str | None = None) -> None:
        with self.cond:
            self._failures.append(_Failure(count, status, resource, verb))

    def break_watches(self, count: int, code: int | None = 500,
                      resource: str | None = None) -> None:
        """The next `count` watches (of `resource`, or any) open, then get an ERROR event
        with `code` at once, or (code None) end at once without a byte of content."""
        with self.cond:
            self._broken.append(_Failure(count, code or 0, resource, "watch"))

    def heal(self) -> None:
        """Forget the failures `fail` and `break_watches` asked for that have not happened
        yet."""
        with self.cond:
            self._failures.clear()
            self._broken.clear()

    def bookmark(self, resource: str | None = None) -> None:
        with self.cond:
            for watcher in self._watchers:
                if resource in (None, watcher.resource):
                    watcher.bookmark_now = True
            self.cond.notify_all()

    def open_watches(self, resource: str | None = None) -> int:
        with self.cond:
            return sum(1 for w in self._watchers
                       if resource in (None, w.resource) and not w.stalled)

    def count(self, resource: str | None = None, verb: str | None = None,
              status: int | None = None) -> int:
        with self.cond:
            return sum(1 for r in self.requests if resource in (None, r.resource)
                       and verb in (None, r.verb) and status in (None, r.status))

    # -- inside ------------------------------------------------------------------------

    @staticmethod
    def _key(res: Resource, meta: dict[str, Any]) -> tuple[str, str]:
        return (meta.get("namespace") or "" if res.namespaced else "", meta["name"])

    def _write(self, resource: str, key: tuple[str, str], obj: dict[str, Any],
               kind: str) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[resource][key] = obj
        self._record(resource, kind, obj)
        return copy.deepcopy(obj)

    def _record(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        self.events.append((self.rv, resource, kind, copy.deepcopy(obj)))
        if len(self.events) > self.keep_events:
            dropped = self.events.pop(0)
            self.oldest = dropped[0]
        self.cond.notify_all()

    def _take_failure(self, resource: str, verb: str,
                      failures: list[_Failure] | None = None) -> int | None:
        """The status of the next failure asked for that matches (None: no failure)."""
        with self.cond:
            for failure in self._failures if failures is None else failures:
                if failure.remaining > 0 and failure.resource in (None, resource) and (
                        failure.verb in (None, verb)):
                    failure.remaining -= 1
                    return failure.status
        return None

    def _list(self, route: _Route, query: dict[str, str]) -> dict[str, Any]:
        """The objects, or a page of them (`limit`; `continue` for the next one, served from
        the first page's snapshot, or 410 once `expire_continues` forgot it)."""
        with self.cond:
            token = query.get("continue")
            if token:
                if token not in self._continues:
                    raise ApiError(410, "Expired", "the provided continue parameter is too "
                                   "old to display a consistent list result")
                rv, items = self._continues.pop(token)
            else:
                rv = self.rv
                items = [copy.deepcopy(obj) for (ns, _), obj in
                         sorted(self.objects[route.resource.name].items())
                         if not route.namespace or ns == route.namespace]
            limit = int(query.get("limit") or 0)
            meta: dict[str, Any] = {"resourceVersion": str(rv)}
            if limit and len(items) > limit:
                items, rest = items[:limit], items[limit:]
                meta["continue"] = next_token = uuid.uuid4().hex
                self._continues[next_token] = (rv, rest)
            return {"kind": f"{route.resource.kind}List", "apiVersion": route.resource.api_version,
                    "metadata": meta, "items": items}

    def expire_continues(self) -> None:
        """Forget every list continuation: the next page asked for gets 410."""
        with self.cond:
            self._continues.clear()

    def _watch(self, handler: BaseHTTPRequestHandler, route: _Route,
               query: dict[str, str]) -> None:
        res = route.resource
        since_text = query.get("resourceVersion", "")
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query.get("timeoutSeconds") or 1800)
        broken = self._take_failure(res.name, "watch", self._broken)
        with self.cond:
            since = int(since_text) if since_text not in ("", "0") else None
            gone = since is not None and since < self.oldest
            if gone and self.gone_as_http:
                raise ApiError(410, "Expired", f"too old resource version: {since} "
                               f"({self.oldest})")
            watcher = _Watcher(res.name, route.namespace)
            self._watchers.append(watcher)
            if since is None:  # "any": every object as ADDED, then what follows
                backlog = [("ADDED", copy.deepcopy(obj)) for (ns, _), obj in
                           sorted(self.objects[res.name].items())
                           if not route.namespace or ns == route.namespace]
                since = self.rv
            else:
                backlog = []
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            if broken is not None:  # as asked: an ERROR event now, or nothing, then the end
                if broken:
                    handler.send_chunk({"type": "ERROR", "object": status_object(
                        broken, "Expired" if broken == 410 else "InternalError",
                        "injected watch failure")})
            elif gone:  # an ERROR event, and the stream ends, as the real server ends it
                handler.send_chunk({"type": "ERROR", "object": status_object(
                    410, "Expired", f"too old resource version: {since} ({self.oldest})")})
            else:
                for kind, obj in backlog:
                    handler.send_chunk({"type": kind, "object": obj})
                self._follow(handler, watcher, since, bookmarks, time.monotonic() + timeout)
        except (BrokenPipeError, ConnectionResetError, OSError):
            return
        finally:
            with self.cond:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)
        handler.end_chunks()

    def _follow(self, handler: Any, watcher: _Watcher, since: int, bookmarks: bool,
                deadline: float) -> None:
        res = RESOURCES[watcher.resource]
        next_bookmark = time.monotonic() + (self.bookmark_interval or 1e9)
        while True:
            with self.cond:
                while True:
                    if self._closing:
                        return
                    if watcher.stalled:  # open, silent, until the server stops
                        self.cond.wait(1.0)
                        continue
                    now = time.monotonic()
                    if now >= deadline:
                        return
                    if since < self.oldest:
                        pending: list | None = None
                        break
                    pending = [(rv, kind, obj) for rv, name, kind, obj in self.events
                               if rv > since and name == watcher.resource and (
                                   not watcher.namespace or
                                   obj["metadata"].get("namespace") == watcher.namespace)]
                    bookmark = bookmarks and (watcher.bookmark_now or now >= next_bookmark)
                    if pending or bookmark:
                        watcher.bookmark_now = False
                        rv_now = self.rv
                        break
                    self.cond.wait(min(deadline, next_bookmark) - now)
            if pending is None:
                handler.send_chunk({"type": "ERROR", "object": status_object(
                    410, "Expired", f"too old resource version: {since} ({self.oldest})")})
                return
            for rv, kind, obj in pending:
                handler.send_chunk({"type": kind, "object": obj})
                since = rv
            if bookmark:
                handler.send_chunk({"type": "BOOKMARK", "object": {
                    "kind": res.kind, "apiVersion": res.api_version,
                    "metadata": {"resourceVersion": str(rv_now)}}})
                since = max(since, rv_now)
                next_bookmark = time.monotonic() + (self.bookmark_interval or 1e9)


def _route(path: str) -> _Route:
    for prefix in ("/api/v1/", "/apis/networking.k8s.io/v1/"):
        if path.startswith(prefix):
            parts = path[len(prefix):].strip("/").split("/")
            break
    else:
        raise ApiError(404, "NotFound", f"{path} is not served here")
    if len(parts) >= 3 and parts[0] == "namespaces" and parts[2] in RESOURCES:
        res = RESOURCES[parts[2]]
        if res.namespaced and res.prefix + "/" == prefix:
            return _Route(res, parts[1], *(parts[3:5] + ["", ""])[:2])
    res = RESOURCES.get(parts[0])
    if res is None or res.prefix + "/" != prefix:
        raise ApiError(404, "NotFound", f"{path} is not served here")
    if res.namespaced:
        if len(parts) > 1:
            raise ApiError(404, "NotFound", f"{path} is not served here")
        return _Route(res)
    return _Route(res, "", *(parts[1:3] + ["", ""])[:2])


def _handler(api: KubeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return

        def do_GET(self) -> None:
            self._serve("GET")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            verb, resource = method.lower(), "?"
            try:
                route = _route(url.path)
                resource = route.resource.name
                verb = self._verb(method, route, query)
                if api.token and self.headers.get("Authorization") != f"Bearer {api.token}":
                    raise ApiError(401, "Unauthorized", "Unauthorized")
                failure = api._take_failure(resource, verb)
                if failure:
                    raise ApiError(failure, "InternalError", "injected failure")
                self._record(method, resource, verb, query, 200)
                if verb == "watch":
                    api._watch(self, route, query)
                    return
                self._query = query
                self._reply(200, self._do(verb, route, body))
            except ApiError as exc:
                self._record(method, resource, verb, query, exc.code)
                self._reply(exc.code, status_object(exc.code, exc.reason, exc.message))

        def _verb(self, method: str, route: _Route, query: dict[str, str]) -> str:
            if method == "GET":
                if route.name:
                    return "get"
                return "watch" if query.get("watch") in ("1", "true") else "list"
            return {"PATCH": "patch", "POST": "create", "DELETE": "delete"}[method]

        _query: dict[str, str] = {}

        def _do(self, verb: str, route: _Route, body: bytes) -> dict[str, Any]:
            res = route.resource
            if verb == "list":
                return api._list(route, self._query)
            if verb == "get":
                obj = api.get(res.name, route.name, route.namespace)
                if obj is None:
                    raise ApiError(404, "NotFound", f'{res.name} "{route.name}" not found')
                return obj
            if verb == "patch":
                return api.patch_object(res.name, route.name, json.loads(body), route.namespace,
                                        self.headers.get("Content-Type") or "",
                                        route.subresource)
            if verb == "create":
                obj = json.loads(body)
                if res.namespaced:
                    obj.setdefault("metadata", {})["namespace"] = route.namespace or "default"
                return api.create(res.name, obj)
            return api.delete(res.name, route.name, route.namespace)

        def _record(self, method: str, resource: str, verb: str, query: dict[str, str],
                    status: int) -> None:
            with api.cond:
                api.requests.append(Request(method, resource, verb, query, status))

        def _reply(self, code: int, doc: dict[str, Any]) -> None:
            data = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def send_chunk(self, event: dict[str, Any]) -> None:
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def end_chunks(self) -> None:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass

    return Handler
