"""/healthz, /readyz, /metrics and /status, served from a thread beside the agent loop."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tartan.backends.metrics import Metrics


class Probes:
    """What the endpoints ask the agent."""

    def __init__(self, healthy: Callable[[], bool], ready: Callable[[], bool],
                 status: Callable[[], dict], metrics: Metrics) -> None:
        self.healthy, self.ready, self.status, self.metrics = healthy, ready, status, metrics


def _handler(probes: Probes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server calls it by this name
            path = self.path.split("?")[0]
            if path == "/healthz":
                self._probe(probes.healthy())
            elif path == "/readyz":
                self._probe(probes.ready())
            elif path == "/metrics":
                self._send(200, generate_latest(probes.metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/status":
                self._send(200, json.dumps(probes.status()).encode(), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _probe(self, ok: bool) -> None:
            self._send(200 if ok else 503, b"ok\n" if ok else b"not ready\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # probes every few seconds: stay quiet
            return

    return Handler


def serve(address: str, probes: Probes) -> ThreadingHTTPServer:
    host, _, port = address.rpartition(":")
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), _handler(probes))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
