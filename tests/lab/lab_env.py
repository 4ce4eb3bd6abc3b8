"""Helpers for the lab end-to-end tests: a photo of the host, node datapath views, upstream
NetworkPolicy e2e's model and `tartanctl lab` run as an operator runs it (waiting is
harness.eventually).

`HostSnapshot` records what a lab must never change in the host: its interfaces,
addresses, routes, rules, iptables, host-level mounts, the node mount points and the lab
root. A test takes one before `up` and compares after `down`. Namespaces made by other
tests running at the same time are not part of the photo; the lab's own must be gone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from tartan.debug import lab_agents
from tartan.debug.lab import Lab
from tartan.debug.lab_plan import LAB_ROOT
from tartan.debug.lab_state import NODE_MOUNTS, Node

VENV_BIN = Path(sys.executable).parent
WATCHED_PATHS = [target for _, target in NODE_MOUNTS] + [str(LAB_ROOT)]


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=check,
                          timeout=30).stdout


def lab_name() -> str:
    return "t" + uuid.uuid4().hex[:7]


def _listing(path: str) -> str:
    p = Path(path)
    return "missing" if not p.exists() else ",".join(sorted(x.name for x in p.iterdir()))


def _mounts() -> list[str]:
    """Host mount points, without /run/netns/* (namespaces of whatever else runs)."""
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted(p for p in points if not p.startswith("/run/netns/"))


@dataclass
class HostSnapshot:
    parts: dict[str, object]

    @classmethod
    def take(cls) -> HostSnapshot:
        return cls({
            "links": sh("ip", "-o", "link", "show"),
            "addresses": sh("ip", "-o", "addr", "show"),
            "routes": sh("ip", "route", "show", "table", "all"),
            "routes6": sh("ip", "-6", "route", "show", "table", "all"),
            "rules": sh("ip", "rule", "show"),
            "iptables": _without_comments(sh("iptables-save")),
            "ip6tables": _without_comments(sh("ip6tables-save", check=False)),
            "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
            "mounts": _mounts(),
            "paths": {p: _listing(p) for p in WATCHED_PATHS},
        })

    def differences(self, other: HostSnapshot) -> list[str]:
        return [f"{key}:\n  before: {self.parts[key]!r}\n  after:  {other.parts[key]!r}"
                for key in self.parts if self.parts[key] != other.parts[key]]


def _without_comments(saved: str) -> str:
    return "\n".join(line for line in saved.splitlines() if not line.startswith("#"))


def lab_namespaces(name: str) -> list[str]:
    return [n for n in sh("ip", "netns", "list").split() if n.startswith(f"{name}-")]


def routes(node: Node) -> str:
    return sh("ip", "-n", node.netns, "route", "show")


def route_to(node: Node, subnet: str) -> str:
    return sh("ip", "-n", node.netns, "route", "show", subnet).strip()


def fdb(node: Node) -> str:
    return sh("bridge", "-n", node.netns, "fdb", "show", check=False)


def subnet_of(node: Node) -> str:
    doc = lab_agents.status(node)
    assert doc, f"{node.name}'s tartand does not answer /status"
    return doc["node"]["subnet"]


def down_clean(lab: Lab) -> None:
    left = lab.down()
    assert not left, f"lab down left: {left}"
    assert not lab_namespaces(lab.name)


def status_peers(node: Node) -> dict[str, dict]:
    doc = lab_agents.status(node) or {}
    return {p["subnet"]: p for p in doc.get("peers", [])}


def dump(value: object) -> str:
    return json.dumps(value, indent=1, default=str)


# -- upstream NetworkPolicy e2e's model: namespaces x, y, z; pods a, b, c in each, labelled
# pod=<name>, serving TCP and UDP on 80 and 81 (ports named serve-80-tcp, ...) -------------

NAMESPACES, PODS = ("x", "y", "z"), ("a", "b", "c")
KEYS = [f"{ns}/{pod}" for ns in NAMESPACES for pod in PODS]


def pod_manifest(ns: str, name: str, labels: dict | None = None) -> dict:
    containers = [{"name": f"cont-{port}-{proto.lower()}", "image": "agnhost",
                   "ports": [{"containerPort": port, "protocol": proto,
                              "name": f"serve-{port}-{proto.lower()}"}]}
                  for port in (80, 81) for proto in ("TCP", "UDP")]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "labels": labels or {"pod": name}},
            "spec": {"containers": containers}}


def namespace_manifest(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}}}


def model() -> str:
    docs: list[dict] = []
    for ns in NAMESPACES:
        docs.append(namespace_manifest(ns))
        docs += [pod_manifest(ns, name) for name in PODS]
    return yaml.safe_dump_all(docs)


def policy(ns: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": name}, "spec": spec}


def ctl(lab: Lab, command: str, *args: str, text: str | None = None
        ) -> subprocess.CompletedProcess:
    """`tartanctl lab COMMAND --name <lab> ARGS...`, `text` on its stdin."""
    return subprocess.run([str(VENV_BIN / "tartanctl"), "lab", command, "--name", lab.name,
                           *args], input=text, capture_output=True, text=True, timeout=120)


def pods_json(lab: Lab) -> dict[str, dict]:
    shown = ctl(lab, "pods", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    return {f"{p['namespace']}/{p['name']}": p for p in json.loads(shown.stdout)}
