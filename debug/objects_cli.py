"""`tartanctl apply -f` and `tartanctl delete`: Namespaces, Pods and NetworkPolicies into and
out of the lease store, where every node's tartand reads them.

Each object is validated as the API server would (netpol.manifest) and stored as given (its
namespace defaulted to "default", a creationTimestamp added once); an invalid one is reported
on one line and skipped, the others still go in, and the exit code is 1. The lines on stdout
are kubectl's: `pod/a created`, `... configured`, `... unchanged`, `pod "a" deleted`.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import yaml

from tartan.backends.agent import add_store_flags
from tartan.debug.kube import (
    CtlError,
    Resource,
    edge,
    identify,
    object_key,
    opened,
    resource,
    timestamp,
)
from tartan.ipam.objects import ObjectStore
from tartan.netpol.manifest import Loaded, ManifestError, expand, load, load_objects, read_text
from tartan.netpol.model import Namespace, NetworkPolicy, Pod

_LISTS = {"List": "", "NamespaceList": "Namespace", "PodList": "Pod",
          "NetworkPolicyList": "NetworkPolicy"}
_API_VERSIONS = {"Namespace": "v1", "Pod": "v1", "NetworkPolicy": "networking.k8s.io/v1"}


@dataclass(frozen=True)
class Valid:
    resource: Resource
    key: str
    manifest: dict[str, Any]  # as given, the namespace filled in


@dataclass
class Inputs:
    objects: list[Valid] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line each


# -- reading manifests ----------------------------------------------------------------


def read_inputs(paths: list[str], stdin: TextIO) -> Inputs:
    """Every valid object of the files, in order, and a line for each invalid one. A file
    that cannot be read stops everything before the store is touched (as kubectl does)."""
    texts = [(file, _read(file, stdin)) for path in paths for file in expand(path)]
    inputs = Inputs()
    for source, text in texts:
        try:
            checked = load(text, source)
        except ManifestError as exc:  # not YAML: nothing of this file is used
            inputs.problems.append(str(exc))
            continue
        inputs.problems += [str(e) for e in (*checked.errors, *checked.unknown)]
        seen: set[tuple[str, str]] = set()
        for raw in _objects(_documents(text)):
            valid = _validated(raw, source)
            if valid and (valid.resource.kind, valid.key) not in seen:  # the first counts
                seen.add((valid.resource.kind, valid.key))
                inputs.objects.append(valid)
    return inputs


def _read(path: str, stdin: TextIO) -> str:
    try:
        return read_text(path, stdin)
    except ManifestError as exc:
        raise CtlError(f"{path}: {exc.detail}") from None


def _documents(text: str) -> list[Any]:
    """The decoded documents, as netpol.manifest.load reads them (it has read them already,
    so they do decode)."""
    if text.lstrip().startswith(("{", "[")):
        try:
            return [json.loads(text)]
        except (ValueError, RecursionError):
            pass
    return list(yaml.safe_load_all(text))


def _objects(documents: list[Any]) -> Iterator[Mapping[str, Any]]:
    """The objects of the documents, Lists unpacked (typed Lists' items given their kind)."""
    for document in documents:
        if not isinstance(document, Mapping):
            continue
        item_kind = _LISTS.get(str(document.get("kind")))
        if item_kind is None:
            yield document
            continue
        items = document.get("items")
        for item in items if isinstance(items, list) else []:
            if isinstance(item, Mapping) and item_kind and item.get("kind") is None:
                item = {"apiVersion": _API_VERSIONS[item_kind], "kind": item_kind, **item}
            if isinstance(item, Mapping):
                yield item


def _validated(raw: Mapping[str, Any], source: str) -> Valid | None:
    """The object with its resource and key, or None when it is invalid (its problems are
    reported from the file as a whole)."""
    checked: Loaded = load_objects([raw], source)
    models: list[Namespace | Pod | NetworkPolicy] = [*checked.namespaces, *checked.pods,
                                                     *checked.policies]
    if checked.errors or checked.unknown or len(models) != 1:
        return None
    res, key = identify(models[0])
    manifest = copy.deepcopy(dict(raw))
    if res.namespaced:
        meta = manifest.setdefault("metadata", {})
        meta["namespace"] = key.partition("/")[0]
    return Valid(res, key, manifest)


# -- apply ----------------------------------------------------------------------------


def apply(store: ObjectStore, objects: list[Valid], now: float) -> Iterator[str]:
    """Store each object; kubectl's line for each. The creationTimestamp of an object that
    was there already is kept, so applying the same manifest again changes nothing."""
    current, _ = store.list_objects()
    for obj in objects:
        stored = current[obj.resource.store_kind].get(obj.key)
        manifest = _stamped(obj.manifest, stored, now)
        name = obj.key.rpartition("/")[2]
        if stored == manifest:
            yield f"{obj.resource.ref(name)} unchanged"
            continue
        store.put_object(obj.resource.store_kind, obj.key, manifest)
        current[obj.resource.store_kind][obj.key] = manifest
        yield f"{obj.resource.ref(name)} {'configured' if stored else 'created'}"


def _stamped(manifest: dict[str, Any], stored: Mapping[str, Any] | None,
             now: float) -> dict[str, Any]:
    result = copy.deepcopy(manifest)
    meta = result.setdefault("metadata", {})
    before = stored.get("metadata") if stored else None
    kept = before.get("creationTimestamp") if isinstance(before, Mapping) else None
    meta["creationTimestamp"] = kept or timestamp(now)
    return result


def run_apply(args: argparse.Namespace) -> int:
    inputs = read_inputs(args.filename, sys.stdin)
    for line in inputs.problems:
        print(f"tartanctl apply: {line}", file=sys.stderr)
    if inputs.objects:
        with opened(args) as store:
            for line in apply(store, inputs.objects, time.time()):
                print(line, flush=True)
    return 1 if inputs.problems else 0


# -- delete ---------------------------------------------------------------------------


def delete(store: ObjectStore, targets: list[tuple[Resource, str]],
           ignore_not_found: bool) -> Iterator[tuple[bool, str]]:
    """(ok, kubectl's line) for each (resource, key)."""
    for res, key in targets:
        name = key.rpartition("/")[2]
        if store.delete_object(res.store_kind, key):
            yield True, f'{res.qualified(res.singular)} "{name}" deleted'
        elif not ignore_not_found:
            yield False, res.not_found(name)


def _targets(args: argparse.Namespace) -> tuple[list[tuple[Resource, str]], list[str]]:
    if args.filename and args.names:
        raise CtlError("give either -f FILE or TYPE NAME..., not both", 2)
    if args.filename:
        inputs = read_inputs(args.filename, sys.stdin)
        return [(o.resource, o.key) for o in inputs.objects], inputs.problems
    if len(args.names) < 2:
        raise CtlError("give -f FILE, or a resource type and the names to delete", 2)
    res = resource_or_usage(args.names[0])
    return [(res, object_key(res, args.namespace, name)) for name in args.names[1:]], []


def resource_or_usage(text: str) -> Resource:
    try:
        return resource(text)
    except argparse.ArgumentTypeError as exc:
        raise CtlError(str(exc), 2) from None


def run_delete(args: argparse.Namespace) -> int:
    targets, problems = _targets(args)
    for line in problems:
        print(f"tartanctl delete: {line}", file=sys.stderr)
    failed = bool(problems)
    if targets:
        with opened(args) as store:
            for ok, line in delete(store, targets, args.ignore_not_found):
                print(line, file=sys.stdout if ok else sys.stderr, flush=True)
                failed = failed or not ok
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apply", help="store Namespaces, Pods and NetworkPolicies (kubectl "
                       "apply -f)")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                   help="a manifest (YAML or JSON), a directory of them, or - for stdin; "
                        "repeatable")
    add_store_flags(p)
    p.set_defaults(run=edge("tartanctl apply")(run_apply))

    d = sub.add_parser("delete", help="remove objects from the store (kubectl delete)")
    d.add_argument("names", nargs="*", metavar="TYPE NAME",
                   help="a resource type and names, instead of -f")
    d.add_argument("-f", "--filename", action="append", metavar="FILE",
                   help="the objects of a manifest, a directory or - (stdin); repeatable")
    d.add_argument("-n", "--namespace", default="default",
                   help="the namespace of TYPE NAME (default: default)")
    d.add_argument("--ignore-not-found", action="store_true",
                   help="an object that is not there is not an error")
    add_store_flags(d)
    d.set_defaults(run=edge("tartanctl delete")(run_delete))
