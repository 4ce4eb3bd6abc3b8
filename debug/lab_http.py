"""HTTP requests from inside a network namespace, with the standard library only.

Every node's tartand listens on 127.0.0.1:9808 of the node's own namespace, and etcd on
the router's segment-1 address; neither is reachable from the host. A request runs in a
thread of its own that enters the namespace first (setns(2) is per thread, and a socket
belongs to the namespace of the thread that opens it); the calling thread never moves.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tartan.debug.lab_sys import netns_path
from tartan.kernel import netns as kernel_netns
from tartan.kernel.errors import Gone, KernelFailure

# Never through a proxy from the environment: every address here is namespace-local.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Unreachable(Exception):
    """Nothing answered (refused, timed out, namespace gone)."""


def call_in_netns(netns: str, fn: Callable[[], Any]) -> Any:
    """fn() in a new thread that lives in the named network namespace; its result."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            with kernel_netns.entered(netns_path(netns)):
                box["result"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def request(url: str, body: dict | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET (or POST `body` as JSON); (status, payload). Unreachable when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise Unreachable(str(getattr(exc, "reason", exc))) from None


def request_in(netns: str, url: str, body: dict | None = None,
               timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        return call_in_netns(netns, lambda: request(url, body, timeout))
    except (Gone, KernelFailure) as exc:
        raise Unreachable(f"namespace {netns}: {exc}") from None


def json_in(netns: str, url: str, body: dict | None = None, timeout: float = 2.0) -> Any:
    """The JSON answer; Unreachable also when the status is not 200."""
    status, payload = request_in(netns, url, body, timeout)
    if status != 200:
        raise Unreachable(f"{url}: HTTP {status}")
    return json.loads(payload)
