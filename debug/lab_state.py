"""The lab's state file and folder layout under /run/tartan-lab/<name>/.

    state.json              what `up`/`join` made (written after every step)
    net-conf.json           flannel net-conf.json every tartand is started with
    leases.db               the SQLite store (store sqlite)
    etcd/, etcd.log         etcd's data dir and log (store etcd)
    node<i>/                the node's own dirs, bind-mounted in its mount namespace:
        run-tartan/ -> /run/tartan, var-lib-cni/ -> /var/lib/cni,
        var-lib-tartan/ -> /var/lib/tartan, etc-cni/ -> /etc/cni; tartand.log

`down` does not need this file: it finds the lab's namespaces and processes by name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tartan.debug.lab_plan import LAB_ROOT
from tartan.kernel.files import write_atomic

# (folder under the node dir, where it is mounted in the node's mount namespace)
NODE_MOUNTS = (
    ("run-tartan", "/run/tartan"),
    ("var-lib-cni", "/var/lib/cni"),
    ("var-lib-tartan", "/var/lib/tartan"),
    ("etc-cni", "/etc/cni"),
)


@dataclass
class Node:
    name: str
    index: int
    segment: int
    ip: str
    netns: str
    holder_pid: int = 0
    tartand_pid: int = 0


@dataclass
class Pod:
    """A pod sandbox the lab made: `up`'s pods (namespace default, no labels, no listener)
    and the Pods of `lab apply` (their labels, their containers' ports, served by a
    listener process in the pod's namespace)."""

    name: str
    node: str
    netns: str
    container_id: str
    address: str = ""
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[dict[str, Any]] = field(default_factory=list)  # {port, protocol, name}
    listener_pid: int = 0

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    @property
    def key(self) -> str:
        """`namespace/name`, as CNI_ARGS, the store and `policy explain` name the pod."""
        return f"{self.namespace}/{self.name}"


@dataclass
class LabState:
    name: str
    backend: str
    store: str
    segments: int
    pods_per_node: int
    reconcile_interval: float = 5.0
    big_tcp: bool = False
    etcd_pid: int = 0
    nodes: list[Node] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)

    def pods_of(self, node: str) -> list[Pod]:
        return [p for p in self.pods if p.node == node]

    def pod(self, key: str) -> Pod | None:
        """The pod `namespace/name`."""
        return next((p for p in self.pods if p.key == key), None)

    def next_index(self) -> int:
        return max((n.index for n in self.nodes), default=0) + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LabState:
        raw = json.loads(text)
        raw["nodes"] = [Node(**n) for n in raw.get("nodes", [])]
        raw["pods"] = [Pod(**p) for p in raw.get("pods", [])]
        return cls(**raw)


def lab_dir(name: str, root: Path = LAB_ROOT) -> Path:
    return root / name


def state_path(name: str, root: Path = LAB_ROOT) -> Path:
    return lab_dir(name, root) / "state.json"


def node_dir(lab: str, node: str, root: Path = LAB_ROOT) -> Path:
    return lab_dir(lab, root) / node


def node_log(lab: str, node: str, root: Path = LAB_ROOT) -> Path:
    return node_dir(lab, node, root) / "tartand.log"


def save(state: LabState, root: Path = LAB_ROOT) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    write_atomic(state_path(state.name, root), state.to_json())


def load(name: str, root: Path = LAB_ROOT) -> LabState | None:
    path = state_path(name, root)
    try:
        return LabState.from_json(path.read_text())
    except FileNotFoundError:
        return None


def tail(path: Path, lines: int = 15) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
