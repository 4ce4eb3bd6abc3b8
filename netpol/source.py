"""Where the enforcer learns the cluster: one interface, and the lease store behind it.

`StoreSource` reads what `tartanctl apply` stored (Namespaces, Pods, NetworkPolicies, as
their manifests) and what every node's tartand recorded from the CNI ADDs it served (each
pod's IPs and node). A pod's labels and ports come from its manifest, its addresses from the
record; a pod with a record and no manifest still counts (no labels: selected only by
selectors that select everything). Invalid objects are reported and left out; the rest is
enforced. A Kubernetes API source (a later issue) implements the same two methods.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tartan.ipam.objects import NAMESPACES, NETWORK_POLICIES, POD_IPS, PODS, ObjectStore
from tartan.netpol.manifest import Loaded, ManifestError, load_objects
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
        # (kind, key) -> (the document last read, what it loaded to): a resync validates
        # only the objects that changed since the one before
        self._loaded: dict[tuple[str, str], tuple[Mapping[str, Any], Loaded]] = {}

    def snapshot(self) -> Snapshot:
        objects, revision = self.store.list_objects()
        fresh: dict[tuple[str, str], tuple[Mapping[str, Any], Loaded]] = {}
        for ident, document in documents(objects):
            known = self._loaded.get(ident)
            loaded = known[1] if known and known[0] == document else load_objects(
                [document], self.source)
            fresh[ident] = (document, loaded)
        self._loaded = fresh
        parts = [loaded for _, loaded in fresh.values()]
        cluster = Cluster(tuple(ns for part in parts for ns in part.namespaces),
                          tuple(pod for part in parts for pod in part.pods),
                          tuple(policy for part in parts for policy in part.policies))
        problems = tuple(error for part in parts for error in part.errors)
        return Snapshot(cluster, revision, problems)

    def wait(self, revision: int, timeout: float) -> int:
        return self.store.wait_objects(revision, timeout)


Document = tuple[tuple[str, str], Mapping[str, Any]]


def documents(objects: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Iterator[Document]:
    """The stored manifests by (kind, key), each Pod completed with what its node recorded."""
    for kind in (NAMESPACES, NETWORK_POLICIES):
        for key, manifest in objects.get(kind, {}).items():
            yield (kind, key), manifest
    records = dict(objects.get(POD_IPS, {}))
    for key, manifest in objects.get(PODS, {}).items():
        yield (PODS, key), with_record(manifest, records.pop(key, None))
    for key, record in sorted(records.items()):  # served by CNI, never applied
        namespace, _, name = key.partition("/")
        bare = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": namespace, "name": name}}
        yield (PODS, key), with_record(bare, record)


def with_record(manifest: Mapping[str, Any],
                record: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The manifest with status.podIPs and spec.nodeName from the CNI record, if any (a
    new document: the stored one is left as it is)."""
    if not record:
        return manifest
    pod: dict[str, Any] = dict(manifest)
    status = pod.get("status")
    pod["status"] = {**(status if isinstance(status, Mapping) else {}),
                     "podIPs": [{"ip": str(ip)} for ip in record.get("ips", [])]}
    pod["status"].pop("podIP", None)
    spec = pod.get("spec")
    if isinstance(spec, Mapping) and record.get("node"):
        pod["spec"] = {**spec, "nodeName": record["node"]}
    elif spec is None and record.get("node"):
        pod["spec"] = {"nodeName": record["node"]}
    return pod
