"""`tartanctl get TYPE [NAME...]`: the objects in the store, in kubectl's shapes.

Tables as kubectl prints them (namespaces: NAME STATUS AGE; pods: NAME IP NODE AGE;
networkpolicies: NAME POD-SELECTOR AGE; `-A` puts NAMESPACE first; `-o wide` adds the labels,
or a policy's policy types), or `-o json|yaml` (a List, or the object when one NAME is
asked for), or `-o name`. A pod's IP and node are what the tartand that served its CNI ADD
recorded (`podips`); a pod with a record and no manifest is listed too, as the enforcer
counts it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from tartan.backends.agent import add_store_flags
from tartan.debug.kube import (
    NAMESPACE,
    NETWORK_POLICY,
    POD,
    CtlError,
    Resource,
    age,
    edge,
    object_key,
    opened,
    resource,
    table,
)
from tartan.ipam.objects import PODS, Objects
from tartan.netpol.manifest import load_objects
from tartan.netpol.source import documents

OUTPUTS = ("wide", "json", "yaml", "name")
Obj = Mapping[str, Any]


def entries(objects: Mapping[str, Objects], res: Resource) -> dict[str, Obj]:
    """key -> object for one resource type, in key order; pods with their records."""
    if res is not POD:
        return dict(objects[res.store_kind])
    pods = {key: document for (kind, key), document in documents(objects) if kind == PODS}
    return dict(sorted(pods.items()))


def select(found: dict[str, Obj], res: Resource, names: Sequence[str],
           namespace: str | None) -> tuple[list[Obj], list[str]]:
    """(the objects asked for, a NotFound line for each name that is not there)."""
    if names and namespace is None and res.namespaced:
        raise CtlError("a resource cannot be retrieved by name across all namespaces")
    if names:
        ns = namespace or "default"
        keys = [object_key(res, ns, name) for name in names]
        return ([found[k] for k in keys if k in found],
                [res.not_found(n) for n, k in zip(names, keys, strict=True) if k not in found])
    if namespace is None or not res.namespaced:
        return list(found.values()), []
    return [o for k, o in found.items() if k.startswith(f"{namespace}/")], []


# -- rows -----------------------------------------------------------------------------


def _meta(obj: Obj) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _get(obj: Obj, *path: str) -> Any:
    value: Any = obj
    for part in path:
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def labels_text(labels: object) -> str:
    """kubectl's --show-labels: `a=b,c=d`, `<none>` when there are none."""
    if not isinstance(labels, Mapping) or not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def selector_text(selector: object) -> str:
    """kubectl's POD-SELECTOR (metav1.FormatLabelSelector): `pod=a`, `tier in (db,web)`,
    `!debug`, sorted by key; `<none>` for {} (every pod of the namespace)."""
    sel = selector if isinstance(selector, Mapping) else {}
    parts = [(str(k), f"{k}={v}") for k, v in (sel.get("matchLabels") or {}).items()]
    for expr in sel.get("matchExpressions") or []:
        key, op = str(expr.get("key")), expr.get("operator")
        values = ",".join(sorted(str(v) for v in expr.get("values") or []))
        text = {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                "Exists": key, "DoesNotExist": f"!{key}"}.get(str(op), f"{key} {op}")
        parts.append((key, text))
    return ",".join(text for _, text in sorted(parts, key=lambda p: p[0])) or "<none>"


def policy_types(obj: Obj) -> str:
    policies = load_objects([obj], "store").policies
    return ",".join(sorted(policies[0].policy_types)) if policies else "<unknown>"


def pod_ip(obj: Obj) -> str:
    ips = _get(obj, "status", "podIPs") or []
    first = ips[0].get("ip") if ips and isinstance(ips[0], Mapping) else None
    return str(first or _get(obj, "status", "podIP") or "<none>")


def columns(res: Resource, wide: bool) -> list[str]:
    if res is NAMESPACE:
        headers = ["NAME", "STATUS", "AGE"]
    elif res is POD:
        headers = ["NAME", "IP", "NODE", "AGE"]
    else:
        headers = ["NAME", "POD-SELECTOR", "AGE"]
    return headers + ([("POLICY-TYPES" if res is NETWORK_POLICY else "LABELS")] if wide else [])


def row(res: Resource, obj: Obj, now: float, wide: bool) -> list[str]:
    name = str(_meta(obj).get("name"))
    if res is NAMESPACE:
        cells = [name, "Active", age(obj, now)]
    elif res is POD:
        cells = [name, pod_ip(obj), str(_get(obj, "spec", "nodeName") or "<none>"),
                 age(obj, now)]
    else:
        cells = [name, selector_text(_get(obj, "spec", "podSelector")), age(obj, now)]
    if wide:
        cells.append(policy_types(obj) if res is NETWORK_POLICY
                     else labels_text(_meta(obj).get("labels")))
    return cells


# -- output ---------------------------------------------------------------------------


def with_pod_ip(obj: Obj) -> Obj:
    """status.podIP beside status.podIPs, as the API server keeps both."""
    ips = _get(obj, "status", "podIPs")
    if obj.get("kind") != "Pod" or not ips or _get(obj, "status", "podIP"):
        return obj
    return {**obj, "status": {**obj["status"], "podIP": ips[0].get("ip")}}


def render(res: Resource, found: list[Obj], args: argparse.Namespace, now: float) -> str:
    if args.output in ("json", "yaml"):
        items = [with_pod_ip(o) for o in found]
        doc: Any = items[0] if len(args.names) == 1 and items else {
            "apiVersion": "v1", "kind": "List", "items": items,
            "metadata": {"resourceVersion": ""}}
        if args.output == "json":
            return json.dumps(doc, indent=4, sort_keys=True) + "\n"
        return yaml.safe_dump(doc, default_flow_style=False, sort_keys=True)
    if args.output == "name":
        return "".join(f"{res.ref(str(_meta(o).get('name')))}\n" for o in found)
    every = args.all_namespaces and res.namespaced
    wide = args.output == "wide"
    rows = [([str(_meta(o).get("namespace"))] if every else []) + row(res, o, now, wide)
            for o in found]
    return "\n".join(table((["NAMESPACE"] if every else []) + columns(res, wide), rows)) + "\n"


def nothing_found(res: Resource, namespace: str | None) -> str:
    if res.namespaced and namespace is not None:
        return f"No resources found in {namespace} namespace."
    return "No resources found"


def run(args: argparse.Namespace) -> int:
    res: Resource = args.type
    namespace = None if args.all_namespaces else (args.namespace or "default")
    with opened(args) as store:
        objects, _ = store.list_objects()
    found, missing = select(entries(objects, res), res, args.names, namespace)
    if found or (args.output in ("json", "yaml") and not args.names):
        sys.stdout.write(render(res, found, args, time.time()))
    elif not args.names:
        print(nothing_found(res, namespace), file=sys.stderr)
    for line in missing:
        print(line, file=sys.stderr)
    return 1 if missing else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("get", help="list Namespaces, Pods or NetworkPolicies from the store "
                       "(kubectl get)")
    p.add_argument("type", type=resource, metavar="TYPE",
                   help="namespaces (ns), pods (po) or networkpolicies (netpol)")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these objects")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="the namespace (default: default)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="every namespace, in a NAMESPACE column")
    p.add_argument("-o", "--output", choices=OUTPUTS, help="wide, json, yaml or name")
    add_store_flags(p)
    p.set_defaults(run=edge("tartanctl get")(run))
