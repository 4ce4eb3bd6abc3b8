"""`tartanctl status`: this node's lease, readiness and peers, from the local tartand.

GET /status on tartand's HTTP address (standard library only) and print it for a person.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

from tartan.backends.agent import DEFAULT_HTTP_ADDR
from tartan.debug.fmt import relative, table

# Never through a proxy from the environment: the agent is on this machine.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StatusError(Exception):
    """One line for the user."""


def fetch(addr: str, timeout: float = 3.0) -> dict:
    """The agent's /status document; StatusError when it does not answer usefully."""
    try:
        with _OPENER.open(f"http://{addr}/status", timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        raise StatusError(f"tartand on {addr} answered /status with HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError):
        raise StatusError(f"tartand is not answering on {addr}: is it running?") from None
    try:
        doc = json.loads(body)
    except ValueError:
        raise StatusError(f"tartand on {addr} sent /status that is not JSON") from None
    if not isinstance(doc, dict):
        raise StatusError(f"tartand on {addr} sent an unexpected /status document")
    return doc


def node_lines(node: dict, now: float) -> list[str]:
    expires = node.get("leaseExpires")
    if node.get("leaseSource") == "podCIDR":
        lease = " (the Node's spec.podCIDR)"
    elif isinstance(expires, int | float):
        lease = f" (lease expires {relative(float(expires) - now)})"
    else:
        lease = " (lease expires -)"
    return [
        f"node:     {node.get('publicIP', '-')}"
        + (f" ({node['name']})" if node.get("name") else ""),
        f"subnet:   {node.get('subnet', '-')}{lease}",
        f"backend:  {node.get('backend', '-')}",
        *([f"BIG TCP:  {node['bigTCP']}"] if node.get("bigTCP") else []),
        f"ready:    {'yes' if node.get('ready') else 'NO'}",
        *waiting_lines(node.get("waitingFor"), now),
    ]


def waiting_lines(waiting: object, now: float) -> list[str]:
    """What a tartand that is not running yet waits for: one line, and since when."""
    if not isinstance(waiting, dict):
        return []
    since = waiting.get("since")
    when = f" (for {relative(max(0.0, now - float(since))).removeprefix('in ')})" \
        if isinstance(since, int | float) else ""
    return [f"waiting:  {waiting.get('message') or waiting.get('what')}{when}"]


def kube_lines(kube: object) -> list[str]:
    if not isinstance(kube, dict):
        return []
    state = "reachable" if kube.get("reachable") else f"UNREACHABLE: {kube.get('error')}"
    lines = [f"kube API: {kube.get('apiServer', '-')} ({state})"]
    stalled = [f"{w.get('resource')} {w.get('stalls')}" for w in kube.get("watches") or []
               if isinstance(w, dict) and w.get("stalls")]
    if stalled:
        lines.append(f"          watches restarted after a stall: {', '.join(stalled)}")
    return lines


def peer_lines(peers: list[dict]) -> list[str]:
    if not peers:
        return ["peers:    none"]
    rows = [[p.get("subnet"), p.get("publicIP"), p.get("mode"), p.get("state"),
             p.get("reason")] for p in sorted(peers, key=lambda p: str(p.get("subnet")))]
    return [f"peers ({len(peers)}):",
            *table(["SUBNET", "PUBLIC IP", "MODE", "STATE", "REASON"], rows, "  ")]


def render(doc: dict, now: float) -> list[str]:
    return (node_lines(doc.get("node") or {}, now) + kube_lines(doc.get("kube"))
            + peer_lines(doc.get("peers") or []))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="this node's lease, readiness and peers")
    p.add_argument("--http-addr", default=DEFAULT_HTTP_ADDR,
                   help=f"tartand's HTTP address (default {DEFAULT_HTTP_ADDR})")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text",
                   help="json: tartand's /status document as it is")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        doc = fetch(args.http_addr)
    except StatusError as exc:
        print(f"tartanctl status: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(render(doc, time.time())))
    return 0
