"""NetworkPolicy's source on the Kubernetes API: Pods, Namespaces and NetworkPolicies, each
listed and watched (ipam/kube_watch.py: relist on 410 Gone, backoff on errors, a stalled
watch restarted), into caches that share one revision.

Every pod of the cluster is kept, with its IPs from `status.podIPs` and its node from
`spec.nodeName`: the compiler gives chains to this node's pods only (`Cluster.pods_on`) and
puts every pod a policy selects, wherever it runs, in the peer sets. A pod that has finished
(phase Succeeded or Failed) keeps its IPs in the API, but they may already be another pod's:
it is kept without them. Invalid objects are reported and left out, as StoreSource does.
Until every resource has been listed once, a snapshot raises KubeUnavailable: the enforcer
keeps the rules it has rather than enforcing a half-known cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tartan.ipam.kube_watch import (
    Cache,
    Notifier,
    Reflector,
    Report,
    WatchSettings,
    resource_version,
)
from tartan.ipam.lease_kube import KubeUnavailable
from tartan.netpol.manifest import Loaded, load_objects
from tartan.netpol.model import Cluster
from tartan.netpol.source import Snapshot

# resource -> (kind, apiVersion) the list's items are given (they come without)
KINDS = {"namespaces": ("Namespace", "v1"), "pods": ("Pod", "v1"),
         "networkpolicies": ("NetworkPolicy", "networking.k8s.io/v1")}
# resource -> the field of Cluster (and of manifest.Loaded) its models are in
FIELDS = {"namespaces": "namespaces", "pods": "pods", "networkpolicies": "policies"}
FINISHED = ("Succeeded", "Failed")


def document(resource: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object as the manifest loader reads it."""
    kind, api_version = KINDS[resource]
    doc = {**obj, "kind": kind, "apiVersion": api_version}
    status = obj.get("status")
    if resource == "pods" and isinstance(status, Mapping) and status.get("phase") in FINISHED:
        doc["status"] = {key: value for key, value in status.items()
                         if key not in ("podIP", "podIPs")}
    return doc


class KubeSource:
    """A PolicySource (netpol/source.py) over three reflectors; `start` them first."""

    def __init__(self, core: Any, networking: Any, url: str = "", *,
                 settings: WatchSettings | None = None, report: Report | None = None,
                 source: str = "kube") -> None:
        self.url, self.source = url, source
        self.notifier = Notifier()
        self.caches = {name: Cache(self.notifier) for name in KINDS}
        lists = {"namespaces": core.list_namespace, "pods": core.list_pod_for_all_namespaces,
                 "networkpolicies": networking.list_network_policy_for_all_namespaces}
        self.reflectors = [Reflector(name, lists[name], self.caches[name], settings=settings,
                                     report=report) for name in KINDS]
        self._loaded: dict[tuple[str, str], tuple[str, Loaded]] = {}  # -> (resourceVersion,)
        self._revision = -1
        self._last: Snapshot | None = None
        self.listings = 0  # snapshots that loaded every object again

    def start(self) -> KubeSource:
        for reflector in self.reflectors:
            if reflector.thread is None:
                reflector.start()
        return self

    def stop(self) -> None:
        for reflector in self.reflectors:
            reflector.stop()

    def snapshot(self) -> Snapshot:
        self._check_synced()
        with self.notifier.cond:  # one revision for the three caches' contents
            revision = self.notifier.revision
            if self._last is not None and revision == self._revision:
                return self._last
            touched = {name: self._touched(name, cache) for name, cache in self.caches.items()}
        last = self._last.cluster if self._last is not None else None
        parts: dict[str, tuple] = {}
        for name, keys in touched.items():
            if keys == set() and last is not None:  # unchanged: the very tuple (reused)
                parts[name] = getattr(last, FIELDS[name])
                continue
            parts[name] = self._load(name, keys)
        self._revision = revision
        problems = tuple(error for (_, _), (_, loaded) in sorted(self._loaded.items())
                         for error in loaded.errors)
        self._last = Snapshot(Cluster(parts["namespaces"], parts["pods"],
                                      parts["networkpolicies"]), revision, problems)
        return self._last

    def wait(self, revision: int, timeout: float) -> int:
        """Until something changed after `revision`; while a resource has never been listed,
        until every one has (a snapshot before would only fail again)."""
        with self.notifier.cond:
            if not self._all_synced():
                self.notifier.cond.wait_for(self._all_synced, timeout)
                return self.notifier.revision if self._all_synced() else revision
        return self.notifier.wait(revision, timeout)

    def _all_synced(self) -> bool:
        return all(r.cache.synced for r in self.reflectors)

    def _check_synced(self) -> None:
        pending = [r for r in self.reflectors if not r.cache.synced]
        if pending:
            names = ", ".join(r.resource for r in pending)
            errors = "; ".join(r.error for r in pending if r.error) or "no answer yet"
            raise KubeUnavailable(f"the Kubernetes API at {self.url or '?'} has not listed "
                                  f"{names}: {errors}")

    def _touched(self, name: str, cache: Cache) -> set[str] | None:
        """The keys of `name` changed since the last snapshot (None: load them all)."""
        if self._last is None:
            return None
        changes = cache.changes(self._revision)
        if changes is None:
            return None
        return set(changes.changed) | set(changes.deleted)

    def _load(self, name: str, keys: set[str] | None) -> tuple:
        """The models of resource `name`, loading again only the objects in `keys` (None:
        every object, reusing those whose resourceVersion did not change)."""
        objects = self.caches[name].items()
        if keys is None:
            self.listings += 1
            for ident in [i for i in self._loaded if i[0] == name and i[1] not in objects]:
                del self._loaded[ident]
            keys = set(objects)
        for key in keys:
            obj = objects.get(key)
            if obj is None:
                self._loaded.pop((name, key), None)
                continue
            version = resource_version(obj)
            known = self._loaded.get((name, key))
            if known is None or not version or known[0] != version:
                self._loaded[name, key] = (version, load_objects([document(name, obj)],
                                                                 self.source))
        return tuple(item for (kind, _), (_, loaded) in sorted(self._loaded.items())
                     if kind == name for item in getattr(loaded, FIELDS[name]))
