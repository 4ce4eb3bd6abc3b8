"""Kubernetes manifests (YAML or JSON) read into the NetworkPolicy model, validated as the API
server validates them.

`load` takes one text of any number of documents, each an object or a List of objects
(Namespace, Pod, NetworkPolicy); `load_objects` takes documents already decoded (such as the
JSON objects `tartanctl apply` stored). An invalid object is reported in `Loaded.errors`, with
every problem it has, and skipped; the other objects are still loaded. Only text that is not
YAML raises. NetworkPolicy fields are checked strictly (an unknown field is an error, as with
kubectl's strict validation): a typo such as `form:` must not turn into "allow everyone".
NetworkPolicy objects are built by `manifest_policy`; the fields themselves are read and
checked by `k8s_fields`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TextIO

import yaml

from tartan.netpol.k8s_fields import (
    Gather,
    Invalid,
    Object,
    address,
    boolean,
    fields,
    items,
    join,
    kind_of,
    metadata,
    object_name,
    port_name,
    port_number,
    port_protocol,
    required,
    show,
)
from tartan.netpol.manifest_policy import policy
from tartan.netpol.model import (
    Cluster,
    ContainerPort,
    IPAddress,
    Namespace,
    NetworkPolicy,
    Pod,
    Protocol,
)

Model = Namespace | Pod | NetworkPolicy


class ManifestError(ValueError):
    """One problem of a manifest: where it is (source, object, field) and a one-line message
    naming the object, the field, the bad value and the fix."""

    def __init__(self, source: str, obj: str, field: str, detail: str) -> None:
        super().__init__(source, obj, field, detail)
        self.source, self.obj, self.field, self.detail = source, obj, field, detail

    @property
    def message(self) -> str:
        """`<object>: <field> <what is wrong>; <fix>` (or `<object> <what is wrong>; <fix>`
        when the object as a whole is wrong), without the source."""
        if not self.field:
            return f"{self.obj} {self.detail}" if self.obj else self.detail
        return f"{self.obj}: {self.field} {self.detail}" if self.obj else (
            f"{self.field} {self.detail}")

    def __str__(self) -> str:
        return self.message if self.source == "-" else f"{self.source}: {self.message}"


@dataclass(frozen=True)
class Loaded:
    namespaces: tuple[Namespace, ...] = ()
    pods: tuple[Pod, ...] = ()
    policies: tuple[NetworkPolicy, ...] = ()
    errors: tuple[ManifestError, ...] = ()  # invalid objects, each skipped
    unknown: tuple[ManifestError, ...] = ()  # objects of other kinds, each skipped

    def cluster(self) -> Cluster:
        return Cluster(self.namespaces, self.pods, self.policies)


def load(text: str, source: str = "-") -> Loaded:
    """Every Namespace, Pod and NetworkPolicy of `text`; raises ManifestError if it is not
    YAML (or JSON) at all."""
    return load_objects(_documents(text, source), source)


def load_objects(objects: Iterable[Mapping[str, Any]], source: str) -> Loaded:
    """Every Namespace, Pod and NetworkPolicy of decoded `objects`, each one document as `load`
    reads it (an object or a List); an invalid one, or one that is not a mapping, is reported
    in `errors` and skipped, never raised, as "document N" (from 1) when it has no name."""
    collector = _Collector()
    collector.add(objects, source)
    return collector.result()


def load_files(paths: Sequence[str], stdin: TextIO | None = None) -> Loaded:
    """`load` over files ('-' is stdin; a directory means its .yaml, .yml and .json files),
    merged; raises ManifestError naming the file that cannot be read."""
    collector = _Collector()
    for path in paths:
        for file in expand(path):
            collector.read(read_text(file, stdin or sys.stdin), file)
    return collector.result()


# -- objects --------------------------------------------------------------------------


def _namespace(obj: Object) -> Namespace:
    _, name, labels = metadata(obj, namespaced=False, subdomain=False)
    return Namespace(name, labels)


def _pod(obj: Object) -> Pod:
    gather = Gather()
    namespace, name, labels = gather.get(partial(metadata, obj, True, True), ("", "", {}))
    spec = gather.get(partial(fields, obj.get("spec"), "spec"), {})
    node = gather.get(partial(_node_name, spec.get("nodeName")), "")
    host = gather.get(partial(boolean, spec.get("hostNetwork"), "spec.hostNetwork"), False)
    containers = gather.get(partial(items, spec.get("containers"), "spec.containers",
                                    _container_ports), ())
    ips = gather.get(partial(_pod_ips, obj.get("status")), ())
    gather.check()
    ports = tuple(port for container in containers for port in container)
    return Pod(namespace, name, labels, ips, node, ports, host)


def _node_name(raw: object) -> str:
    return "" if raw is None else object_name(raw, "spec.nodeName", subdomain=True)


def _container_ports(raw: object, path: str) -> tuple[ContainerPort, ...]:
    container = fields(raw, path)
    return items(container.get("ports"), join(path, "ports"), _container_port)


def _container_port(raw: object, path: str) -> ContainerPort:
    obj = fields(raw, path)
    gather = Gather()
    number = gather.get(lambda: port_number(required(
        obj, "containerPort", path, "give the port number the container listens on"),
        join(path, "containerPort")), 0)
    protocol = gather.get(partial(port_protocol, obj.get("protocol"), join(path, "protocol")),
                          Protocol.TCP)
    name = gather.get(partial(port_name, obj.get("name"), join(path, "name")), "")
    gather.check()
    return ContainerPort(number, protocol, name)


def _pod_ips(raw: object) -> tuple[IPAddress, ...]:
    status = fields(raw, "status")
    ips = items(status.get("podIPs"), "status.podIPs", _pod_ip)
    if ips or status.get("podIP") is None:
        return ips
    return (address(status.get("podIP"), "status.podIP"),)


def _pod_ip(raw: object, path: str) -> IPAddress:
    entry = fields(raw, path)
    return address(required(entry, "ip", path, "give the pod's address"), join(path, "ip"))


# -- documents ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    api_version: str
    namespaced: bool
    build: Callable[[Object], Model]


_KINDS = {
    "Namespace": _Kind("v1", False, _namespace),
    "Pod": _Kind("v1", True, _pod),
    "NetworkPolicy": _Kind("networking.k8s.io/v1", True, policy),
}
_LISTS = {"List": "", "NamespaceList": "Namespace", "PodList": "Pod",
          "NetworkPolicyList": "NetworkPolicy"}
_SUPPORTED = "(Namespace, Pod, NetworkPolicy)"


def _documents(text: str, source: str) -> list[Any]:
    """The documents of a YAML (or JSON) text, empty ones as None."""
    if text.lstrip().startswith(("{", "[")):
        try:
            return [json.loads(text)]
        except (ValueError, RecursionError):
            pass  # not JSON after all (or JSON that only YAML reads): YAML says where
    documents: list[Any] = []
    stream = yaml.safe_load_all(text)
    while True:
        try:
            documents.append(next(stream))
        except StopIteration:
            return documents
        except (yaml.YAMLError, ValueError, RecursionError) as error:
            raise _not_yaml(error, source, len(documents) + 1) from None


def _not_yaml(error: Exception, source: str, number: int) -> ManifestError:
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    problem = getattr(error, "problem", None) or str(error) or type(error).__name__
    return ManifestError(source, f"document {number}", "",
                         f"is not YAML: {problem}{where}; fix the syntax there")


def _describe(kind: str, obj: Object, where: str) -> str:
    """`Kind namespace/name`, or where the object is when it has no name."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name, namespace, known = meta.get("name"), meta.get("namespace"), _KINDS.get(kind)
    if not isinstance(name, str) or not name:
        return where
    if known and not known.namespaced:
        return f"{kind} {name}"
    if known and namespace in (None, ""):
        namespace = "default"
    return f"{kind} {namespace}/{name}" if isinstance(namespace, str) and namespace else (
        f"{kind} {name}")


class _Collector:
    """The objects of several texts, each kept once, and what was wrong with the others."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[Model, str]] = {}  # -> (object, where)
        self.errors: list[ManifestError] = []
        self.unknown: list[ManifestError] = []

    def read(self, text: str, source: str) -> None:
        self.add(_documents(text, source), source)

    def add(self, documents: Iterable[object], source: str) -> None:
        for number, document in enumerate(documents, 1):
            self._add(document, source, f"document {number}", "")

    def _add(self, raw: object, source: str, where: str, item_kind: str) -> None:
        if raw is None:
            return
        if not isinstance(raw, Mapping):
            self._error(source, where, "", f"is {kind_of(raw)}, not a Kubernetes object; "
                        f"give an object with apiVersion and kind {_SUPPORTED}")
            return
        if item_kind and raw.get("kind") is None:
            raw = {"apiVersion": _KINDS[item_kind].api_version, "kind": item_kind, **raw}
        kind = raw.get("kind")
        if kind is None or kind == "":
            self._error(source, where, "kind", f"is required; give the object a kind "
                        f"{_SUPPORTED}")
        elif not isinstance(kind, str):
            self._error(source, where, "kind", f"must be a string, not {kind_of(kind)}; "
                        f"give the object a kind {_SUPPORTED}")
        elif kind in _LISTS:
            self._add_list(raw, source, where, _LISTS[kind])
        elif kind not in _KINDS:
            self.unknown.append(ManifestError(source, _describe(kind, raw, where), "kind",
                                              f"{kind} is not supported {_SUPPORTED}"))
        else:
            self._add_object(kind, raw, source, where)

    def _add_list(self, raw: Object, source: str, where: str, item_kind: str) -> None:
        items = raw.get("items")
        if items is not None and not isinstance(items, list):
            self._error(source, where, "items", f"must be a list, not {kind_of(items)}; "
                        "write the list's objects as '- ' items")
            return
        for index, item in enumerate(items or []):
            self._add(item, source, f"{where} items[{index}]", item_kind)

    def _add_object(self, kind: str, raw: Object, source: str, where: str) -> None:
        spec = _KINDS[kind]
        name = _describe(kind, raw, where)
        if raw.get("apiVersion") != spec.api_version:
            self._error(source, name, "apiVersion", f"{show(raw.get('apiVersion'))} is not "
                        f"served for {kind}; use {spec.api_version}")
            return
        try:
            built = spec.build(raw)
        except Invalid as invalid:
            for problem in invalid.problems:
                self._error(source, name, problem.field, problem.detail)
            return
        self._keep(built, kind, name, f"{where} of {source}" if source != "-" else where,
                   source)

    def _keep(self, built: Model, kind: str, name: str, where: str, source: str) -> None:
        key = (kind, built.name if isinstance(built, Namespace) else built.key)
        if key in self.objects:
            self._error(source, name, "metadata.name", f"{show(built.name)} is already "
                        f"defined in {self.objects[key][1]}; remove or rename one of them")
            return
        self.objects[key] = (built, where)

    def _error(self, source: str, obj: str, field: str, detail: str) -> None:
        self.errors.append(ManifestError(source, obj, field, detail))

    def result(self) -> Loaded:
        built = [model for model, _ in self.objects.values()]
        return Loaded(tuple(m for m in built if isinstance(m, Namespace)),
                      tuple(m for m in built if isinstance(m, Pod)),
                      tuple(m for m in built if isinstance(m, NetworkPolicy)),
                      tuple(self.errors), tuple(self.unknown))


# -- files ----------------------------------------------------------------------------


def expand(path: str) -> list[str]:
    """A directory's manifests (as `kubectl apply -f DIR`: not recursive), else the path."""
    if path == "-" or not os.path.isdir(path):
        return [path]
    names = sorted(n for n in os.listdir(path) if n.endswith((".yaml", ".yml", ".json")))
    return [os.path.join(path, name) for name in names]


def read_text(path: str, stdin: TextIO) -> str:
    """A manifest file's text ('-': stdin); ManifestError naming the file when it cannot be
    read or is not UTF-8."""
    try:
        if path == "-":
            return stdin.read()
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as error:
        raise ManifestError(path, "", "", f"cannot be read: {error.strerror or error}; check "
                            "the path and its permissions") from None
    except UnicodeDecodeError as error:
        raise ManifestError(path, "", "", f"is not UTF-8 text (byte {error.start}); save it "
                            "as UTF-8") from None
