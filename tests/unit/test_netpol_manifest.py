"""manifest: Kubernetes YAML/JSON into the NetworkPolicy model, validated as the API validates."""

from __future__ import annotations

import io
import ipaddress
import json
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from tartan.netpol.manifest import Loaded, ManifestError, load, load_files, load_objects
from tartan.netpol.model import (
    EVERYTHING,
    ContainerPort,
    Direction,
    IPBlock,
    LabelSelector,
    Operator,
    Peer,
    Pod,
    PolicyPort,
    Protocol,
    Requirement,
    Rule,
)

INGRESS = frozenset({Direction.INGRESS})
EGRESS = frozenset({Direction.EGRESS})
BOTH = frozenset({Direction.INGRESS, Direction.EGRESS})


def netpol(spec: Any, name: str = "p", namespace: str | None = "x") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
            "spec": spec}


def pod(spec: Any = None, status: Any = None, **meta: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": "web-1", **meta}}
    if spec is not None:
        obj["spec"] = spec
    if status is not None:
        obj["status"] = status
    return obj


def namespace(name: str = "prod", **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, **meta}}


def loads(*objects: Any) -> Loaded:
    return load(yaml.safe_dump_all(objects))


def only_policy(spec: Any) -> Any:
    loaded = loads(netpol(spec))
    assert loaded.errors == () and len(loaded.policies) == 1
    return loaded.policies[0]


def errors(*objects: Any) -> tuple[ManifestError, ...]:
    loaded = loads(*objects)
    assert loaded.errors and not (loaded.policies or loaded.pods or loaded.namespaces)
    return loaded.errors


def one_error(obj: Any) -> ManifestError:
    found = errors(obj)
    assert len(found) == 1, [str(e) for e in found]
    return found[0]


def port_spec(port: Any) -> dict[str, Any]:
    return {"podSelector": {}, "ingress": [{"ports": [port]}]}


def peer_spec(peer: Any) -> dict[str, Any]:
    return {"podSelector": {}, "ingress": [{"from": [peer]}]}


def selector_spec(selector: Any) -> dict[str, Any]:
    return {"podSelector": selector}


def block(cidr: Any, *excepts: Any) -> dict[str, Any]:
    return peer_spec({"ipBlock": {"cidr": cidr, "except": list(excepts)}})


# -- NetworkPolicy: what it reads -----------------------------------------------------

DOCS_TEST_NETWORK_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
    - Ingress
    - Egress
  ingress:
    - from:
        - ipBlock:
            cidr: 172.17.0.0/16
            except:
              - 172.17.1.0/24
        - namespaceSelector:
            matchLabels:
              project: myproject
        - podSelector:
            matchLabels:
              role: frontend
      ports:
        - protocol: TCP
          port: 6379
  egress:
    - to:
        - ipBlock:
            cidr: 10.0.0.0/24
      ports:
        - protocol: TCP
          port: 5978
"""


def test_the_docs_test_network_policy():
    loaded = load(DOCS_TEST_NETWORK_POLICY)
    assert loaded.errors == () and loaded.unknown == ()
    (policy,) = loaded.policies
    assert policy.key == "default/test-network-policy"
    assert policy.pod_selector == LabelSelector((("role", "db"),))
    assert policy.policy_types == BOTH
    net = ipaddress.ip_network
    assert policy.ingress == (Rule(
        peers=(Peer(ip_block=IPBlock(net("172.17.0.0/16"), (net("172.17.1.0/24"),))),
               Peer(namespace_selector=LabelSelector((("project", "myproject"),))),
               Peer(pod_selector=LabelSelector((("role", "frontend"),)))),
        ports=(PolicyPort(Protocol.TCP, 6379),)),)
    assert policy.egress == (Rule(peers=(Peer(ip_block=IPBlock(net("10.0.0.0/24"))),),
                                  ports=(PolicyPort(Protocol.TCP, 5978),)),)


def test_namespace_and_pod_selector_in_one_peer_is_one_peer_with_both():
    policy = only_policy(peer_spec({"namespaceSelector": {"matchLabels": {"user": "alice"}},
                                    "podSelector": {"matchLabels": {"role": "client"}}}))
    assert policy.ingress[0].peers == (Peer(
        pod_selector=LabelSelector((("role", "client"),)),
        namespace_selector=LabelSelector((("user", "alice"),))),)


def test_namespace_and_pod_selector_in_two_peers_are_two_peers_with_one_each():
    text = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: two-peers}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          user: alice
    - podSelector:
        matchLabels:
          role: client
"""
    (policy,) = load(text).policies
    assert policy.ingress[0].peers == (
        Peer(namespace_selector=LabelSelector((("user", "alice"),))),
        Peer(pod_selector=LabelSelector((("role", "client"),))))


def test_the_docs_end_port_range():
    text = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: multi-port-egress
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
    - Egress
  egress:
    - to:
        - ipBlock:
            cidr: 10.0.0.0/24
      ports:
        - protocol: TCP
          port: 32000
          endPort: 32768
"""
    (policy,) = load(text).policies
    assert policy.policy_types == EGRESS and policy.ingress == ()
    assert policy.egress[0].ports == (PolicyPort(Protocol.TCP, 32000, 32768),)


def test_a_named_port_is_kept_as_its_name_and_a_pod_resolves_it():
    text = """\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  containers:
  - name: nginx
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 53, protocol: UDP}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-http, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports:
    - port: http
"""
    loaded = load(text)
    (web,), (policy,) = loaded.pods, loaded.policies
    assert policy.ingress[0].ports == (PolicyPort(Protocol.TCP, "http"),)
    assert web.named_port("http", Protocol.TCP) == 8080 and policy.selects(web)
    assert web.named_port("dns", Protocol.UDP) == 53


@pytest.mark.parametrize("spec, ingress, egress, types", [
    ({"podSelector": {}}, (), (), INGRESS),  # default deny ingress
    ({"podSelector": {}, "policyTypes": ["Egress"]}, (), (), EGRESS),  # default deny egress
    ({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, (), (), BOTH),
    ({"podSelector": {}, "ingress": [{}]}, (Rule(),), (), INGRESS),  # allow all ingress
    ({"podSelector": {}, "egress": [{}]}, (), (Rule(),), BOTH),  # egress rules: both
    ({"podSelector": {}, "egress": []}, (), (), INGRESS),  # no egress rules: ingress only
    ({"podSelector": {}, "egress": [{}], "policyTypes": []}, (), (Rule(),), BOTH),
    ({"podSelector": {}, "policyTypes": ["Ingress", "Ingress"]}, (), (), INGRESS),
], ids=["deny-ingress", "deny-egress", "deny-both", "allow-all-ingress", "egress-rule",
        "empty-egress", "empty-types", "repeated-type"])
def test_policy_types_default_as_the_api_server_does(spec, ingress, egress, types):
    policy = only_policy(spec)
    assert (policy.ingress, policy.egress, policy.policy_types) == (ingress, egress, types)


def test_defaults_protocol_tcp_every_port_and_namespace_default():
    loaded = loads(netpol({"podSelector": {}, "ingress": [{"ports": [{"port": 80}, {}]}]},
                          namespace=None))
    (policy,) = loaded.policies
    assert policy.namespace == "default"
    assert policy.ingress[0].ports == (PolicyPort(Protocol.TCP, 80), PolicyPort(Protocol.TCP))


@pytest.mark.parametrize("protocol", ["TCP", "UDP", "SCTP"])
def test_each_protocol(protocol):
    policy = only_policy(port_spec({"protocol": protocol, "port": 9}))
    assert policy.ingress[0].ports == (PolicyPort(Protocol(protocol), 9),)


def test_null_fields_are_absent_ones():
    text = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  ingress:
  - from:
    ports:
  egress:
"""
    (policy,) = load(text).policies
    assert policy.ingress == (Rule(),) and policy.egress == () and policy.policy_types == INGRESS


def test_a_missing_selector_is_none_and_an_empty_one_selects_everything():
    policy = only_policy({"podSelector": {}, "ingress": [{"from": [
        {"podSelector": {}}, {"namespaceSelector": {}},
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}}]}]})
    assert policy.pod_selector is EVERYTHING
    first, second, third = policy.ingress[0].peers
    assert first == Peer(pod_selector=EVERYTHING) and first.namespace_selector is None
    assert second == Peer(namespace_selector=EVERYTHING) and second.pod_selector is None
    assert third == Peer(LabelSelector((("a", "b"),)), EVERYTHING)


def test_selectors_keep_labels_sorted_and_expressions_with_value_sets():
    policy = only_policy(selector_spec({
        "matchLabels": {"tier": "db", "app": "shop", "example.com/team": ""},
        "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "stage"]},
                             {"key": "env", "operator": "NotIn", "values": ["dev"]},
                             {"key": "canary", "operator": "DoesNotExist"},
                             {"key": "app", "operator": "Exists", "values": []}]}))
    assert policy.pod_selector == LabelSelector(
        (("app", "shop"), ("example.com/team", ""), ("tier", "db")),
        (Requirement("env", Operator.IN, frozenset({"prod", "stage"})),
         Requirement("env", Operator.NOT_IN, frozenset({"dev"})),
         Requirement("canary", Operator.DOES_NOT_EXIST),
         Requirement("app", Operator.EXISTS)))


@pytest.mark.parametrize("cidr, excepts, network, nets", [
    ("10.0.0.1/24", [], "10.0.0.0/24", ()),  # host bits: accepted and cleared, as the API
    ("0.0.0.0/0", ["10.0.0.0/8", "192.168.0.0/16"], "0.0.0.0/0",
     ("10.0.0.0/8", "192.168.0.0/16")),
    ("fd00::/48", ["fd00:0:0:1::/64"], "fd00::/48", ("fd00:0:0:1::/64",)),
    ("10.0.0.0/16", ["10.0.1.7/24"], "10.0.0.0/16", ("10.0.1.0/24",)),
    ("10.1.2.3/32", [], "10.1.2.3/32", ()),
])
def test_ip_blocks(cidr, excepts, network, nets):
    policy = only_policy(block(cidr, *excepts))
    assert policy.ingress[0].peers[0].ip_block == IPBlock(
        ipaddress.ip_network(network), tuple(ipaddress.ip_network(n) for n in nets))


# -- NetworkPolicy: what it rejects, each with its field, value and fix -----------------

SPEC_ERRORS = [
    # ipBlock
    (block("10.0.0.0"), "spec.ingress[0].from[0].ipBlock.cidr", '"10.0.0.0" is not a CIDR'),
    (block("10.0.0.0/33"), "spec.ingress[0].from[0].ipBlock.cidr", '"10.0.0.0/33"'),
    (block("10.0.0.0/255.255.0.0"), "spec.ingress[0].from[0].ipBlock.cidr", "not a CIDR"),
    (block("any"), "spec.ingress[0].from[0].ipBlock.cidr", '"any" is not a CIDR'),
    (block("010.0.0.0/8"), "spec.ingress[0].from[0].ipBlock.cidr", "not a CIDR"),
    (block(10), "spec.ingress[0].from[0].ipBlock.cidr", "must be a string"),
    (peer_spec({"ipBlock": {"except": ["10.0.0.0/8"]}}), "spec.ingress[0].from[0].ipBlock.cidr",
     "is required"),
    (block("10.0.0.0/16", "10.1.0.0/24"), "spec.ingress[0].from[0].ipBlock.except[0]",
     "10.1.0.0/24 is not inside cidr 10.0.0.0/16"),
    (block("10.0.0.0/16", "10.0.0.0/8"), "spec.ingress[0].from[0].ipBlock.except[0]",
     "is not inside cidr"),
    (block("10.0.0.0/16", "10.0.1.0/24", "fd00::/64"),
     "spec.ingress[0].from[0].ipBlock.except[1]", "fd00::/64 is IPv6 but cidr 10.0.0.0/16"),
    (block("10.0.0.0/16", "10.0.0.0/16"), "spec.ingress[0].from[0].ipBlock.except[0]",
     "is all of cidr 10.0.0.0/16"),
    (block("10.0.0.0/16", "10.0.9.9/16"), "spec.ingress[0].from[0].ipBlock.except[0]",
     "is all of cidr"),
    (block("10.0.0.0/16", "nope"), "spec.ingress[0].from[0].ipBlock.except[0]",
     '"nope" is not a CIDR'),
    (peer_spec({"ipBlock": {"cidr": "10.0.0.0/8", "except": "10.1.0.0/16"}}),
     "spec.ingress[0].from[0].ipBlock.except", "must be a list, not a string"),
    # ports
    (port_spec({"port": 0}), "spec.ingress[0].ports[0].port", "0 is out of range"),
    (port_spec({"port": 65536}), "spec.ingress[0].ports[0].port", "65536 is out of range"),
    (port_spec({"port": -80}), "spec.ingress[0].ports[0].port", "-80 is out of range"),
    (port_spec({"port": True}), "spec.ingress[0].ports[0].port", "not a boolean"),
    (port_spec({"port": 80.5}), "spec.ingress[0].ports[0].port", "not a decimal number"),
    (port_spec({"port": ""}), "spec.ingress[0].ports[0].port", "is empty"),
    (port_spec({"port": "Http"}), "spec.ingress[0].ports[0].port", '"Http" is not a valid port'),
    (port_spec({"port": "http_alt"}), "spec.ingress[0].ports[0].port", "characters other"),
    (port_spec({"port": "8080"}), "spec.ingress[0].ports[0].port", "it has no letter"),
    (port_spec({"port": "a" * 16}), "spec.ingress[0].ports[0].port", "longer than 15"),
    (port_spec({"port": "-http"}), "spec.ingress[0].ports[0].port", "starts or ends with '-'"),
    (port_spec({"port": "http-"}), "spec.ingress[0].ports[0].port", "starts or ends with '-'"),
    (port_spec({"port": "h--p"}), "spec.ingress[0].ports[0].port", "has '--'"),
    (port_spec({"port": 80, "endPort": 79}), "spec.ingress[0].ports[0].endPort",
     "79 is below port 80; use an endPort of at least 80"),
    (port_spec({"port": "http", "endPort": 90}), "spec.ingress[0].ports[0].endPort",
     'named port "http"'),
    (port_spec({"endPort": 90}), "spec.ingress[0].ports[0].endPort", "without a port"),
    (port_spec({"port": 80, "endPort": 70000}), "spec.ingress[0].ports[0].endPort",
     "70000 is out of range"),
    (port_spec({"port": 80, "endPort": "90"}), "spec.ingress[0].ports[0].endPort",
     "remove the quotes"),
    (port_spec({"protocol": "tcp", "port": 80}), "spec.ingress[0].ports[0].protocol",
     '"tcp" is not a supported protocol; write it as TCP'),
    (port_spec({"protocol": "ICMP"}), "spec.ingress[0].ports[0].protocol",
     "use TCP, UDP or SCTP"),
    (port_spec({"protocol": 6}), "spec.ingress[0].ports[0].protocol", "must be a string"),
    (port_spec({"Port": 80}), "spec.ingress[0].ports[0].Port", "not a known field"),
    # selectors
    (selector_spec({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}),
     "spec.podSelector.matchExpressions[0].operator", '"Gt" is not a selector operator'),
    (selector_spec({"matchExpressions": [{"key": "a", "operator": "exists"}]}),
     "spec.podSelector.matchExpressions[0].operator", "write it as Exists"),
    (selector_spec({"matchExpressions": [{"key": "a"}]}),
     "spec.podSelector.matchExpressions[0].operator", "is required"),
    (selector_spec({"matchExpressions": [{"key": "a", "operator": "In"}]}),
     "spec.podSelector.matchExpressions[0].values", "operator In needs values"),
    (selector_spec({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}),
     "spec.podSelector.matchExpressions[0].values", "operator NotIn needs values"),
    (selector_spec({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
     "spec.podSelector.matchExpressions[0].values", "must be empty when operator is Exists"),
    (selector_spec({"matchExpressions": [{"key": "a", "operator": "DoesNotExist",
                                          "values": ["x"]}]}),
     "spec.podSelector.matchExpressions[0].values", "operator is DoesNotExist"),
    (selector_spec({"matchExpressions": [{"key": "a b", "operator": "Exists"}]}),
     "spec.podSelector.matchExpressions[0].key", '"a b" is not a valid label key'),
    (selector_spec({"matchExpressions": [{"operator": "Exists"}]}),
     "spec.podSelector.matchExpressions[0].key", "is required"),
    (selector_spec({"matchExpressions": [{"key": "a", "operator": "In", "values": ["-x"]}]}),
     "spec.podSelector.matchExpressions[0].values[0]", '"-x" is not a valid label value'),
    (selector_spec({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]}),
     "spec.podSelector.matchExpressions[0].values", "must be a list"),
    (selector_spec({"matchExpressions": {"key": "a"}}),
     "spec.podSelector.matchExpressions", "must be a list, not an object"),
    (selector_spec({"matchLabels": {"-app": "web"}}), 'spec.podSelector.matchLabels["-app"]',
     "does not start and end with a letter or digit"),
    (selector_spec({"matchLabels": {"a/b/c": "web"}}), 'spec.podSelector.matchLabels["a/b/c"]',
     "more than one '/'"),
    (selector_spec({"matchLabels": {"Example.COM/app": "web"}}),
     'spec.podSelector.matchLabels["Example.COM/app"]', "is not a DNS subdomain"),
    (selector_spec({"matchLabels": {"example.com/": "web"}}),
     'spec.podSelector.matchLabels["example.com/"]', "its name is empty"),
    (selector_spec({"matchLabels": {"k" * 64: "web"}}),
     f'spec.podSelector.matchLabels["{"k" * 64}"]', "64 characters long"),
    (selector_spec({"matchLabels": {"": "web"}}), 'spec.podSelector.matchLabels[""]',
     "its name is empty"),
    (selector_spec({"matchLabels": {"app": "web server"}}), 'spec.podSelector.matchLabels["app"]',
     '"web server" is not a valid label value'),
    (selector_spec({"matchLabels": {"app": "v" * 64}}), 'spec.podSelector.matchLabels["app"]',
     "64 characters long"),
    (selector_spec({"matchLabels": {"app": "web-"}}), 'spec.podSelector.matchLabels["app"]',
     "does not start and end"),
    (selector_spec({"matchLabels": {"version": 1.5}}),
     'spec.podSelector.matchLabels["version"]', "not a decimal number (1.5); quote it"),
    (selector_spec({"matchLabels": {"on": True}}), 'spec.podSelector.matchLabels["on"]',
     "not a boolean (true); quote it"),
    (selector_spec({"matchLabels": ["app=web"]}), "spec.podSelector.matchLabels",
     "must be an object, not a list"),
    (selector_spec("app=web"), "spec.podSelector", 'must be an object, not a string ("app=web")'),
    (selector_spec({"matchlabels": {"app": "web"}}), "spec.podSelector.matchlabels",
     "is not a known field; use one of matchLabels, matchExpressions"),
    # peers
    (peer_spec({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}),
     "spec.ingress[0].from[0]", "has ipBlock together with podSelector"),
    (peer_spec({"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}),
     "spec.ingress[0].from[0]", "has ipBlock together with namespaceSelector"),
    (peer_spec({}), "spec.ingress[0].from[0]", "is empty; give it a podSelector"),
    (peer_spec(None), "spec.ingress[0].from[0]", "is empty"),
    (peer_spec({"podSelector": None}), "spec.ingress[0].from[0]", "is empty"),
    ({"podSelector": {}, "egress": [{"to": [{}]}]}, "spec.egress[0].to[0]", "is empty"),
    (peer_spec({"podselector": {}}), "spec.ingress[0].from[0].podselector",
     "use one of podSelector, namespaceSelector, ipBlock"),
    (peer_spec({"namespaceSelector": {"matchLabels": {"a": "-"}}}),
     'spec.ingress[0].from[0].namespaceSelector.matchLabels["a"]', "not a valid label value"),
    (peer_spec({"ipBlock": {"CIDR": "10.0.0.0/8"}}), "spec.ingress[0].from[0].ipBlock.CIDR",
     "not a known field; use one of cidr, except"),
    # rules, types and the spec
    ({"podSelector": {}, "ingress": [{"form": [{"podSelector": {}}]}]}, "spec.ingress[0].form",
     "is not a known field; use one of from, ports"),
    ({"podSelector": {}, "ingress": [{"to": []}]}, "spec.ingress[0].to", "use one of from, ports"),
    ({"podSelector": {}, "egress": [{"from": []}]}, "spec.egress[0].from", "use one of to, ports"),
    ({"podSelector": {}, "ingres": []}, "spec.ingres", "not a known field"),
    ({"podSelector": {}, "ingress": "all"}, "spec.ingress", 'must be a list, not a string ("all")'),
    ({"podSelector": {}, "ingress": [{"from": {"podSelector": {}}}]}, "spec.ingress[0].from",
     "must be a list, not an object"),
    ({"podSelector": {}, "ingress": [{"ports": 80}]}, "spec.ingress[0].ports",
     "must be a list, not a number (80)"),
    ({"podSelector": {}, "ingress": ["x"]}, "spec.ingress[0]", "must be an object"),
    ({"podSelector": {}, "policyTypes": ["ingress"]}, "spec.policyTypes[0]",
     '"ingress" is not a policy type; write it as Ingress'),
    ({"podSelector": {}, "policyTypes": ["Both"]}, "spec.policyTypes[0]",
     "use Ingress or Egress"),
    ({"podSelector": {}, "policyTypes": "Ingress"}, "spec.policyTypes", "must be a list"),
    ({"podSelector": {}, "policyTypes": ["Ingress", "Egress", "Ingress"]}, "spec.policyTypes",
     "has 3 entries"),
    ({}, "spec.podSelector", "is required; use podSelector: {}"),
    ({"ingress": [{}]}, "spec.podSelector", "is required"),
    ({"podSelector": None}, "spec.podSelector", "is required"),
    (None, "spec", "is required"),
    ([], "spec", "must be an object, not a list"),
]


@pytest.mark.parametrize("spec, field, says", SPEC_ERRORS,
                         ids=[f"{i}:{case[1]}" for i, case in enumerate(SPEC_ERRORS)])
def test_an_invalid_policy_is_reported_with_its_field(spec, field, says):
    error = one_error(netpol(spec))
    assert (error.source, error.obj, error.field) == ("-", "NetworkPolicy x/p", field)
    assert error.message.startswith(f"NetworkPolicy x/p: {field} ")
    assert says in error.message and "; " in error.message  # the bad value, then the fix
    assert "\n" not in str(error) and str(error) == error.message


@pytest.mark.parametrize("metadata, field, says", [
    ({"name": "Allow_80"}, "metadata.name", '"Allow_80" is not a DNS subdomain'),
    ({"name": "a" * 254}, "metadata.name", "is not a DNS subdomain"),
    ({"name": "p", "namespace": "Kube_System"}, "metadata.namespace",
     '"Kube_System" is not a DNS label'),
    ({"name": "p", "namespace": "a.b"}, "metadata.namespace", "is not a DNS label"),
    ({"name": "p", "namespace": 7}, "metadata.namespace", "must be a string"),
    ({"name": "p", "labels": {"a": []}}, 'metadata.labels["a"]', "must be a string, not a list"),
])
def test_policy_metadata_is_validated(metadata, field, says):
    obj = netpol({"podSelector": {}})
    obj["metadata"] = metadata
    error = one_error(obj)
    assert error.field == field and says in error.message


@pytest.mark.parametrize("metadata", [{}, {"generateName": "p-"}, None, {"name": ""}])
def test_a_policy_without_a_name_is_named_by_its_document(metadata):
    obj = netpol({"podSelector": {}})
    obj["metadata"] = metadata
    error = one_error(obj)
    assert (error.obj, error.field) == ("document 1", "metadata.name")
    assert error.message == "document 1: metadata.name is required; give the object a name"


def test_metadata_that_is_not_an_object():
    obj = netpol({"podSelector": {}})
    obj["metadata"] = "p"
    assert one_error(obj).field == "metadata"


def test_an_unknown_top_level_field_of_a_policy_is_an_error():
    obj = {**netpol({"podSelector": {}}), "specs": {}}
    error = one_error(obj)
    assert error.field == "specs" and "use one of apiVersion, kind, metadata, spec" in str(error)


def test_every_problem_of_one_policy_is_reported_together():
    found = errors(netpol({"podSelector": {"matchLabels": {"a": "-"}}, "policyTypes": ["x"],
                           "ingress": [{"ports": [{"port": 0}, {"protocol": "icmp"}]},
                                       {"from": [{}]}]}))
    assert [e.field for e in found] == [
        'spec.podSelector.matchLabels["a"]', "spec.ingress[0].ports[0].port",
        "spec.ingress[0].ports[1].protocol", "spec.ingress[1].from[0]", "spec.policyTypes[0]"]


def test_one_invalid_policy_is_skipped_and_the_others_are_loaded():
    loaded = loads(netpol({"podSelector": {}}, name="deny-all"),
                   netpol(port_spec({"port": 80, "endPort": 79}), name="allow-80"),
                   netpol({"podSelector": {}, "egress": [{}]}, name="allow-egress"),
                   namespace("x"), pod(namespace="x"))
    assert [p.name for p in loaded.policies] == ["deny-all", "allow-egress"]
    assert [n.name for n in loaded.namespaces] == ["x"] and len(loaded.pods) == 1
    (error,) = loaded.errors
    assert str(error) == ("NetworkPolicy x/allow-80: spec.ingress[0].ports[0].endPort 79 is "
                          "below port 80; use an endPort of at least 80")


# -- Pods and Namespaces ---------------------------------------------------------------


def test_a_pod_with_everything():
    text = """\
apiVersion: v1
kind: Pod
metadata:
  name: web-7d4b9.abc
  namespace: shop
  labels: {app: web, app.kubernetes.io/version: "1.2"}
spec:
  nodeName: node-1.example.com
  containers:
  - name: app
    image: nginx
    ports:
    - {containerPort: 8080, name: http}
    - {containerPort: 8443, name: https, protocol: TCP, hostPort: 443}
  - name: sidecar
    ports:
    - {containerPort: 53, protocol: UDP, name: dns}
    - {containerPort: 9000, protocol: SCTP}
status:
  phase: Running
  podIP: 10.244.1.5
  podIPs:
  - ip: 10.244.1.5
  - ip: fd00:10:244:1::5
"""
    (got,) = load(text).pods
    assert got == Pod(
        "shop", "web-7d4b9.abc", {"app": "web", "app.kubernetes.io/version": "1.2"},
        (ipaddress.ip_address("10.244.1.5"), ipaddress.ip_address("fd00:10:244:1::5")),
        "node-1.example.com",
        (ContainerPort(8080, Protocol.TCP, "http"), ContainerPort(8443, Protocol.TCP, "https"),
         ContainerPort(53, Protocol.UDP, "dns"), ContainerPort(9000, Protocol.SCTP)))
    assert got.labels == {"app": "web", "app.kubernetes.io/version": "1.2"}


def test_pod_defaults_and_the_single_pod_ip():
    loaded = loads(pod(), pod(name="b", status={"podIP": "10.0.0.9"},
                             spec={"hostNetwork": True, "containers": [{"name": "c"}]}))
    first, second = loaded.pods
    assert first == Pod("default", "web-1") and first.ips == () and not first.host_network
    assert second.ips == (ipaddress.ip_address("10.0.0.9"),) and second.host_network


@pytest.mark.parametrize("obj, field, says", [
    (pod({"containers": [{"ports": [{"containerPort": 0}]}]}),
     "spec.containers[0].ports[0].containerPort", "0 is out of range"),
    (pod({"containers": [{}, {"ports": [{"containerPort": 65536}]}]}),
     "spec.containers[1].ports[0].containerPort", "65536 is out of range"),
    (pod({"containers": [{"ports": [{"name": "http"}]}]}),
     "spec.containers[0].ports[0].containerPort", "is required"),
    (pod({"containers": [{"ports": [{"containerPort": "80"}]}]}),
     "spec.containers[0].ports[0].containerPort", "remove the quotes"),
    (pod({"containers": [{"ports": [{"containerPort": 80, "name": "HTTP"}]}]}),
     "spec.containers[0].ports[0].name", '"HTTP" is not a valid port name'),
    (pod({"containers": [{"ports": [{"containerPort": 80, "protocol": "udp"}]}]}),
     "spec.containers[0].ports[0].protocol", "write it as UDP"),
    (pod({"containers": {"name": "c"}}), "spec.containers", "must be a list"),
    (pod({"containers": [{"ports": "80"}]}), "spec.containers[0].ports", "must be a list"),
    (pod({"hostNetwork": "yes"}), "spec.hostNetwork", "must be true or false"),
    (pod({"nodeName": "Node_1"}), "spec.nodeName", "is not a DNS subdomain"),
    (pod("x"), "spec", "must be an object"),
    (pod(status={"podIP": "10.0.0.300"}), "status.podIP", '"10.0.0.300" is not an IP address'),
    (pod(status={"podIPs": [{"ip": "10.0.0.1"}, {"ip": "nope"}]}), "status.podIPs[1].ip",
     "is not an IP address"),
    (pod(status={"podIPs": [{}]}), "status.podIPs[0].ip", "is required"),
    (pod(status={"podIPs": ["10.0.0.1"]}), "status.podIPs[0]", "must be an object"),
    (pod(name="Web"), "metadata.name", "is not a DNS subdomain"),
    (pod(namespace="shop.prod"), "metadata.namespace", "is not a DNS label"),
    (pod(labels={"app": "a b"}), 'metadata.labels["app"]', "is not a valid label value"),
    (pod(labels={"x/y/z": "a"}), 'metadata.labels["x/y/z"]', "is not a valid label key"),
    (pod(labels="app=web"), "metadata.labels", "must be an object"),
])
def test_an_invalid_pod_is_reported_with_its_field(obj, field, says):
    error = one_error(obj)
    assert error.field == field and says in error.message and "; " in error.message
    assert error.message.startswith(f"{error.obj}: {field} ") and error.obj.startswith("Pod ")


def test_namespaces_with_labels():
    loaded = loads(namespace("prod", labels={"team": "shop", "kubernetes.io/metadata.name":
                                             "prod"}), namespace("dev", namespace="ignored"))
    assert [n.name for n in loaded.namespaces] == ["prod", "dev"]
    assert loaded.namespaces[0].labels == {"team": "shop", "kubernetes.io/metadata.name": "prod"}
    assert loaded.namespaces[1].labels == {}


@pytest.mark.parametrize("obj, field, says", [
    (namespace("Prod"), "metadata.name", '"Prod" is not a DNS label'),
    (namespace("prod.eu"), "metadata.name", "is not a DNS label"),
    (namespace("a" * 64), "metadata.name", "is not a DNS label"),
    (namespace(labels={"tier": 1}), 'metadata.labels["tier"]', "not a number (1); quote it"),
])
def test_an_invalid_namespace_is_reported_with_its_field(obj, field, says):
    error = one_error(obj)
    assert error.field == field and says in error.message


def test_label_keys_that_are_not_strings():
    error = one_error(namespace(labels={1: "a"}))
    assert error.field == "metadata.labels" and "quote it" in error.message


def test_the_loaded_objects_make_a_cluster():
    loaded = loads(namespace("x", labels={"team": "a"}), pod(namespace="x"),
                   netpol({"podSelector": {}}))
    cluster = loaded.cluster()
    assert cluster.policies == loaded.policies and cluster.pods == loaded.pods
    assert cluster.namespace_labels("x")["team"] == "a"


# -- documents, lists and kinds -------------------------------------------------------


def test_several_documents_with_empty_ones_skipped_and_counted():
    text = "---\n" + yaml.safe_dump(namespace("a")) + "---\n---\n# only a comment\n---\n" + \
        "kind: Namespace\n---\nnull\n"
    loaded = load(text)
    assert [n.name for n in loaded.namespaces] == ["a"]
    (error,) = loaded.errors
    assert (error.obj, error.field) == ("document 4", "apiVersion")


def test_json_is_read_too_even_indented_with_tabs():
    text = json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        namespace("a"), netpol({"podSelector": {}})]}, indent="\t")
    loaded = load(text)
    assert [n.name for n in loaded.namespaces] == ["a"] and len(loaded.policies) == 1


@pytest.mark.parametrize("kind, item_kind", [
    ("List", None), ("NetworkPolicyList", "NetworkPolicy"), ("PodList", "Pod"),
    ("NamespaceList", "Namespace")])
def test_lists_as_kubectl_reads_them(kind, item_kind):
    items = {"NetworkPolicy": [netpol({"podSelector": {}}, name="a"),
                               netpol({"podSelector": {}}, name="b")],
             "Pod": [pod(name="a"), pod(name="b")],
             "Namespace": [namespace("a"), namespace("b")]}
    every = [item for group in items.values() for item in group]
    chosen = items[item_kind] if item_kind else every
    loaded = loads({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"},
                    "items": chosen})
    assert loaded.errors == ()
    got = [o.name for o in (*loaded.namespaces, *loaded.pods, *loaded.policies)]
    assert got == ["a", "b"] * (3 if item_kind is None else 1)


def test_items_of_a_typed_list_may_leave_out_kind_and_api_version_as_the_api_serves_them():
    item = netpol({"podSelector": {}})
    del item["kind"], item["apiVersion"]
    loaded = loads({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList",
                    "items": [item, {"metadata": {"name": "Bad"}, "spec": {"podSelector": {}}}]})
    assert [p.name for p in loaded.policies] == ["p"]
    (error,) = loaded.errors
    assert error.obj == "NetworkPolicy default/Bad" and error.field == "metadata.name"


def test_lists_nest_and_their_problems_name_the_item():
    loaded = loads({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "List", "items": [namespace("a"), {"kind": "Namespace"}]},
        "x", None]})
    assert [n.name for n in loaded.namespaces] == ["a"]
    assert [(e.obj, e.field) for e in loaded.errors] == [
        ("document 1 items[0] items[1]", "apiVersion"), ("document 1 items[1]", "")]
    assert loaded.errors[1].message == ("document 1 items[1] is a string, not a Kubernetes "
                                        "object; give an object with apiVersion and kind "
                                        "(Namespace, Pod, NetworkPolicy)")


def test_list_items_that_are_not_a_list():
    error = one_error({"apiVersion": "v1", "kind": "List", "items": {"a": 1}})
    assert (error.obj, error.field) == ("document 1", "items")


def test_other_kinds_are_reported_apart_and_skipped():
    loaded = loads({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "web", "namespace": "shop"}},
                   {"apiVersion": "v1", "kind": "ConfigMap"}, namespace("a"))
    assert loaded.errors == () and [n.name for n in loaded.namespaces] == ["a"]
    assert [str(e) for e in loaded.unknown] == [
        "Deployment shop/web: kind Deployment is not supported (Namespace, Pod, NetworkPolicy)",
        "document 2: kind ConfigMap is not supported (Namespace, Pod, NetworkPolicy)"]
    assert all(e.field == "kind" for e in loaded.unknown)


@pytest.mark.parametrize("obj, field, says", [
    ({"apiVersion": "extensions/v1beta1", "kind": "NetworkPolicy", "metadata": {"name": "p"}},
     "apiVersion", '"extensions/v1beta1" is not served for NetworkPolicy; use '
     "networking.k8s.io/v1"),
    ({"kind": "Pod", "metadata": {"name": "p"}}, "apiVersion", "null is not served for Pod"),
    ({"apiVersion": "networking.k8s.io/v1", "kind": "Namespace", "metadata": {"name": "p"}},
     "apiVersion", "use v1"),
    ({"apiVersion": "v1", "metadata": {"name": "p"}}, "kind", "is required"),
    ({"apiVersion": "v1", "kind": ["Pod"]}, "kind", "must be a string, not a list"),
    (["a", "b"], "", "is a list, not a Kubernetes object"),
    ("just words", "", "is a string, not a Kubernetes object"),
])
def test_documents_that_are_not_objects_tartan_reads(obj, field, says):
    error = one_error(obj)
    assert error.field == field and says in error.message


def test_text_that_is_not_yaml_raises_with_the_document_and_line():
    text = yaml.safe_dump(namespace("a")) + "---\nkind: Pod\nmetadata: {name: [x}\n"
    with pytest.raises(ManifestError) as raised:
        load(text, source="bad.yaml")
    error = raised.value
    assert (error.source, error.obj, error.field) == ("bad.yaml", "document 2", "")
    assert "is not YAML" in str(error) and "(line 7, column 20)" in str(error)
    assert str(error).startswith("bad.yaml: document 2 is not YAML: ")


@pytest.mark.parametrize("text", ["a: [1", "a: 2020-13-45", "{{{", "\tkind: Pod",
                                  "!!python/object:os.system {}", "a: b: c"])
def test_nothing_but_manifest_errors_come_out(text):
    with pytest.raises(ManifestError):
        load(text)


def test_any_shape_gives_errors_not_exceptions():
    shapes: list[Any] = [None, 1, "x", [], {}, [1], {"a": 1}, True, 1.5]
    for shape in shapes:
        for spec in (shape, {"podSelector": shape}, peer_spec(shape), port_spec(shape),
                     block(shape), selector_spec({"matchExpressions": [shape]}),
                     {"podSelector": {}, "ingress": [{"from": shape, "ports": shape}]}):
            loaded = loads(netpol(spec), pod(spec), pod(status=shape), namespace(labels=shape))
            assert all(isinstance(e, ManifestError) for e in loaded.errors)


def test_a_duplicate_object_is_reported_and_the_first_kept():
    loaded = loads(netpol({"podSelector": {}}), netpol({"podSelector": {}, "ingress": [{}]}),
                   namespace("a"), namespace("a"))
    assert len(loaded.policies) == 1 and loaded.policies[0].ingress == ()
    assert [(e.obj, e.field) for e in loaded.errors] == [
        ("NetworkPolicy x/p", "metadata.name"), ("Namespace a", "metadata.name")]
    assert "already defined in document 1" in loaded.errors[0].message


def test_a_pod_and_a_policy_may_share_a_name():
    loaded = loads(pod(name="p", namespace="x"), netpol({"podSelector": {}}))
    assert loaded.errors == () and len(loaded.pods) == len(loaded.policies) == 1


# -- decoded objects ------------------------------------------------------------------


def test_load_objects_reads_decoded_objects_as_load_reads_their_text():
    objects = [namespace("x", labels={"team": "a"}), pod(namespace="x"),
               netpol(port_spec({"port": 80}))]
    loaded = load_objects(objects, "store")
    assert loaded == loads(*objects) and loaded.errors == ()
    assert [len(loaded.namespaces), len(loaded.pods), len(loaded.policies)] == [1, 1, 1]


def test_load_objects_skips_and_reports_an_invalid_object_and_keeps_the_others():
    loaded = load_objects([netpol({"podSelector": {}}, name="deny-all"),
                           netpol(port_spec({"port": 80, "endPort": 79}), name="allow-80"),
                           {"apiVersion": "v1", "kind": "Namespace"}, namespace("x")], "store")
    assert [p.name for p in loaded.policies] == ["deny-all"]
    assert [n.name for n in loaded.namespaces] == ["x"]
    assert [str(e) for e in loaded.errors] == [
        "store: NetworkPolicy x/allow-80: spec.ingress[0].ports[0].endPort 79 is below port "
        "80; use an endPort of at least 80",
        "store: document 3: metadata.name is required; give the object a name"]


def test_load_objects_reads_a_list_and_leaves_its_input_as_it_was():
    bare = {"metadata": {"name": "b"}}
    objects = [{"apiVersion": "v1", "kind": "List", "items": [namespace("a"), "x"]},
               {"apiVersion": "v1", "kind": "NamespaceList", "items": [bare]}]
    loaded = load_objects(objects, "store")
    assert [n.name for n in loaded.namespaces] == ["a", "b"]
    assert [(e.obj, e.field) for e in loaded.errors] == [("document 1 items[1]", "")]
    assert bare == {"metadata": {"name": "b"}}


def test_load_objects_reports_an_item_that_is_not_a_mapping_by_its_number():
    items: list[Any] = [namespace("a"), "x", None, [namespace("b")],
                        MappingProxyType(namespace("c"))]
    loaded = load_objects(items, "store")
    assert [n.name for n in loaded.namespaces] == ["a", "c"]
    assert [e.message for e in loaded.errors] == [
        "document 2 is a string, not a Kubernetes object; give an object with apiVersion and "
        "kind (Namespace, Pod, NetworkPolicy)",
        "document 4 is a list, not a Kubernetes object; give an object with apiVersion and "
        "kind (Namespace, Pod, NetworkPolicy)"]


# -- files ----------------------------------------------------------------------------


def test_load_files_merges_files_and_stdin_and_names_the_file(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.json"
    first.write_text(yaml.safe_dump_all([namespace("a"), netpol({"podSelector": "x"})]))
    second.write_text(json.dumps(netpol({"podSelector": {}}, name="q")))
    stdin = io.StringIO(yaml.safe_dump(pod()))
    loaded = load_files([str(first), "-", str(second)], stdin=stdin)
    assert [n.name for n in loaded.namespaces] == ["a"] and len(loaded.pods) == 1
    assert [p.name for p in loaded.policies] == ["q"]
    (error,) = loaded.errors
    assert error.source == str(first) and str(error).startswith(f"{first}: NetworkPolicy x/p: ")


def test_load_files_reports_a_duplicate_across_files(tmp_path):
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text(yaml.safe_dump(namespace("a")))
    loaded = load_files([str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")])
    (error,) = loaded.errors
    assert error.source == str(tmp_path / "b.yaml")
    assert f"already defined in document 1 of {tmp_path / 'a.yaml'}" in error.message


def test_load_files_reads_a_directory_as_kubectl_does(tmp_path):
    (tmp_path / "1.yaml").write_text(yaml.safe_dump(namespace("a")))
    (tmp_path / "2.yml").write_text(yaml.safe_dump(namespace("b")))
    (tmp_path / "3.json").write_text(json.dumps(namespace("c")))
    (tmp_path / "README.md").write_text("not a manifest: {")
    loaded = load_files([str(tmp_path)])
    assert [n.name for n in loaded.namespaces] == ["a", "b", "c"]


def test_a_file_that_cannot_be_read_raises_naming_it(tmp_path):
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(ManifestError) as raised:
        load_files([missing])
    assert raised.value.source == missing
    assert str(raised.value).startswith(f"{missing}: cannot be read: No such file")
    binary = tmp_path / "np.yaml"
    binary.write_bytes(b"kind: \xff\xfe\n")
    with pytest.raises(ManifestError, match="is not UTF-8 text"):
        load_files([str(binary)])


def test_an_error_names_its_source():
    loaded = load(yaml.safe_dump(namespace("A")), source="ns.yaml")
    (error,) = loaded.errors
    assert error.source == "ns.yaml" and error.message.startswith("Namespace A: metadata.name")
    assert str(error) == f"ns.yaml: {error.message}"
    assert isinstance(error, ValueError)
