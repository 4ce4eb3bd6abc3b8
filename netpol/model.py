"""The objects NetworkPolicy is about, as networking.k8s.io/v1 and core/v1 define them.

Only what enforcement needs is kept. Every object is immutable and already validated (see
manifest.py, which builds them from Kubernetes YAML or JSON). Semantics that the API leaves
to defaulting are resolved here once: a port's protocol is TCP when not given, and a policy's
`policyTypes` are computed when the manifest leaves them out.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Labels = Mapping[str, str]


class Protocol(enum.StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class Direction(enum.StrEnum):
    INGRESS = "Ingress"
    EGRESS = "Egress"


class Operator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


# -- label selectors ------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    """One of a selector's matchExpressions."""

    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Labels) -> bool:
        present = self.key in labels
        if self.operator is Operator.IN:
            return present and labels[self.key] in self.values
        if self.operator is Operator.NOT_IN:
            return not present or labels[self.key] not in self.values
        if self.operator is Operator.EXISTS:
            return present
        return not present


@dataclass(frozen=True)
class LabelSelector:
    """matchLabels and matchExpressions, all of which must hold; empty selects everything."""

    match_labels: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Labels) -> bool:
        return (all(labels.get(key) == value for key, value in self.match_labels)
                and all(req.matches(labels) for req in self.match_expressions))

    @property
    def selects_all(self) -> bool:
        return not self.match_labels and not self.match_expressions


EVERYTHING = LabelSelector()


# -- namespaces and pods --------------------------------------------------------------


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def with_default_labels(self) -> Namespace:
        """kube-apiserver adds kubernetes.io/metadata.name to every namespace."""
        if self.labels.get(METADATA_NAME) == self.name:
            return self
        return Namespace(self.name, {**self.labels, METADATA_NAME: self.name})


METADATA_NAME = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class ContainerPort:
    port: int
    protocol: Protocol = Protocol.TCP
    name: str = ""  # an IANA_SVC_NAME, as a policy's named port refers to it


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    ips: tuple[IPAddress, ...] = ()
    node: str = ""
    ports: tuple[ContainerPort, ...] = ()
    host_network: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str, protocol: Protocol) -> int | None:
        """The number this pod gives the port `name` for `protocol`, if it has one."""
        return next((p.port for p in self.ports if p.name == name and p.protocol is protocol),
                    None)


# -- NetworkPolicy --------------------------------------------------------------------


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    except_: tuple[IPNetwork, ...] = ()  # each inside cidr (validated)

    def contains(self, address: IPAddress) -> bool:
        return (address.version == self.cidr.version and address in self.cidr
                and not any(address in net for net in self.except_))


@dataclass(frozen=True)
class Peer:
    """One entry of a rule's from/to: pods (by selectors) or an ipBlock, never both.

    pod_selector alone: pods of the policy's namespace; namespace_selector alone: every pod
    of the selected namespaces; both: the selected pods of the selected namespaces.
    """

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    """A port of a rule: a number (with an optional endPort range), a name, or every port of
    the protocol (port None)."""

    protocol: Protocol = Protocol.TCP
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    """An ingress or egress rule: no peers allows every peer, no ports allows every port."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector = EVERYTHING
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    policy_types: frozenset[Direction] = frozenset({Direction.INGRESS})

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress

    def isolates(self, direction: Direction) -> bool:
        return direction in self.policy_types

    def selects(self, pod: Pod) -> bool:
        """hostNetwork pods are never selected: their traffic is the node's."""
        return (pod.namespace == self.namespace and not pod.host_network
                and self.pod_selector.matches(pod.labels))


def default_policy_types(has_egress_rules: bool) -> frozenset[Direction]:
    """What the API server fills in when policyTypes is not given."""
    if has_egress_rules:
        return frozenset({Direction.INGRESS, Direction.EGRESS})
    return frozenset({Direction.INGRESS})


@dataclass(frozen=True)
class Cluster:
    """Everything a policy decision depends on."""

    namespaces: tuple[Namespace, ...] = ()
    pods: tuple[Pod, ...] = ()
    policies: tuple[NetworkPolicy, ...] = ()

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        known = self._namespace_labels
        return known[name] if name in known else Namespace(name).with_default_labels().labels

    def peer_pods(self, peer: Peer, policy_namespace: str) -> list[Pod]:
        """The pods a pod peer selects (none for an ipBlock peer). hostNetwork pods are
        not selected by pod selectors: they have the node's addresses."""
        if peer.ip_block is not None:
            return []
        if peer.namespace_selector is not None:
            selector = peer.namespace_selector
            namespaces = [ns for ns in self._pods_by_namespace
                          if selector.matches(self.namespace_labels(ns))]
        else:
            namespaces = [policy_namespace]
        pods = [p for ns in namespaces for p in self._pods_by_namespace.get(ns, ())]
        if peer.pod_selector is not None:
            pods = [p for p in pods if peer.pod_selector.matches(p.labels)]
        return pods

    def pods_on(self, node: str) -> list[Pod]:
        """The pods the store places on `node` (hostNetwork ones too)."""
        return self._pods_by_node.get(node, [])

    def policies_in(self, namespace: str) -> list[NetworkPolicy]:
        """The policies of one namespace (a policy selects only pods of its own)."""
        return self._policies_by_namespace.get(namespace, [])

    # Indexes, made on first use (the cluster is immutable): a compile asks for thousands of
    # peers, and each would otherwise walk every pod and every namespace.
    @functools.cached_property
    def _namespace_labels(self) -> dict[str, Mapping[str, str]]:
        return {ns.name: ns.with_default_labels().labels for ns in self.namespaces}

    @functools.cached_property
    def _pods_by_namespace(self) -> dict[str, list[Pod]]:
        index: dict[str, list[Pod]] = {}
        for pod in self.pods:
            if not pod.host_network:
                index.setdefault(pod.namespace, []).append(pod)
        return index

    @functools.cached_property
    def _policies_by_namespace(self) -> dict[str, list[NetworkPolicy]]:
        index: dict[str, list[NetworkPolicy]] = {}
        for policy in self.policies:
            index.setdefault(policy.namespace, []).append(policy)
        return index

    @functools.cached_property
    def _pods_by_node(self) -> dict[str, list[Pod]]:
        index: dict[str, list[Pod]] = {}
        for pod in self.pods:
            index.setdefault(pod.node, []).append(pod)
        return index
