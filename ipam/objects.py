"""Kubernetes-shaped objects in the lease store, for the NetworkPolicy enforcer.

Without a Kubernetes API, Tartan keeps Namespaces, Pods and NetworkPolicies in the same store
as the leases (SQLite or etcd): `tartanctl apply` writes the manifests as given, and every
node's tartand records the IPs of the pods it served CNI ADDs for (`podips`, removed on DEL).
Values are the JSON objects themselves; reading and validating them is netpol's business.

Keys: `<namespace>/<name>` for namespaced kinds, `<name>` for namespaces. Objects have their
own revision domain: a write here wakes `wait_objects`, not the leases' `wait`, so the agent's
routing loop does not run a pass for every pod that starts. (SQLite and memory count object
writes on a counter of their own; etcd has one revision for the cluster, so a lease write moves
the revision `list_objects` reports, but it does not end a `wait_objects`.)

The stores share the helpers below: `encode_object` checks a write before it reaches the store,
`objects_by_kind` turns stored rows into the listing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

NAMESPACES = "namespaces"
PODS = "pods"
NETWORK_POLICIES = "networkpolicies"
POD_IPS = "podips"  # {"ips": [...], "node": ..., "containerID": ...}, written by tartand
KINDS = (NAMESPACES, PODS, NETWORK_POLICIES, POD_IPS)

_SEGMENT = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
_KEY = re.compile(rf"{_SEGMENT}(/{_SEGMENT})?")


class InvalidObjectKey(ValueError):
    """A kind or key that must not reach the store."""


def check_key(kind: str, key: str) -> str:
    if kind not in KINDS:
        raise InvalidObjectKey(f"unknown object kind {kind!r}: use one of {', '.join(KINDS)}")
    namespaced = kind != NAMESPACES
    if not isinstance(key, str) or not _KEY.fullmatch(key) or (("/" in key) != namespaced):
        shape = "<namespace>/<name>" if namespaced else "<name>"
        raise InvalidObjectKey(f"invalid {kind} key {key!r}: use {shape}, lower-case DNS names")
    return key


Objects = dict[str, dict[str, Any]]  # key -> object


def encode_object(kind: str, key: str, value: Mapping[str, Any]) -> str:
    """The stored text of an object: InvalidObjectKey for a bad kind or key, ValueError for a
    value that is not a JSON object (NaN and infinities are not JSON either)."""
    check_key(kind, key)
    if not isinstance(value, Mapping):
        raise ValueError(f"{kind} {key}: the value must be a JSON object, "
                         f"not {type(value).__name__}")
    try:
        return json.dumps(dict(value), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{kind} {key}: the value cannot be stored as JSON: {exc}") from None


def objects_by_kind(rows: Iterable[tuple[str, str, str | bytes]],
                    source: str = "the store") -> dict[str, Objects]:
    """(kind, key, stored text) rows as kind -> key -> object, every kind present, keys in
    order. Rows Tartan would not have written are skipped with a warning."""
    found: dict[str, Objects] = {kind: {} for kind in KINDS}
    for kind, key, text in sorted(rows, key=lambda row: row[:2]):
        value = _decoded(kind, key, text)
        if value is None:
            log.warning("ignoring bad object %s %r in %s", kind, key, source)
        else:
            found[kind][key] = value
    return found


def deleted_by_kind(rows: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    """(kind, key) rows of deleted objects as kind -> keys, every kind present."""
    found: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for kind, key in rows:
        if kind in found:
            found[kind].add(key)
    return found


@dataclass(frozen=True)
class ObjectChanges:
    """What changed after a revision: objects written (their value now) and objects deleted
    (and not written again since), by kind; `revision` is the revision they bring one to."""

    revision: int
    changed: dict[str, Objects]
    deleted: dict[str, set[str]]

    def __len__(self) -> int:
        return (sum(len(keys) for keys in self.changed.values())
                + sum(len(keys) for keys in self.deleted.values()))


def _decoded(kind: str, key: str, text: str | bytes) -> dict[str, Any] | None:
    try:
        check_key(kind, key)
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


class ObjectStore(Protocol):
    """Objects by kind and key. Every method may raise StoreUnavailable."""

    def put_object(self, kind: str, key: str, value: Mapping[str, Any]) -> None:
        """Create or replace (InvalidObjectKey for a bad kind or key, ValueError for a value
        that is not a JSON object; both before the store is touched)."""

    def delete_object(self, kind: str, key: str) -> bool:
        """True when it was there. Deleting what is not there writes nothing: the revision
        stays and no `wait_objects` wakes."""

    def list_objects(self) -> tuple[dict[str, Objects], int]:
        """Every object of every kind (kind -> key -> object), read at one revision, and that
        revision for `wait_objects`. Every kind is in the result, empty or not."""

    def object_changes(self, since: int) -> ObjectChanges | None:
        """What changed after `since` (a revision this store reported), read at one revision;
        None when the store can no longer tell (deletions that old are forgotten, or `since`
        is not one of its revisions): the caller lists everything again."""

    def wait_objects(self, revision: int, timeout: float) -> int:
        """Block until objects may have changed after `revision` or `timeout` seconds pass;
        the current object revision (`revision` itself when the wait timed out). Callers
        list again after."""
