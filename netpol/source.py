"""Where the enforcer learns the cluster: one interface, and the lease store behind it.

`StoreSource` reads what `tartanctl apply` stored (Namespaces, Pods, NetworkPolicies, as
their manifests) and what every node's tartand recorded from the CNI ADDs it served (each
pod's IPs and node). A pod's labels and ports come from its manifest, its addresses from the
record; a pod with a record and no manifest still counts (no labels: selected only by
selectors that select everything). Invalid objects are reported and left out; the rest is
enforced. A Kubernetes API source (a later issue) implements the same two methods.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tartan.ipam.objects import NAMESPACES, NETWORK_POLICIES, POD_IPS, PODS, ObjectStore
from tartan.netpol.manifest import ManifestError, load_objects
from tartan.netpol.model import Cluster


@dataclass(frozen=True)
class Snapshot:
    cluster: Cluster
    revision: int
    problems: tuple[ManifestError, ...] = ()


class PolicySource(Protocol):
    def snapshot(self) -> Snapshot: ...

    def wait(self, revision: int, timeout: float) -> int:
        """Until something may have changed after `revision`, or `timeout` seconds."""
        ...


class StoreSource:
    def __init__(self, store: ObjectStore, source: str = "store") -> None:
        self.store, self.source = store, source

    def snapshot(self) -> Snapshot:
        objects, revision = self.store.list_objects()
        loaded = load_objects(list(documents(objects)), self.source)
        return Snapshot(loaded.cluster(), revision, tuple(loaded.errors))

    def wait(self, revision: int, timeout: float) -> int:
        return self.store.wait_objects(revision, timeout)


def documents(objects: Mapping[str, Mapping[str, Mapping[str, Any]]]
              ) -> Iterator[Mapping[str, Any]]:
    """The stored manifests, each Pod completed with what its node recorded."""
    yield from objects.get(NAMESPACES, {}).values()
    yield from objects.get(NETWORK_POLICIES, {}).values()
    records = dict(objects.get(POD_IPS, {}))
    for key, manifest in objects.get(PODS, {}).items():
        yield with_record(manifest, records.pop(key, None))
    for key, record in sorted(records.items()):  # served by CNI, never applied
        namespace, _, name = key.partition("/")
        bare = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": namespace, "name": name}}
        yield with_record(bare, record)


def with_record(manifest: Mapping[str, Any],
                record: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The manifest with status.podIPs and spec.nodeName from the CNI record, if any."""
    if not record:
        return manifest
    pod: dict[str, Any] = copy.deepcopy(dict(manifest))
    ips = [{"ip": str(ip)} for ip in record.get("ips", [])]
    status = pod.setdefault("status", {})
    if isinstance(status, dict):
        status["podIPs"] = ips
        status.pop("podIP", None)
    spec = pod.setdefault("spec", {})
    if isinstance(spec, dict) and record.get("node"):
        spec["nodeName"] = record["node"]
    return pod
