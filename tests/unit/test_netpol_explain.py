"""The policy model's verdicts against the Kubernetes e2e model and its expected tables.

The cluster is upstream's: namespaces x, y, z; pods a, b, c in each (label pod=<name>),
serving 80 and 81 over TCP and UDP on ports named serve-<port>-<protocol>. Every case writes
out its expected grid (rows from, columns to, `.` allowed, `X` denied), one for all
(port, protocol) pairs ("*") unless a pair has its own; a mismatch fails with render_diff.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, ip_address

import pytest

from tartan.netpol.explain import (
    Cell,
    Side,
    Table,
    compare,
    render,
    render_diff,
    to_json,
    truth_table,
    verdict,
)
from tartan.netpol.model import (
    EVERYTHING,
    METADATA_NAME,
    Cluster,
    ContainerPort,
    Direction,
    IPBlock,
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

TCP, UDP, SCTP = Protocol.TCP, Protocol.UDP, Protocol.SCTP
INGRESS, EGRESS = Direction.INGRESS, Direction.EGRESS
BOTH = frozenset({INGRESS, EGRESS})
PODS = [f"{ns}/{name}" for ns in "xyz" for name in "abc"]
SERVE = tuple(ContainerPort(port, protocol, f"serve-{port}-{protocol.value.lower()}")
              for protocol in (TCP, UDP) for port in (80, 81))


# -- the model ------------------------------------------------------------------------


def namespace(name: str, **extra: str) -> Namespace:
    return Namespace(name, {"ns": name, METADATA_NAME: name, **extra})


def pod(key: str, **changes) -> Pod:
    """x/a is 10.0.1.1, z/c is 10.0.3.3."""
    ns, name = key.split("/")
    address = ip_address(f"10.0.{'xyz'.index(ns) + 1}.{'abc'.index(name) + 1}")
    return replace(Pod(ns, name, {"pod": name}, (address,), "node-1", SERVE), **changes)


NAMESPACES = tuple(namespace(ns) for ns in "xyz")


def cluster(*policies: NetworkPolicy, pods: tuple[Pod, ...] | None = None,
            namespaces: tuple[Namespace, ...] = NAMESPACES) -> Cluster:
    return Cluster(namespaces, pods or tuple(pod(key) for key in PODS), policies)


def labels(**pairs: str) -> LabelSelector:
    return LabelSelector(match_labels=tuple(sorted(pairs.items())))


def expr(key: str, operator: Operator, *values: str) -> LabelSelector:
    return LabelSelector(match_expressions=(Requirement(key, operator, frozenset(values)),))


def policy(ns: str, name: str, select: LabelSelector = EVERYTHING, *,
           ingress: tuple[Rule, ...] = (), egress: tuple[Rule, ...] = (),
           types: frozenset[Direction] | None = None) -> NetworkPolicy:
    """policyTypes default as the API server fills them in."""
    types = default_policy_types(bool(egress)) if types is None else types
    return NetworkPolicy(ns, name, select, ingress, egress, types)


def rule(*peers: Peer, ports: tuple[PolicyPort, ...] = ()) -> Rule:
    return Rule(peers, ports)


def from_ns(name: str) -> Peer:
    return Peer(namespace_selector=labels(ns=name))


# -- expected tables ------------------------------------------------------------------


def grid(text: str) -> dict[tuple[str, str], bool]:
    header, *rows = text.strip().splitlines()
    assert header.split() == PODS
    cells = {}
    for row in rows:
        src, *marks = row.split()
        assert len(marks) == len(PODS) and set(marks) <= {".", "X"}, row
        cells.update({(src, dst): m == "." for dst, m in zip(PODS, marks, strict=True)})
    assert {src for src, _ in cells} == set(PODS)
    return cells


def check(model: Cluster, expected: dict[str, str], ports: tuple[int, ...] = (80, 81),
          protocols: tuple[Protocol, ...] = (TCP, UDP)) -> Table:
    table = truth_table(model, ports, protocols)
    written = {}
    for port, protocol in table.grids():
        text = expected.get(f"{port}/{protocol.value}", expected.get("*"))
        assert text is not None, f"no grid for {port}/{protocol.value}"
        written.update({(src, dst, port, protocol): allowed
                        for (src, dst), allowed in grid(text).items()})
    assert not compare(table, written), ("model vs the grids written here (as observed):\n"
                                         + render_diff(table, written))
    return table


HEAD = "    x/a x/b x/c  y/a y/b y/c  z/a z/b z/c"

ALL = HEAD + """
x/a  .   .   .    .   .   .    .   .   .
x/b  .   .   .    .   .   .    .   .   .
x/c  .   .   .    .   .   .    .   .   .
y/a  .   .   .    .   .   .    .   .   .
y/b  .   .   .    .   .   .    .   .   .
y/c  .   .   .    .   .   .    .   .   .
z/a  .   .   .    .   .   .    .   .   .
z/b  .   .   .    .   .   .    .   .   .
z/c  .   .   .    .   .   .    .   .   .
"""

DENY_TO_X = HEAD + """
x/a  X   X   X    .   .   .    .   .   .
x/b  X   X   X    .   .   .    .   .   .
x/c  X   X   X    .   .   .    .   .   .
y/a  X   X   X    .   .   .    .   .   .
y/b  X   X   X    .   .   .    .   .   .
y/c  X   X   X    .   .   .    .   .   .
z/a  X   X   X    .   .   .    .   .   .
z/b  X   X   X    .   .   .    .   .   .
z/c  X   X   X    .   .   .    .   .   .
"""

DENY_FROM_X = HEAD + """
x/a  X   X   X    X   X   X    X   X   X
x/b  X   X   X    X   X   X    X   X   X
x/c  X   X   X    X   X   X    X   X   X
y/a  .   .   .    .   .   .    .   .   .
y/b  .   .   .    .   .   .    .   .   .
y/c  .   .   .    .   .   .    .   .   .
z/a  .   .   .    .   .   .    .   .   .
z/b  .   .   .    .   .   .    .   .   .
z/c  .   .   .    .   .   .    .   .   .
"""

NONE_TO_XA = HEAD + """
x/a  X   .   .    .   .   .    .   .   .
x/b  X   .   .    .   .   .    .   .   .
x/c  X   .   .    .   .   .    .   .   .
y/a  X   .   .    .   .   .    .   .   .
y/b  X   .   .    .   .   .    .   .   .
y/c  X   .   .    .   .   .    .   .   .
z/a  X   .   .    .   .   .    .   .   .
z/b  X   .   .    .   .   .    .   .   .
z/c  X   .   .    .   .   .    .   .   .
"""

ONLY_XB_TO_XA = HEAD + """
x/a  X   .   .    .   .   .    .   .   .
x/b  .   .   .    .   .   .    .   .   .
x/c  X   .   .    .   .   .    .   .   .
y/a  X   .   .    .   .   .    .   .   .
y/b  X   .   .    .   .   .    .   .   .
y/c  X   .   .    .   .   .    .   .   .
z/a  X   .   .    .   .   .    .   .   .
z/b  X   .   .    .   .   .    .   .   .
z/c  X   .   .    .   .   .    .   .   .
"""

X_TO_XA = HEAD + """
x/a  .   .   .    .   .   .    .   .   .
x/b  .   .   .    .   .   .    .   .   .
x/c  .   .   .    .   .   .    .   .   .
y/a  X   .   .    .   .   .    .   .   .
y/b  X   .   .    .   .   .    .   .   .
y/c  X   .   .    .   .   .    .   .   .
z/a  X   .   .    .   .   .    .   .   .
z/b  X   .   .    .   .   .    .   .   .
z/c  X   .   .    .   .   .    .   .   .
"""

Y_TO_XA = HEAD + """
x/a  X   .   .    .   .   .    .   .   .
x/b  X   .   .    .   .   .    .   .   .
x/c  X   .   .    .   .   .    .   .   .
y/a  .   .   .    .   .   .    .   .   .
y/b  .   .   .    .   .   .    .   .   .
y/c  .   .   .    .   .   .    .   .   .
z/a  X   .   .    .   .   .    .   .   .
z/b  X   .   .    .   .   .    .   .   .
z/c  X   .   .    .   .   .    .   .   .
"""


# -- isolation ------------------------------------------------------------------------


def test_no_policy_allows_everything():
    table = check(cluster(), {"*": ALL})
    assert table.cell("x/a", "y/b", 80, TCP).verdict == verdict(
        cluster(), pod("x/a"), pod("y/b"), 80, TCP)
    assert table.cell("x/a", "y/b", 80, TCP).verdict.egress == Side(False, True, ())


def test_default_deny_ingress_isolates_the_namespace():
    check(cluster(policy("x", "deny-ingress")), {"*": DENY_TO_X})


def test_default_deny_egress():
    check(cluster(policy("x", "deny-egress", types=frozenset({EGRESS}))), {"*": DENY_FROM_X})


def test_deny_all_both_directions():
    check(cluster(policy("x", "deny-all", types=BOTH)), {"*": HEAD + """
x/a  X   X   X    X   X   X    X   X   X
x/b  X   X   X    X   X   X    X   X   X
x/c  X   X   X    X   X   X    X   X   X
y/a  X   X   X    .   .   .    .   .   .
y/b  X   X   X    .   .   .    .   .   .
y/c  X   X   X    .   .   .    .   .   .
z/a  X   X   X    .   .   .    .   .   .
z/b  X   X   X    .   .   .    .   .   .
z/c  X   X   X    .   .   .    .   .   .
"""})
    denied = verdict(cluster(policy("x", "deny-all", types=BOTH)), pod("x/a"), pod("x/b"), 80, TCP)
    assert denied.egress == Side(True, False, ("x/deny-all egress",))
    assert denied.ingress == Side(True, False, ("x/deny-all ingress",))
    assert denied.by == ("x/deny-all egress", "x/deny-all ingress")


def test_allow_all_ingress_with_an_empty_rule():
    model = cluster(policy("x", "allow-all", ingress=(Rule(),)))
    check(model, {"*": ALL})
    allowed = verdict(model, pod("z/c"), pod("x/a"), 81, UDP)
    assert allowed.ingress == Side(True, True, ("x/allow-all ingress rule 0",))
    assert allowed.by == ("x/allow-all ingress rule 0",)


@pytest.mark.parametrize(("ingress", "types", "expected"), [
    ((), frozenset({INGRESS}), DENY_TO_X),  # `ingress: []` or no ingress, policyTypes Ingress
    ((Rule(),), frozenset({INGRESS}), ALL),  # `ingress: [{}]`
    ((), frozenset({EGRESS}), ALL),  # no ingress field, policyTypes [Egress], egress [{}]
], ids=["empty-list", "one-empty-rule", "not-isolated"])
def test_empty_ingress_list_versus_no_ingress_field(ingress, types, expected):
    egress = (Rule(),) if EGRESS in types else ()
    check(cluster(policy("x", "p", ingress=ingress, egress=egress, types=types)),
          {"*": expected})


def test_policy_types_egress_only_ignores_an_ingress_section():
    only_b = rule(Peer(pod_selector=labels(pod="b")))
    model = cluster(policy("x", "egress-only", ingress=(only_b,), types=frozenset({EGRESS})))
    check(model, {"*": DENY_FROM_X})
    assert not verdict(model, pod("y/a"), pod("x/a"), 80, TCP).ingress.isolated


def test_policy_types_default_to_both_when_egress_rules_are_present():
    to_y = policy("x", "to-y", egress=(rule(from_ns("y")),))
    assert to_y.policy_types == BOTH
    check(cluster(to_y), {"*": HEAD + """
x/a  X   X   X    .   .   .    X   X   X
x/b  X   X   X    .   .   .    X   X   X
x/c  X   X   X    .   .   .    X   X   X
y/a  X   X   X    .   .   .    .   .   .
y/b  X   X   X    .   .   .    .   .   .
y/c  X   X   X    .   .   .    .   .   .
z/a  X   X   X    .   .   .    .   .   .
z/b  X   X   X    .   .   .    .   .   .
z/c  X   X   X    .   .   .    .   .   .
"""})


# -- peers ----------------------------------------------------------------------------


def test_same_namespace_only():
    check(cluster(policy("x", "same-ns", ingress=(rule(Peer(pod_selector=EVERYTHING)),))),
          {"*": HEAD + """
x/a  .   .   .    .   .   .    .   .   .
x/b  .   .   .    .   .   .    .   .   .
x/c  .   .   .    .   .   .    .   .   .
y/a  X   X   X    .   .   .    .   .   .
y/b  X   X   X    .   .   .    .   .   .
y/c  X   X   X    .   .   .    .   .   .
z/a  X   X   X    .   .   .    .   .   .
z/b  X   X   X    .   .   .    .   .   .
z/c  X   X   X    .   .   .    .   .   .
"""})


def test_namespace_by_label():
    check(cluster(policy("x", "from-y", labels(pod="a"), ingress=(rule(from_ns("y")),))),
          {"*": Y_TO_XA})


def test_empty_namespace_selector_is_every_namespace():
    every = rule(Peer(namespace_selector=EVERYTHING))
    check(cluster(policy("x", "from-all", labels(pod="a"), ingress=(every,))), {"*": ALL})


@pytest.mark.parametrize(("selector", "expected"), [
    (expr("pod", Operator.IN, "b"), ONLY_XB_TO_XA),
    (expr("pod", Operator.NOT_IN, "b"), HEAD + """
x/a  .   .   .    .   .   .    .   .   .
x/b  X   .   .    .   .   .    .   .   .
x/c  .   .   .    .   .   .    .   .   .
y/a  X   .   .    .   .   .    .   .   .
y/b  X   .   .    .   .   .    .   .   .
y/c  X   .   .    .   .   .    .   .   .
z/a  X   .   .    .   .   .    .   .   .
z/b  X   .   .    .   .   .    .   .   .
z/c  X   .   .    .   .   .    .   .   .
"""),
    (expr("pod", Operator.EXISTS), X_TO_XA),
    (expr("tier", Operator.DOES_NOT_EXIST), X_TO_XA),
    (expr("pod", Operator.DOES_NOT_EXIST), NONE_TO_XA),
], ids=["In", "NotIn", "Exists", "DoesNotExist-absent", "DoesNotExist-present"])
def test_pod_selector_match_expressions(selector, expected):
    model = cluster(policy("x", "p", labels(pod="a"), ingress=(rule(Peer(pod_selector=selector)),)))
    check(model, {"*": expected})


NOT_X_TO_XA = HEAD + """
x/a  X   .   .    .   .   .    .   .   .
x/b  X   .   .    .   .   .    .   .   .
x/c  X   .   .    .   .   .    .   .   .
y/a  .   .   .    .   .   .    .   .   .
y/b  .   .   .    .   .   .    .   .   .
y/c  .   .   .    .   .   .    .   .   .
z/a  .   .   .    .   .   .    .   .   .
z/b  .   .   .    .   .   .    .   .   .
z/c  .   .   .    .   .   .    .   .   .
"""


@pytest.mark.parametrize(("selector", "expected"), [
    (expr(METADATA_NAME, Operator.IN, "y"), Y_TO_XA),
    (expr(METADATA_NAME, Operator.NOT_IN, "x"), NOT_X_TO_XA),
    (expr("team", Operator.EXISTS), Y_TO_XA),
    (expr("team", Operator.DOES_NOT_EXIST), HEAD + """
x/a  .   .   .    .   .   .    .   .   .
x/b  .   .   .    .   .   .    .   .   .
x/c  .   .   .    .   .   .    .   .   .
y/a  X   .   .    .   .   .    .   .   .
y/b  X   .   .    .   .   .    .   .   .
y/c  X   .   .    .   .   .    .   .   .
z/a  .   .   .    .   .   .    .   .   .
z/b  .   .   .    .   .   .    .   .   .
z/c  .   .   .    .   .   .    .   .   .
"""),
], ids=["In", "NotIn", "Exists", "DoesNotExist"])
def test_namespace_selector_match_expressions(selector, expected):
    """Only y carries team=blue here."""
    namespaces = (namespace("x"), namespace("y", team="blue"), namespace("z"))
    peer = Peer(namespace_selector=selector)
    model = cluster(policy("x", "p", labels(pod="a"), ingress=(rule(peer),)),
                    namespaces=namespaces)
    check(model, {"*": expected})


def test_metadata_name_is_defaulted_when_a_namespace_lacks_it():
    bare = tuple(Namespace(ns) for ns in "xyz")
    peer = Peer(namespace_selector=expr(METADATA_NAME, Operator.NOT_IN, "x"))
    model = cluster(policy("x", "p", labels(pod="a"), ingress=(rule(peer),)), namespaces=bare)
    check(model, {"*": NOT_X_TO_XA})


def test_pod_and_namespace_selector_in_one_peer_is_and():
    peer = Peer(pod_selector=labels(pod="b"),
                namespace_selector=expr(METADATA_NAME, Operator.NOT_IN, "x"))
    check(cluster(policy("x", "and", labels(pod="a"), ingress=(rule(peer),))), {"*": HEAD + """
x/a  X   .   .    .   .   .    .   .   .
x/b  X   .   .    .   .   .    .   .   .
x/c  X   .   .    .   .   .    .   .   .
y/a  X   .   .    .   .   .    .   .   .
y/b  .   .   .    .   .   .    .   .   .
y/c  X   .   .    .   .   .    .   .   .
z/a  X   .   .    .   .   .    .   .   .
z/b  .   .   .    .   .   .    .   .   .
z/c  X   .   .    .   .   .    .   .   .
"""})


def test_pod_and_namespace_selector_as_two_peers_is_or():
    peers = (Peer(namespace_selector=expr(METADATA_NAME, Operator.NOT_IN, "x")),
             Peer(pod_selector=labels(pod="b")))
    check(cluster(policy("x", "or", labels(pod="a"), ingress=(rule(*peers),))), {"*": HEAD + """
x/a  X   .   .    .   .   .    .   .   .
x/b  .   .   .    .   .   .    .   .   .
x/c  X   .   .    .   .   .    .   .   .
y/a  .   .   .    .   .   .    .   .   .
y/b  .   .   .    .   .   .    .   .   .
y/c  .   .   .    .   .   .    .   .   .
z/a  .   .   .    .   .   .    .   .   .
z/b  .   .   .    .   .   .    .   .   .
z/c  .   .   .    .   .   .    .   .   .
"""})


def test_two_policies_add_up():
    only_b = policy("x", "allow-b", labels(pod="a"),
                    ingress=(rule(Peer(pod_selector=labels(pod="b"))),))
    xy_81 = policy("x", "allow-xy-81", labels(pod="a"), ingress=(rule(
        Peer(namespace_selector=expr(METADATA_NAME, Operator.IN, "x", "y")),
        ports=(PolicyPort(TCP, 81),)),))
    model = cluster(xy_81, only_b)
    check(model, {"*": ONLY_XB_TO_XA, "81/TCP": HEAD + """
x/a  .   .   .    .   .   .    .   .   .
x/b  .   .   .    .   .   .    .   .   .
x/c  .   .   .    .   .   .    .   .   .
y/a  .   .   .    .   .   .    .   .   .
y/b  .   .   .    .   .   .    .   .   .
y/c  .   .   .    .   .   .    .   .   .
z/a  X   .   .    .   .   .    .   .   .
z/b  X   .   .    .   .   .    .   .   .
z/c  X   .   .    .   .   .    .   .   .
"""})
    both = verdict(model, pod("x/b"), pod("x/a"), 81, TCP)
    assert both.ingress.by == ("x/allow-b ingress rule 0", "x/allow-xy-81 ingress rule 0")
    assert verdict(model, pod("z/a"), pod("x/a"), 81, TCP).ingress.by == (
        "x/allow-b ingress", "x/allow-xy-81 ingress")


def test_ingress_and_egress_combined():
    model = cluster(policy("x", "y-in-z-out", types=BOTH, ingress=(rule(from_ns("y")),),
                           egress=(rule(from_ns("z")),)))
    check(model, {"*": HEAD + """
x/a  X   X   X    X   X   X    .   .   .
x/b  X   X   X    X   X   X    .   .   .
x/c  X   X   X    X   X   X    .   .   .
y/a  .   .   .    .   .   .    .   .   .
y/b  .   .   .    .   .   .    .   .   .
y/c  .   .   .    .   .   .    .   .   .
z/a  X   X   X    .   .   .    .   .   .
z/b  X   X   X    .   .   .    .   .   .
z/c  X   X   X    .   .   .    .   .   .
"""})
    assert verdict(model, pod("x/a"), pod("z/a"), 80, TCP).by == ("x/y-in-z-out egress rule 0",)


def test_a_denial_names_only_the_side_that_denied():
    model = cluster(policy("x", "to-y", egress=(rule(from_ns("y")),), types=frozenset({EGRESS})),
                    policy("y", "deny-ingress"))
    denied = verdict(model, pod("x/a"), pod("y/a"), 80, TCP)
    assert denied.egress == Side(True, True, ("x/to-y egress rule 0",))
    assert (denied.allowed, denied.by) == (False, ("y/deny-ingress ingress",))


# -- ipBlock --------------------------------------------------------------------------

EXCEPT = IPBlock(IPv4Network("10.0.0.0/16"),
                 (IPv4Network("10.0.2.0/24"), IPv4Network("10.0.3.2/32")))


def test_egress_to_a_cidr_with_except():
    model = cluster(policy("x", "cidr", labels(pod="a"), types=frozenset({EGRESS}),
                           egress=(rule(Peer(ip_block=EXCEPT)),)))
    check(model, {"*": HEAD + """
x/a  .   .   .    X   X   X    .   X   .
x/b  .   .   .    .   .   .    .   .   .
x/c  .   .   .    .   .   .    .   .   .
y/a  .   .   .    .   .   .    .   .   .
y/b  .   .   .    .   .   .    .   .   .
y/c  .   .   .    .   .   .    .   .   .
z/a  .   .   .    .   .   .    .   .   .
z/b  .   .   .    .   .   .    .   .   .
z/c  .   .   .    .   .   .    .   .   .
"""})
    x_a = pod("x/a")
    assert verdict(model, x_a, IPv4Address("10.0.9.9"), 443, TCP).allowed
    assert not verdict(model, x_a, IPv4Address("10.0.2.9"), 443, TCP).allowed
    assert not verdict(model, x_a, IPv4Address("192.0.2.1"), 443, TCP).allowed


def test_a_pod_with_several_addresses_matches_on_any_of_them():
    two = pod("y/a", ips=(IPv4Address("10.0.2.1"), IPv4Address("10.0.9.1")))
    model = cluster(policy("x", "cidr", labels(pod="a"), types=frozenset({EGRESS}),
                           egress=(rule(Peer(ip_block=EXCEPT)),)))
    assert verdict(model, pod("x/a"), two, 80, TCP).allowed


def test_ingress_from_addresses():
    block = IPBlock(IPv4Network("192.0.2.0/24"))
    model = cluster(policy("x", "from-net", ingress=(rule(Peer(ip_block=block)),)))
    assert verdict(model, IPv4Address("192.0.2.7"), pod("x/a"), 80, TCP).allowed
    assert not verdict(model, IPv4Address("198.51.100.7"), pod("x/a"), 80, TCP).allowed
    outside = verdict(model, IPv4Address("192.0.2.7"), pod("x/a"), 80, TCP)
    assert outside.egress == Side(False, True, ())  # an address has no policies
    # pod peers never match an address, even one that is a pod's
    same_ns = cluster(policy("x", "same-ns", ingress=(rule(Peer(pod_selector=EVERYTHING)),)))
    assert not verdict(same_ns, IPv4Address("10.0.1.2"), pod("x/a"), 80, TCP).allowed
    assert verdict(same_ns, pod("x/b"), pod("x/a"), 80, TCP).allowed


# -- ports ----------------------------------------------------------------------------


def test_one_port_only():
    model = cluster(policy("x", "from-y-80", labels(pod="a"),
                           ingress=(rule(from_ns("y"), ports=(PolicyPort(TCP, 80),)),)))
    check(model, {"*": NONE_TO_XA, "80/TCP": Y_TO_XA})


def test_ingress_on_one_named_port():
    model = cluster(policy("x", "named", ingress=(rule(ports=(PolicyPort(TCP, "serve-81-tcp"),)),)))
    check(model, {"*": DENY_TO_X, "81/TCP": ALL})


def test_named_port_names_one_protocol():
    """serve-80-udp is 80 for UDP only: asked for with TCP it names nothing."""
    udp = cluster(policy("x", "named-udp", ingress=(
        rule(ports=(PolicyPort(UDP, "serve-80-udp"),)),)))
    check(udp, {"*": DENY_TO_X, "80/UDP": ALL})
    tcp = cluster(policy("x", "named-tcp", ingress=(
        rule(ports=(PolicyPort(TCP, "serve-80-udp"),)),)))
    check(tcp, {"*": DENY_TO_X})


SWAPPED = (ContainerPort(80, TCP, "serve-81-tcp"), ContainerPort(81, TCP, "serve-80-tcp"),
           *SERVE[2:])


def swapped_cluster(*policies: NetworkPolicy) -> Cluster:
    """y/b calls its port 81 serve-80-tcp (and 80 serve-81-tcp)."""
    pods = tuple(pod(key, ports=SWAPPED) if key == "y/b" else pod(key) for key in PODS)
    return cluster(*policies, pods=pods)


def test_named_port_is_resolved_per_destination_pod_on_ingress():
    model = swapped_cluster(policy("y", "named", ingress=(
        rule(ports=(PolicyPort(TCP, "serve-80-tcp"),)),)))
    check(model, {"*": HEAD + """
x/a  .   .   .    X   X   X    .   .   .
x/b  .   .   .    X   X   X    .   .   .
x/c  .   .   .    X   X   X    .   .   .
y/a  .   .   .    X   X   X    .   .   .
y/b  .   .   .    X   X   X    .   .   .
y/c  .   .   .    X   X   X    .   .   .
z/a  .   .   .    X   X   X    .   .   .
z/b  .   .   .    X   X   X    .   .   .
z/c  .   .   .    X   X   X    .   .   .
""", "80/TCP": HEAD + """
x/a  .   .   .    .   X   .    .   .   .
x/b  .   .   .    .   X   .    .   .   .
x/c  .   .   .    .   X   .    .   .   .
y/a  .   .   .    .   X   .    .   .   .
y/b  .   .   .    .   X   .    .   .   .
y/c  .   .   .    .   X   .    .   .   .
z/a  .   .   .    .   X   .    .   .   .
z/b  .   .   .    .   X   .    .   .   .
z/c  .   .   .    .   X   .    .   .   .
""", "81/TCP": HEAD + """
x/a  .   .   .    X   .   X    .   .   .
x/b  .   .   .    X   .   X    .   .   .
x/c  .   .   .    X   .   X    .   .   .
y/a  .   .   .    X   .   X    .   .   .
y/b  .   .   .    X   .   X    .   .   .
y/c  .   .   .    X   .   X    .   .   .
z/a  .   .   .    X   .   X    .   .   .
z/b  .   .   .    X   .   X    .   .   .
z/c  .   .   .    X   .   X    .   .   .
"""})


def test_named_port_is_resolved_on_the_destination_for_egress():
    model = swapped_cluster(policy("x", "named-out", types=frozenset({EGRESS}), egress=(
        rule(ports=(PolicyPort(TCP, "serve-80-tcp"),)),)))
    check(model, {"*": DENY_FROM_X, "80/TCP": HEAD + """
x/a  .   .   .    .   X   .    .   .   .
x/b  .   .   .    .   X   .    .   .   .
x/c  .   .   .    .   X   .    .   .   .
y/a  .   .   .    .   .   .    .   .   .
y/b  .   .   .    .   .   .    .   .   .
y/c  .   .   .    .   .   .    .   .   .
z/a  .   .   .    .   .   .    .   .   .
z/b  .   .   .    .   .   .    .   .   .
z/c  .   .   .    .   .   .    .   .   .
""", "81/TCP": HEAD + """
x/a  X   X   X    X   .   X    X   X   X
x/b  X   X   X    X   .   X    X   X   X
x/c  X   X   X    X   .   X    X   X   X
y/a  .   .   .    .   .   .    .   .   .
y/b  .   .   .    .   .   .    .   .   .
y/c  .   .   .    .   .   .    .   .   .
z/a  .   .   .    .   .   .    .   .   .
z/b  .   .   .    .   .   .    .   .   .
z/c  .   .   .    .   .   .    .   .   .
"""})
    # an address has no port names
    assert not verdict(model, pod("x/a"), IPv4Address("10.0.2.1"), 80, TCP).allowed


def test_end_port_range():
    model = cluster(policy("x", "range", ingress=(rule(ports=(PolicyPort(TCP, 80, 81),)),)))
    check(model, {"*": DENY_TO_X, "80/TCP": ALL, "81/TCP": ALL})


def test_end_port_ranges_on_a_ports_list():
    """cyclonus' style: TCP 53-80 stops short of 81, UDP 53-84 covers both."""
    ports = (PolicyPort(TCP, 53, 80), PolicyPort(UDP, 53, 84))
    model = cluster(policy("x", "ranges", ingress=(rule(ports=ports),)))
    check(model, {"*": ALL, "81/TCP": DENY_TO_X})
    assert not verdict(model, pod("y/a"), pod("x/a"), 52, TCP).allowed
    assert verdict(model, pod("y/a"), pod("x/a"), 53, TCP).allowed
    assert not verdict(model, pod("y/a"), pod("x/a"), 85, UDP).allowed


def test_end_port_range_on_egress():
    model = cluster(policy("x", "out-81-84", types=frozenset({EGRESS}),
                           egress=(rule(ports=(PolicyPort(TCP, 81, 84),)),)))
    check(model, {"*": DENY_FROM_X, "81/TCP": ALL})


def test_protocols_must_be_equal():
    model = cluster(policy("x", "udp-80", ingress=(rule(ports=(PolicyPort(UDP, 80),)),)))
    check(model, {"*": DENY_TO_X, "80/UDP": ALL})


def test_sctp():
    model = cluster(policy("x", "sctp", ingress=(rule(ports=(PolicyPort(SCTP, 80),)),)))
    check(model, {"*": DENY_TO_X, "80/SCTP": ALL}, ports=(80,), protocols=(TCP, UDP, SCTP))
    assert not verdict(model, pod("y/a"), pod("x/a"), 81, SCTP).allowed
    every_sctp = cluster(policy("x", "sctp", ingress=(rule(ports=(PolicyPort(SCTP),)),)))
    assert verdict(every_sctp, pod("y/a"), pod("x/a"), 9999, SCTP).allowed
    assert not verdict(every_sctp, pod("y/a"), pod("x/a"), 9999, TCP).allowed


# -- hostNetwork ----------------------------------------------------------------------

HOST = pod("x/a", name="h", labels={"pod": "h"}, host_network=True,
           ips=(IPv4Address("192.168.0.1"),))


def test_host_network_pods_are_never_selected_nor_tabled():
    model = cluster(policy("x", "deny-all", types=BOTH),
                    pods=(*(pod(key) for key in PODS), HOST))
    assert verdict(model, HOST, pod("y/a"), 80, TCP).egress == Side(False, True, ())
    assert verdict(model, pod("y/a"), HOST, 80, TCP).ingress == Side(False, True, ())
    assert not verdict(model, pod("x/a"), HOST, 80, TCP).allowed  # x/a's egress
    assert not verdict(model, HOST, pod("x/a"), 80, TCP).allowed  # x/a's ingress
    assert "x/h" not in truth_table(model).pods


def test_host_network_pods_match_ip_blocks_not_pod_selectors():
    pods = (*(pod(key) for key in PODS), HOST)
    by_pods = cluster(policy("y", "from-x", ingress=(rule(from_ns("x")),)), pods=pods)
    assert not verdict(by_pods, HOST, pod("y/a"), 80, TCP).allowed
    block = IPBlock(IPv4Network("192.168.0.0/24"))
    by_block = cluster(policy("y", "from-node", ingress=(rule(Peer(ip_block=block)),)),
                       pods=pods)
    assert verdict(by_block, HOST, pod("y/a"), 80, TCP).allowed


# -- rendering and comparing ----------------------------------------------------------


def small() -> Table:
    pods = (pod("x/a"), pod("x/b"))
    return truth_table(cluster(policy("x", "deny-b", labels(pod="b")), pods=pods),
                       ports=(80,), protocols=(TCP,))


def test_render_is_the_e2e_layout():
    assert render(small()) == "80/TCP\n-\tx/a\tx/b\nx/a\t.\tX\nx/b\t.\tX\n"


def test_render_one_grid_per_port_and_protocol():
    text = render(truth_table(cluster(policy("x", "deny-ingress"))))
    titles = [line for line in text.splitlines() if "/" in line and "\t" not in line]
    assert titles == ["80/TCP", "80/UDP", "81/TCP", "81/UDP"]
    assert text.splitlines()[1] == "\t".join(["-", *PODS])
    assert text.splitlines()[2] == "x/a\tX\tX\tX\t.\t.\t.\t.\t.\t."


def test_to_json():
    assert to_json(small()) == {
        "ports": [80], "protocols": ["TCP"], "pods": ["x/a", "x/b"],
        "cells": [
            {"from": "x/a", "to": "x/a", "port": 80, "protocol": "TCP", "allowed": True,
             "by": []},
            {"from": "x/a", "to": "x/b", "port": 80, "protocol": "TCP", "allowed": False,
             "by": ["x/deny-b ingress"]},
            {"from": "x/b", "to": "x/a", "port": 80, "protocol": "TCP", "allowed": True,
             "by": []},
            {"from": "x/b", "to": "x/b", "port": 80, "protocol": "TCP", "allowed": False,
             "by": ["x/deny-b ingress"]},
        ]}


OBSERVED = {("x/a", "x/a", 80, "TCP"): True, ("x/a", "x/b", 80, "TCP"): True,
            ("x/b", "x/a", 80, "TCP"): False}  # x/b -> x/b not probed


def test_compare_returns_only_the_differing_cells():
    table = small()
    differ = compare(table, OBSERVED)
    assert [cell.key for cell in differ] == [("x/a", "x/b", 80, TCP), ("x/b", "x/a", 80, TCP)]
    assert all(isinstance(cell, Cell) for cell in differ)
    assert differ[0] is table.cell("x/a", "x/b", 80, "TCP")
    agreeing = {key: cell.allowed for key, cell in table.cells.items()}
    assert compare(table, agreeing) == []


def test_compare_refuses_cells_the_table_does_not_have():
    with pytest.raises(ValueError, match="x/typo"):
        compare(small(), {("x/a", "x/typo", 80, "TCP"): True})


def test_render_diff_marks_the_differing_cells():
    assert render_diff(small(), OBSERVED) == (
        "80/TCP: 2 of 3 observed cells differ\n"
        "-\tx/a\tx/b\n"
        "x/a\t.\t!\n"
        "x/b\t#\t?\n"
        "\n"
        "! allowed, expected denied; # denied, expected allowed; ? not observed\n"
        "\n"
        "x/a -> x/b 80/TCP: expected X, observed . (x/deny-b ingress)\n"
        "x/b -> x/a 80/TCP: expected ., observed X (no policy isolates it)\n")


def test_render_diff_when_all_agree():
    table = small()
    text = render_diff(table, {key: cell.allowed for key, cell in table.cells.items()})
    assert text.startswith("80/TCP: 0 of 4 observed cells differ\n-\tx/a\tx/b\nx/a\t.\tX\n")
    assert text.endswith("no observed cell differs\n")
