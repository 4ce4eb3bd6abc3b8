"""Where the enforcer learns the cluster: one interface, and the lease store behind it.

`StoreSource` reads what `tartanctl apply` stored (Namespaces, Pods, NetworkPolicies, as
their manifests) and what every node's tartand recorded from the CNI ADDs it served (each
pod's IPs and node). A pod's labels and ports come from its manifest, its addresses from the
record; a pod with a record and no manifest still counts (no labels: selected only by
selectors that select everything). Invalid objects are reported and left out; the rest is
enforced. The Kubernetes API source (`netpol/source_kube.py`) implements the same two methods.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from tartan.ipam.objects import (
    NAMESPACES,
    NETWORK_POLICIES,
    POD_IPS,
    PODS,
    ObjectChanges,
    Objects,
    ObjectStore,
)
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
    """The store's objects, listed once and then followed by `object_changes`: a snapshot
    after one write reads, validates and rebuilds only what that write touched. The listing
    is made again when the store cannot tell what changed (deletions that old forgotten)."""

    def __init__(self, store: ObjectStore, source: str = "store") -> None:
        self.store, self.source = store, source
        self._objects: dict[str, Objects] | None = None  # kind -> key -> the stored value
        self._revision = -1
        # (kind, key) -> (the document, what it loaded to), for every stored object
        self._loaded: dict[Ident, tuple[Mapping[str, Any], Loaded]] = {}
        self._last: Snapshot | None = None
        self.listings = 0  # full listings made, for tests and /status

    def snapshot(self) -> Snapshot:
        changes = (self.store.object_changes(self._revision)
                   if self._objects is not None else None)
        if changes is None:
            objects, revision = self.store.list_objects()
            self.listings += 1
            self._objects, touched = objects, None
        else:
            revision, touched = changes.revision, self._apply(changes)
        if touched is not None and not touched and self._last is not None:
            self._revision = revision
            self._last = replace(self._last, revision=revision)
            return self._last
        self._reload(touched)
        self._revision = revision
        self._last = Snapshot(self._cluster(touched), revision,
                              tuple(error for _, part in self._loaded.values()
                                    for error in part.errors))
        return self._last

    def _cluster(self, touched: set[Ident] | None) -> Cluster:
        """The cluster of the loaded objects; a kind no document of `touched` is of keeps
        the very tuple of the last snapshot (the compiler reuses what it found for it)."""
        kinds = {kind for kind, _ in touched} if touched is not None else set(KIND_ORDER)
        last = self._last.cluster if self._last is not None else None
        parts = [part for _, part in self._loaded.values()]

        def of(kind: str, field: str) -> tuple:
            if last is not None and kind not in kinds:
                return getattr(last, field)
            return tuple(item for part in parts for item in getattr(part, field))

        return Cluster(of(NAMESPACES, "namespaces"), of(PODS, "pods"),
                       of(NETWORK_POLICIES, "policies"))

    def wait(self, revision: int, timeout: float) -> int:
        return self.store.wait_objects(revision, timeout)

    def _apply(self, changes: ObjectChanges) -> set[Ident]:
        """Bring the cached objects to `changes.revision`; the documents it touched (a pod's
        record changes the pod's document)."""
        assert self._objects is not None
        touched: set[Ident] = set()
        for kind, keys in changes.deleted.items():
            for key in keys:
                self._objects.setdefault(kind, {}).pop(key, None)
                touched.add((PODS if kind == POD_IPS else kind, key))
        for kind, written in changes.changed.items():
            self._objects.setdefault(kind, {}).update(written)
            touched.update((PODS if kind == POD_IPS else kind, key) for key in written)
        return touched

    def _reload(self, touched: set[Ident] | None) -> None:
        """Load the documents of `touched` (None: of everything) again; an unchanged
        document keeps what it loaded to."""
        assert self._objects is not None
        fresh = (dict(documents(self._objects)) if touched is None
                 else {ident: doc for ident in touched
                       if (doc := document(self._objects, ident)) is not None})
        if touched is None:
            self._loaded = {ident: self._load(ident, doc) for ident, doc in fresh.items()}
            return
        for ident in touched:
            if ident in fresh:
                self._loaded[ident] = self._load(ident, fresh[ident])
            else:
                self._loaded.pop(ident, None)

    def _load(self, ident: Ident, doc: Mapping[str, Any]) -> tuple[Mapping[str, Any], Loaded]:
        known = self._loaded.get(ident)
        if known is not None and known[0] == doc:
            return known
        return doc, load_objects([doc], self.source)


Ident = tuple[str, str]  # (kind, key)
KIND_ORDER = (NAMESPACES, PODS, NETWORK_POLICIES)


Document = tuple[tuple[str, str], Mapping[str, Any]]


def document(objects: Mapping[str, Mapping[str, Mapping[str, Any]]],
             ident: Ident) -> Mapping[str, Any] | None:
    """The document of one object as `documents` gives it; None when there is none."""
    kind, key = ident
    if kind != PODS:
        return objects.get(kind, {}).get(key)
    manifest, record = objects.get(PODS, {}).get(key), objects.get(POD_IPS, {}).get(key)
    if manifest is None and record is None:
        return None
    return with_record(manifest if manifest is not None else bare_pod(key), record)


def bare_pod(key: str) -> dict[str, Any]:
    """The manifest of a pod served by CNI but never applied."""
    namespace, _, name = key.partition("/")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": namespace, "name": name}}


def documents(objects: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Iterator[Document]:
    """The stored manifests by (kind, key), each Pod completed with what its node recorded."""
    for kind in (NAMESPACES, NETWORK_POLICIES):
        for key, manifest in objects.get(kind, {}).items():
            yield (kind, key), manifest
    records = dict(objects.get(POD_IPS, {}))
    for key, manifest in objects.get(PODS, {}).items():
        yield (PODS, key), with_record(manifest, records.pop(key, None))
    for key, record in sorted(records.items()):  # served by CNI, never applied
        yield (PODS, key), with_record(bare_pod(key), record)


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
