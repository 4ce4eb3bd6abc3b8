"""Kubernetes manifests (YAML or JSON) read into the NetworkPolicy model, validated as the API
server validates them.

`load` takes one text of any number of documents, each an object or a List of objects
(Namespace, Pod, NetworkPolicy). An invalid object is reported in `Loaded.errors`, with every
problem it has, and skipped; the other objects are still loaded. Only text that is not YAML
raises. NetworkPolicy fields are checked strictly (an unknown field is an error, as with
kubectl's strict validation): a typo such as `form:` must not turn into "allow everyone".
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NoReturn, TextIO, TypeVar, cast

import yaml

from tartan.netpol.model import (
    EVERYTHING,
    Cluster,
    ContainerPort,
    Direction,
    IPAddress,
    IPBlock,
    IPNetwork,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Operator,
    Peer,
    Pod,
    PolicyPort,
    Protocol,
    Requirement,
    Rule,
    default_policy_types,
)

T = TypeVar("T")
Object = Mapping[str, object]
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
    collector = _Collector()
    collector.read(text, source)
    return collector.result()


def load_files(paths: Sequence[str], stdin: TextIO | None = None) -> Loaded:
    """`load` over files ('-' is stdin; a directory means its .yaml, .yml and .json files),
    merged; raises ManifestError naming the file that cannot be read."""
    collector = _Collector()
    for path in paths:
        for file in _expand(path):
            collector.read(_read(file, stdin or sys.stdin), file)
    return collector.result()


# -- problems -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    field: str
    detail: str


class _Invalid(Exception):
    def __init__(self, *problems: _Problem) -> None:
        super().__init__(*problems)
        self.problems = problems


def _fail(path: str, detail: str) -> NoReturn:
    raise _Invalid(_Problem(path, detail))


class _Gather:
    """Builds the parts of one object, going on past invalid ones so that every problem
    is reported at once."""

    def __init__(self) -> None:
        self.problems: list[_Problem] = []

    def get(self, build: Callable[[], T], fallback: object) -> T:
        """What `build` returns, or (when it finds problems) `fallback`, a stand-in of the
        same shape that lives only until check() raises."""
        try:
            return build()
        except _Invalid as invalid:
            self.problems.extend(invalid.problems)
            return cast(T, fallback)

    def check(self) -> None:
        if self.problems:
            raise _Invalid(*self.problems)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind_of(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a decimal number",
             str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), f"a {type(value).__name__}")


def _show(value: object) -> str:
    """A value as the message shows it: strings quoted (and shortened), containers by kind."""
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 70 else value[:67] + "...")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    return _kind_of(value)


def _wrong_type(value: object, path: str, expected: str) -> NoReturn:
    scalar = isinstance(value, bool | int | float | str)
    seen = _kind_of(value) + (f" ({_show(value)})" if scalar and value != "" else "")
    if expected == "a string" and scalar:
        fix = "quote it"
    elif isinstance(value, str) and value.isdigit() and "number" in expected:
        fix = f"remove the quotes: {value}"
    else:
        fix = f"write {expected} here"
    _fail(path, f"must be {expected}, not {seen}; {fix}")


# -- shapes ---------------------------------------------------------------------------


def _fields(raw: object, path: str, known: Sequence[str] | None = None) -> Object:
    """The object at `path` (null is an empty one); with `known`, other fields are errors."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        _wrong_type(raw, path, "an object")
    odd = [key for key in raw if not isinstance(key, str)]
    if odd:
        _fail(path or "the object", f"has the key {_show(odd[0])}, which is not a string; "
              f'quote it: "{odd[0]}"')
    unknown = [] if known is None else [key for key in raw if key not in known]
    if unknown and known:
        raise _Invalid(*(_Problem(_join(path, key), "is not a known field; use one of "
                                  + ", ".join(known)) for key in unknown))
    return raw


def _list(raw: object, path: str) -> list[object]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        _wrong_type(raw, path, "a list")
    return raw


def _items(raw: object, path: str, build: Callable[[object, str], T]) -> tuple[T, ...]:
    """Each element built, all elements' problems reported together."""
    gather = _Gather()
    built = [gather.get(partial(build, item, f"{path}[{index}]"), None)
             for index, item in enumerate(_list(raw, path))]
    gather.check()
    return tuple(item for item in built if item is not None)


def _string(raw: object, path: str) -> str:
    if not isinstance(raw, str):
        _wrong_type(raw, path, "a string")
    return raw


def _integer(raw: object, path: str, expected: str = "a number") -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        _wrong_type(raw, path, expected)
    return raw


def _required(obj: Object, key: str, path: str, fix: str) -> object:
    value = obj.get(key)
    if value is None:
        _fail(_join(path, key), f"is required; {fix}")
    return value


# -- names and labels, as apimachinery's validation defines them ----------------------

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_CHARS = re.compile(r"[-A-Za-z0-9_.]*")
_ALNUM = re.compile(r"[A-Za-z0-9]")
_PORT_NAME_CHARS = re.compile(r"[-a-z0-9]+")
_LABEL_RULE = ("at most 63 letters, digits, '-', '_' and '.', starting and ending with a "
               "letter or digit")


def _is_dns_label(name: str) -> bool:
    return len(name) <= 63 and _DNS_LABEL.fullmatch(name) is not None


def _is_dns_subdomain(name: str) -> bool:
    return len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name) is not None


def _label_name_problem(name: str, what: str) -> str | None:
    if len(name) > 63:
        return f"{what} is {len(name)} characters long"
    if not _LABEL_CHARS.fullmatch(name):
        return f"{what} has characters other than letters, digits, '-', '_' and '.'"
    if name and not (_ALNUM.match(name[0]) and _ALNUM.match(name[-1])):
        return f"{what} does not start and end with a letter or digit"
    return None


def _label_key_problem(key: str) -> str | None:
    parts = key.split("/")
    if len(parts) > 2:
        return "it has more than one '/'"
    if len(parts) == 2 and not _is_dns_subdomain(parts[0]):
        return f"its prefix {_show(parts[0])} is not a DNS subdomain"
    if not parts[-1]:
        return "its name is empty"
    return _label_name_problem(parts[-1], "its name")


def _port_name_problem(name: str) -> str | None:
    """Why `name` is not an IANA_SVC_NAME, the form of container port names."""
    if len(name) > 15:
        return "it is longer than 15 characters"
    if not _PORT_NAME_CHARS.fullmatch(name):
        return "it has characters other than lower-case letters, digits and '-'"
    if not re.search("[a-z]", name):
        return "it has no letter"
    if "--" in name or name[0] == "-" or name[-1] == "-":
        return "it starts or ends with '-' or has '--'"
    return None


def _label_key(raw: object, path: str) -> str:
    key = _string(raw, path)
    problem = _label_key_problem(key)
    if problem:
        _fail(path, f"{_show(key)} is not a valid label key: {problem}; use an optional DNS "
              f"subdomain prefix and '/', then a name of {_LABEL_RULE}")
    return key


def _label_value(raw: object, path: str) -> str:
    value = _string(raw, path)
    problem = _label_name_problem(value, "it")
    if problem:
        _fail(path, f"{_show(value)} is not a valid label value: {problem}; use {_LABEL_RULE}")
    return value


def _labels(raw: object, path: str) -> dict[str, str]:
    gather = _Gather()
    pairs = [gather.get(partial(_label, key, value, f"{path}[{json.dumps(key)}]"), ("", ""))
             for key, value in _fields(raw, path).items()]
    gather.check()
    return dict(pairs)


def _label(key: str, value: object, path: str) -> tuple[str, str]:
    gather = _Gather()
    gather.get(partial(_label_key, key, path), "")
    text = gather.get(partial(_label_value, value, path), "")
    gather.check()
    return key, text


def _name(raw: object, path: str, subdomain: bool) -> str:
    if raw is None or raw == "":
        _fail(path, "is required; give the object a name")
    name = _string(raw, path)
    if subdomain and not _is_dns_subdomain(name):
        _fail(path, f"{_show(name)} is not a DNS subdomain; use at most 253 lower-case "
              "letters, digits, '-' and '.', starting and ending with a letter or digit")
    if not subdomain and not _is_dns_label(name):
        _fail(path, f"{_show(name)} is not a DNS label; use at most 63 lower-case letters, "
              "digits and '-', starting and ending with a letter or digit")
    return name


# -- objects --------------------------------------------------------------------------


def _metadata(obj: Object, namespaced: bool, subdomain: bool) -> tuple[str, str, dict[str, str]]:
    """(namespace, name, labels); the namespace is "default" when not given."""
    meta = _fields(obj.get("metadata"), "metadata")
    gather = _Gather()
    name = gather.get(partial(_name, meta.get("name"), "metadata.name", subdomain), "")
    namespace = ""
    if namespaced:
        raw = meta.get("namespace")
        namespace = "default" if raw is None or raw == "" else gather.get(
            partial(_name, raw, "metadata.namespace", False), "")
    labels = gather.get(partial(_labels, meta.get("labels"), "metadata.labels"), {})
    gather.check()
    return namespace, name, labels


def _namespace(obj: Object) -> Namespace:
    _, name, labels = _metadata(obj, namespaced=False, subdomain=False)
    return Namespace(name, labels)


def _pod(obj: Object) -> Pod:
    gather = _Gather()
    namespace, name, labels = gather.get(partial(_metadata, obj, True, True), ("", "", {}))
    spec = gather.get(partial(_fields, obj.get("spec"), "spec"), {})
    node = gather.get(partial(_node_name, spec.get("nodeName")), "")
    host = gather.get(partial(_boolean, spec.get("hostNetwork"), "spec.hostNetwork"), False)
    containers = gather.get(partial(_items, spec.get("containers"), "spec.containers",
                                    _container_ports), ())
    ips = gather.get(partial(_pod_ips, obj.get("status")), ())
    gather.check()
    ports = tuple(port for container in containers for port in container)
    return Pod(namespace, name, labels, ips, node, ports, host)


def _node_name(raw: object) -> str:
    return "" if raw is None else _name(raw, "spec.nodeName", subdomain=True)


def _boolean(raw: object, path: str) -> bool:
    if raw is not None and not isinstance(raw, bool):
        _wrong_type(raw, path, "true or false")
    return bool(raw)


def _container_ports(raw: object, path: str) -> tuple[ContainerPort, ...]:
    container = _fields(raw, path)
    return _items(container.get("ports"), _join(path, "ports"), _container_port)


def _container_port(raw: object, path: str) -> ContainerPort:
    obj = _fields(raw, path)
    gather = _Gather()
    number = gather.get(lambda: _port_number(_required(
        obj, "containerPort", path, "give the port number the container listens on"),
        _join(path, "containerPort")), 0)
    protocol = gather.get(partial(_protocol, obj.get("protocol"), _join(path, "protocol")),
                          Protocol.TCP)
    name = gather.get(partial(_port_name, obj.get("name"), _join(path, "name")), "")
    gather.check()
    return ContainerPort(number, protocol, name)


def _port_name(raw: object, path: str) -> str:
    if raw is None:
        return ""
    name = _string(raw, path)
    problem = _port_name_problem(name)
    if problem:
        digits = f", or write {name} without quotes for a number" if name.isdigit() else ""
        _fail(path, f"{_show(name)} is not a valid port name: {problem}; use at most 15 "
              f"lower-case letters, digits and single '-' inside, with a letter{digits}")
    return name


def _pod_ips(raw: object) -> tuple[IPAddress, ...]:
    status = _fields(raw, "status")
    ips = _items(status.get("podIPs"), "status.podIPs", _pod_ip)
    if ips or status.get("podIP") is None:
        return ips
    return (_address(status.get("podIP"), "status.podIP"),)


def _pod_ip(raw: object, path: str) -> IPAddress:
    entry = _fields(raw, path)
    return _address(_required(entry, "ip", path, "give the pod's address"), _join(path, "ip"))


def _address(raw: object, path: str) -> IPAddress:
    text = _string(raw, path)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        _fail(path, f"{_show(text)} is not an IP address; write e.g. 10.244.1.5 or fd00::5")


# -- NetworkPolicy --------------------------------------------------------------------


def _policy(obj: Object) -> NetworkPolicy:
    _fields(obj, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    gather = _Gather()
    namespace, name, _ = gather.get(partial(_metadata, obj, True, True), ("", "", {}))
    policy = gather.get(partial(_spec, obj.get("spec"), namespace, name),
                        NetworkPolicy(namespace, name))
    gather.check()
    return policy


def _spec(raw: object, namespace: str, name: str) -> NetworkPolicy:
    if raw is None:
        _fail("spec", "is required; give at least podSelector: {} (every pod of the namespace)")
    spec = _fields(raw, "spec", ("podSelector", "policyTypes", "ingress", "egress"))
    gather = _Gather()
    selector = gather.get(lambda: _selector(_required(
        spec, "podSelector", "spec", "use podSelector: {} to select every pod of the "
        "namespace"), "spec.podSelector"), EVERYTHING)
    ingress = gather.get(partial(_rules, spec.get("ingress"), "spec.ingress", "from"), ())
    egress = gather.get(partial(_rules, spec.get("egress"), "spec.egress", "to"), ())
    types = gather.get(partial(_policy_types, spec.get("policyTypes"), bool(egress)),
                       frozenset())
    gather.check()
    return NetworkPolicy(namespace, name, selector, ingress, egress, types)


def _rules(raw: object, path: str, peers: str) -> tuple[Rule, ...]:
    return _items(raw, path, lambda item, at: _rule(item, at, peers))


def _rule(raw: object, path: str, peers_field: str) -> Rule:
    obj = _fields(raw, path, (peers_field, "ports"))
    gather = _Gather()
    peers = gather.get(partial(_items, obj.get(peers_field), _join(path, peers_field), _peer),
                       ())
    ports = gather.get(partial(_items, obj.get("ports"), _join(path, "ports"), _policy_port),
                       ())
    gather.check()
    return Rule(peers, ports)


def _peer(raw: object, path: str) -> Peer:
    kinds = ("podSelector", "namespaceSelector", "ipBlock")
    obj = _fields(raw, path, kinds)
    given = [key for key in kinds if obj.get(key) is not None]
    if not given:
        _fail(path, "is empty; give it a podSelector, a namespaceSelector or an ipBlock "
              "(podSelector: {} is every pod of the policy's namespace)")
    if "ipBlock" in given and len(given) > 1:
        _fail(path, f"has ipBlock together with {given[0]}; an ipBlock must be a peer of "
              "its own: split it into two peers")
    if given == ["ipBlock"]:
        return Peer(ip_block=_ip_block(obj["ipBlock"], _join(path, "ipBlock")))
    gather = _Gather()
    pods = gather.get(partial(_optional_selector, obj.get("podSelector"),
                              _join(path, "podSelector")), None)
    namespaces = gather.get(partial(_optional_selector, obj.get("namespaceSelector"),
                                    _join(path, "namespaceSelector")), None)
    gather.check()
    return Peer(pod_selector=pods, namespace_selector=namespaces)


def _optional_selector(raw: object, path: str) -> LabelSelector | None:
    return None if raw is None else _selector(raw, path)


def _selector(raw: object, path: str) -> LabelSelector:
    obj = _fields(raw, path, ("matchLabels", "matchExpressions"))
    gather = _Gather()
    labels = gather.get(partial(_labels, obj.get("matchLabels"), _join(path, "matchLabels")),
                        {})
    expressions = gather.get(partial(_items, obj.get("matchExpressions"),
                                     _join(path, "matchExpressions"), _requirement), ())
    gather.check()
    if not labels and not expressions:
        return EVERYTHING
    return LabelSelector(tuple(sorted(labels.items())), expressions)


def _requirement(raw: object, path: str) -> Requirement:
    obj = _fields(raw, path, ("key", "operator", "values"))
    gather = _Gather()
    key = gather.get(lambda: _label_key(_required(obj, "key", path, "give the label key"),
                                        _join(path, "key")), "")
    values = gather.get(partial(_items, obj.get("values"), _join(path, "values"),
                                _label_value), None)
    operator = gather.get(partial(_operator, obj.get("operator"), values, path),
                          Operator.EXISTS)
    gather.check()
    return Requirement(key, operator, frozenset(values or ()))


def _operator(raw: object, values: tuple[str, ...] | None, path: str) -> Operator:
    """The operator, and whether it may have `values` (None: invalid, reported already)."""
    if raw is None:
        _fail(_join(path, "operator"), f"is required; use {_either(list(Operator))}")
    operator = Operator(_choice(raw, _join(path, "operator"), list(Operator),
                                "a selector operator"))
    text = operator.value
    if values is None:
        return operator
    if operator in (Operator.IN, Operator.NOT_IN) and not values:
        _fail(_join(path, "values"), f"is empty but operator {text} needs values; list the "
              "values to match, or use Exists or DoesNotExist")
    if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
        _fail(_join(path, "values"), f"must be empty when operator is {text}; remove them, "
              "or use In or NotIn")
    return operator


def _ip_block(raw: object, path: str) -> IPBlock:
    obj = _fields(raw, path, ("cidr", "except"))
    cidr = _cidr(_required(obj, "cidr", path, "give the range, e.g. 10.0.0.0/16"),
                 _join(path, "cidr"))
    excepts = _items(obj.get("except"), _join(path, "except"),
                     lambda item, at: _except(item, at, cidr))
    return IPBlock(cidr, excepts)


_CIDR_FORM = re.compile(r"[0-9A-Fa-f:.]+/[0-9]{1,3}")


def _cidr(raw: object, path: str) -> IPNetwork:
    """A network in CIDR notation; host bits are allowed (and cleared), as the API allows."""
    text = _string(raw, path)
    try:
        if not _CIDR_FORM.fullmatch(text):
            raise ValueError(text)
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        _fail(path, f"{_show(text)} is not a CIDR; write an address and a prefix length, "
              "e.g. 10.0.0.0/16 or fd00::/64")


def _except(raw: object, path: str, cidr: IPNetwork) -> IPNetwork:
    net = _cidr(raw, path)
    if net.version != cidr.version:
        _fail(path, f"{net} is IPv{net.version} but cidr {cidr} is IPv{cidr.version}; use an "
              f"IPv{cidr.version} range inside {cidr}")
    if not net.subnet_of(cidr):  # type: ignore[arg-type]  # same version, checked above
        _fail(path, f"{net} is not inside cidr {cidr}; use a range inside {cidr}")
    if net.prefixlen == cidr.prefixlen:
        _fail(path, f"{net} is all of cidr {cidr}; an except must be smaller than its cidr "
              "(remove the peer to exclude the whole range)")
    return net


def _policy_port(raw: object, path: str) -> PolicyPort:
    obj = _fields(raw, path, ("protocol", "port", "endPort"))
    gather = _Gather()
    protocol = gather.get(partial(_protocol, obj.get("protocol"), _join(path, "protocol")),
                          Protocol.TCP)
    port = gather.get(partial(_port, obj.get("port"), _join(path, "port")), None)
    end = gather.get(partial(_end_port, obj.get("endPort"), port, obj.get("port"), path),
                     None)
    gather.check()
    return PolicyPort(protocol, port, end)


def _protocol(raw: object, path: str) -> Protocol:
    if raw is None:
        return Protocol.TCP
    return Protocol(_choice(raw, path, list(Protocol), "a supported protocol"))


def _port_number(raw: object, path: str) -> int:
    number = _integer(raw, path, "a port number")
    if not 1 <= number <= 65535:
        _fail(path, f"{number} is out of range; use a port from 1 to 65535")
    return number


def _port(raw: object, path: str) -> int | str | None:
    """A number, a container port's name, or None for every port."""
    if raw is None:
        return None
    if raw == "":
        _fail(path, "is empty; give a port number or name, or remove port for every port")
    if isinstance(raw, str):
        return _port_name(raw, path)
    return _port_number(raw, path)


def _end_port(raw: object, port: int | str | None, raw_port: object, path: str) -> int | None:
    if raw is None:
        return None
    end = _port_number(raw, _join(path, "endPort"))
    if raw_port is None:
        _fail(_join(path, "endPort"), f"{end} is given without a port; add the range's first "
              "port as port")
    if isinstance(port, str):
        _fail(_join(path, "endPort"), f"{end} cannot end a range of the named port "
              f"{_show(port)}; use a port number, or remove endPort")
    if port is not None and end < port:
        _fail(_join(path, "endPort"), f"{end} is below port {port}; use an endPort of at "
              f"least {port}")
    return end


def _policy_types(raw: object, has_egress_rules: bool) -> frozenset[Direction]:
    types = _items(raw, "spec.policyTypes", _direction)
    if len(types) > 2:
        _fail("spec.policyTypes", f"has {len(types)} entries; list Ingress, Egress or both")
    return frozenset(types) if types else default_policy_types(has_egress_rules)


def _direction(raw: object, path: str) -> Direction:
    return Direction(_choice(raw, path, list(Direction), "a policy type"))


def _choice(raw: object, path: str, choices: Sequence[str], what: str) -> str:
    """One of `choices`, spelt exactly: the API's enumerations are case-sensitive."""
    text = _string(raw, path)
    if text in choices:
        return text
    same = [choice for choice in choices if choice.lower() == text.lower()]
    fix = f"write it as {same[0]} (the case matters)" if same else f"use {_either(choices)}"
    _fail(path, f"{_show(text)} is not {what}; {fix}")


def _either(choices: Sequence[str]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


# -- documents ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    api_version: str
    namespaced: bool
    build: Callable[[Object], Model]


_KINDS = {
    "Namespace": _Kind("v1", False, _namespace),
    "Pod": _Kind("v1", True, _pod),
    "NetworkPolicy": _Kind("networking.k8s.io/v1", True, _policy),
}
_LISTS = {"List": "", "NamespaceList": "Namespace", "PodList": "Pod",
          "NetworkPolicyList": "NetworkPolicy"}
_SUPPORTED = "(Namespace, Pod, NetworkPolicy)"


def _documents(text: str, source: str) -> list[object]:
    """The documents of a YAML (or JSON) text, empty ones as None."""
    if text.lstrip().startswith(("{", "[")):
        try:
            return [json.loads(text)]
        except (ValueError, RecursionError):
            pass  # not JSON after all (or JSON that only YAML reads): YAML says where
    documents: list[object] = []
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
    meta = meta if isinstance(meta, dict) else {}
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
        for number, document in enumerate(_documents(text, source), 1):
            self._add(document, source, f"document {number}", "")

    def _add(self, raw: object, source: str, where: str, item_kind: str) -> None:
        if raw is None:
            return
        if not isinstance(raw, dict):
            self._error(source, where, "", f"is {_kind_of(raw)}, not a Kubernetes object; "
                        f"give an object with apiVersion and kind {_SUPPORTED}")
            return
        if item_kind and raw.get("kind") is None:
            raw = {"apiVersion": _KINDS[item_kind].api_version, "kind": item_kind, **raw}
        kind = raw.get("kind")
        if kind is None or kind == "":
            self._error(source, where, "kind", f"is required; give the object a kind "
                        f"{_SUPPORTED}")
        elif not isinstance(kind, str):
            self._error(source, where, "kind", f"must be a string, not {_kind_of(kind)}; "
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
            self._error(source, where, "items", f"must be a list, not {_kind_of(items)}; "
                        "write the list's objects as '- ' items")
            return
        for index, item in enumerate(items or []):
            self._add(item, source, f"{where} items[{index}]", item_kind)

    def _add_object(self, kind: str, raw: Object, source: str, where: str) -> None:
        spec = _KINDS[kind]
        name = _describe(kind, raw, where)
        if raw.get("apiVersion") != spec.api_version:
            self._error(source, name, "apiVersion", f"{_show(raw.get('apiVersion'))} is not "
                        f"served for {kind}; use {spec.api_version}")
            return
        try:
            built = spec.build(raw)
        except _Invalid as invalid:
            for problem in invalid.problems:
                self._error(source, name, problem.field, problem.detail)
            return
        self._keep(built, kind, name, f"{where} of {source}" if source != "-" else where,
                   source)

    def _keep(self, built: Model, kind: str, name: str, where: str, source: str) -> None:
        key = (kind, built.name if isinstance(built, Namespace) else built.key)
        if key in self.objects:
            self._error(source, name, "metadata.name", f"{_show(built.name)} is already "
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


def _expand(path: str) -> list[str]:
    """A directory's manifests (as `kubectl apply -f DIR`: not recursive), else the path."""
    if path == "-" or not os.path.isdir(path):
        return [path]
    names = sorted(n for n in os.listdir(path) if n.endswith((".yaml", ".yml", ".json")))
    return [os.path.join(path, name) for name in names]


def _read(path: str, stdin: TextIO) -> str:
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
