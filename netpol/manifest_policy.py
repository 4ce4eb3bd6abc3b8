"""NetworkPolicy objects of a manifest read into the model (for `manifest`), validated as the
API server validates them: strictly, so that a typo such as `form:` is an error rather than
"allow everyone". Every problem of a policy is reported at once (`k8s_fields.Gather`).
"""

from __future__ import annotations

from functools import partial

from tartan.netpol.k8s_fields import (
    Gather,
    Object,
    choice,
    either,
    fail,
    fields,
    items,
    join,
    label_key,
    label_map,
    label_value,
    metadata,
    network,
    port_name,
    port_number,
    port_protocol,
    required,
    show,
)
from tartan.netpol.model import (
    EVERYTHING,
    Direction,
    IPBlock,
    IPNetwork,
    LabelSelector,
    NetworkPolicy,
    Operator,
    Peer,
    PolicyPort,
    Protocol,
    Requirement,
    Rule,
    default_policy_types,
)


def policy(obj: Object) -> NetworkPolicy:
    fields(obj, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    gather = Gather()
    namespace, name, _ = gather.get(partial(metadata, obj, True, True), ("", "", {}))
    policy = gather.get(partial(_spec, obj.get("spec"), namespace, name),
                        NetworkPolicy(namespace, name))
    gather.check()
    return policy


def _spec(raw: object, namespace: str, name: str) -> NetworkPolicy:
    if raw is None:
        fail("spec", "is required; give at least podSelector: {} (every pod of the namespace)")
    spec = fields(raw, "spec", ("podSelector", "policyTypes", "ingress", "egress"))
    gather = Gather()
    selector = gather.get(lambda: _selector(required(
        spec, "podSelector", "spec", "use podSelector: {} to select every pod of the "
        "namespace"), "spec.podSelector"), EVERYTHING)
    ingress = gather.get(partial(_rules, spec.get("ingress"), "spec.ingress", "from"), ())
    egress = gather.get(partial(_rules, spec.get("egress"), "spec.egress", "to"), ())
    types = gather.get(partial(_policy_types, spec.get("policyTypes"), bool(egress)),
                       frozenset())
    gather.check()
    return NetworkPolicy(namespace, name, selector, ingress, egress, types)


def _rules(raw: object, path: str, peers: str) -> tuple[Rule, ...]:
    return items(raw, path, lambda item, at: _rule(item, at, peers))


def _rule(raw: object, path: str, peers_field: str) -> Rule:
    obj = fields(raw, path, (peers_field, "ports"))
    gather = Gather()
    peers = gather.get(partial(items, obj.get(peers_field), join(path, peers_field), _peer),
                       ())
    ports = gather.get(partial(items, obj.get("ports"), join(path, "ports"), _policy_port),
                       ())
    gather.check()
    return Rule(peers, ports)


def _peer(raw: object, path: str) -> Peer:
    kinds = ("podSelector", "namespaceSelector", "ipBlock")
    obj = fields(raw, path, kinds)
    given = [key for key in kinds if obj.get(key) is not None]
    if not given:
        fail(path, "is empty; give it a podSelector, a namespaceSelector or an ipBlock "
             "(podSelector: {} is every pod of the policy's namespace)")
    if "ipBlock" in given and len(given) > 1:
        fail(path, f"has ipBlock together with {given[0]}; an ipBlock must be a peer of "
             "its own: split it into two peers")
    if given == ["ipBlock"]:
        return Peer(ip_block=_ip_block(obj["ipBlock"], join(path, "ipBlock")))
    gather = Gather()
    pods = gather.get(partial(_optional_selector, obj.get("podSelector"),
                              join(path, "podSelector")), None)
    namespaces = gather.get(partial(_optional_selector, obj.get("namespaceSelector"),
                                    join(path, "namespaceSelector")), None)
    gather.check()
    return Peer(pod_selector=pods, namespace_selector=namespaces)


def _optional_selector(raw: object, path: str) -> LabelSelector | None:
    return None if raw is None else _selector(raw, path)


def _selector(raw: object, path: str) -> LabelSelector:
    obj = fields(raw, path, ("matchLabels", "matchExpressions"))
    gather = Gather()
    labels = gather.get(partial(label_map, obj.get("matchLabels"), join(path, "matchLabels")),
                        {})
    expressions = gather.get(partial(items, obj.get("matchExpressions"),
                                     join(path, "matchExpressions"), _requirement), ())
    gather.check()
    if not labels and not expressions:
        return EVERYTHING
    return LabelSelector(tuple(sorted(labels.items())), expressions)


def _requirement(raw: object, path: str) -> Requirement:
    obj = fields(raw, path, ("key", "operator", "values"))
    gather = Gather()
    key = gather.get(lambda: label_key(required(obj, "key", path, "give the label key"),
                                       join(path, "key")), "")
    values = gather.get(partial(items, obj.get("values"), join(path, "values"),
                                label_value), None)
    operator = gather.get(partial(_operator, obj.get("operator"), values, path),
                          Operator.EXISTS)
    gather.check()
    return Requirement(key, operator, frozenset(values or ()))


def _operator(raw: object, values: tuple[str, ...] | None, path: str) -> Operator:
    """The operator, and whether it may have `values` (None: invalid, reported already)."""
    if raw is None:
        fail(join(path, "operator"), f"is required; use {either(list(Operator))}")
    operator = Operator(choice(raw, join(path, "operator"), list(Operator),
                               "a selector operator"))
    text = operator.value
    if values is None:
        return operator
    if operator in (Operator.IN, Operator.NOT_IN) and not values:
        fail(join(path, "values"), f"is empty but operator {text} needs values; list the "
             "values to match, or use Exists or DoesNotExist")
    if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
        fail(join(path, "values"), f"must be empty when operator is {text}; remove them, "
             "or use In or NotIn")
    return operator


def _ip_block(raw: object, path: str) -> IPBlock:
    obj = fields(raw, path, ("cidr", "except"))
    cidr = network(required(obj, "cidr", path, "give the range, e.g. 10.0.0.0/16"),
                   join(path, "cidr"))
    excepts = items(obj.get("except"), join(path, "except"),
                    lambda item, at: _except(item, at, cidr))
    return IPBlock(cidr, excepts)


def _except(raw: object, path: str, cidr: IPNetwork) -> IPNetwork:
    net = network(raw, path)
    if net.version != cidr.version:
        fail(path, f"{net} is IPv{net.version} but cidr {cidr} is IPv{cidr.version}; use an "
             f"IPv{cidr.version} range inside {cidr}")
    if not net.subnet_of(cidr):  # type: ignore[arg-type]  # same version, checked above
        fail(path, f"{net} is not inside cidr {cidr}; use a range inside {cidr}")
    if net.prefixlen == cidr.prefixlen:
        fail(path, f"{net} is all of cidr {cidr}; an except must be smaller than its cidr "
             "(remove the peer to exclude the whole range)")
    return net


def _policy_port(raw: object, path: str) -> PolicyPort:
    obj = fields(raw, path, ("protocol", "port", "endPort"))
    gather = Gather()
    protocol = gather.get(partial(port_protocol, obj.get("protocol"), join(path, "protocol")),
                          Protocol.TCP)
    port = gather.get(partial(_port, obj.get("port"), join(path, "port")), None)
    end = gather.get(partial(_end_port, obj.get("endPort"), port, obj.get("port"), path),
                     None)
    gather.check()
    return PolicyPort(protocol, port, end)


def _port(raw: object, path: str) -> int | str | None:
    """A number, a container port's name, or None for every port."""
    if raw is None:
        return None
    if raw == "":
        fail(path, "is empty; give a port number or name, or remove port for every port")
    if isinstance(raw, str):
        return port_name(raw, path)
    return port_number(raw, path)


def _end_port(raw: object, port: int | str | None, raw_port: object, path: str) -> int | None:
    if raw is None:
        return None
    end = port_number(raw, join(path, "endPort"))
    if raw_port is None:
        fail(join(path, "endPort"), f"{end} is given without a port; add the range's first "
             "port as port")
    if isinstance(port, str):
        fail(join(path, "endPort"), f"{end} cannot end a range of the named port "
             f"{show(port)}; use a port number, or remove endPort")
    if port is not None and end < port:
        fail(join(path, "endPort"), f"{end} is below port {port}; use an endPort of at "
             f"least {port}")
    return end


def _policy_types(raw: object, has_egress_rules: bool) -> frozenset[Direction]:
    types = items(raw, "spec.policyTypes", _direction)
    if len(types) > 2:
        fail("spec.policyTypes", f"has {len(types)} entries; list Ingress, Egress or both")
    return frozenset(types) if types else default_policy_types(has_egress_rules)


def _direction(raw: object, path: str) -> Direction:
    return Direction(choice(raw, path, list(Direction), "a policy type"))
