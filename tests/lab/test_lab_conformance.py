"""Upstream's NetworkPolicy e2e cases in the lab, on vxlan and on host-gw (issue 10).

The model is upstream's (namespaces x, y, z; pods a, b, c, labelled pod=<name>, serving TCP
and UDP on 80 and 81), on one 2-node lab per backend (sqlite, no pods of `up`'s own), so
every namespace has pods on both nodes. Each case applies its policies with `lab apply`
(which returns once every node enforces them), runs `lab probe-matrix` over the grids it is
about and asks two things of every probed cell: that it equals `policy explain` of the
lab's store (probe-matrix exits 0), and that it equals the table written out in the case.
Then it deletes its policies and restores the labels it changed; `clean` checks that.

A table is probe-matrix's grid: one row per from, x/a to z/c, its marks the tos in the same
order grouped by namespace (x y z, a b c in each); `.` allowed, `X` denied, `-` a pod to
itself (not probed).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Iterator

import pytest
import yaml
from lab_env import (
    KEYS,
    ctl,
    down_clean,
    lab_name,
    model,
    namespace_manifest,
    pod_manifest,
    pods_json,
    policy,
)

from tartan.debug import lab_objects
from tartan.debug.lab import Lab, UpOptions
from tartan.debug.lab_sys import alive

pytestmark = pytest.mark.kernel

BACKENDS = ("vxlan", "host-gw")
WORKERS = "72"  # one grid's connections at a time: a denied one waits 2 x 1 s
NAME = "kubernetes.io/metadata.name"

Grid = dict[tuple[str, str], bool]
Tables = dict[tuple[int, str], Grid]  # (port, "TCP"|"UDP") -> grid


def grid(text: str) -> Grid:
    rows = [line.split(maxsplit=1) for line in text.strip().splitlines()]
    assert [src for src, _ in rows] == KEYS, "a grid has one row per pod, x/a to z/c"
    cells: Grid = {}
    for src, marks in rows:
        marks = marks.replace(" ", "")
        assert len(marks) == len(KEYS) and set(marks) <= {".", "X", "-"}, src
        for dst, mark in zip(KEYS, marks, strict=True):
            assert (mark == "-") == (dst == src), f"{src} -> {dst}: `-` is a pod to itself"
            if dst != src:
                cells[(src, dst)] = mark == "."
    return cells


OPEN = grid("""
x/a  -.. ... ...
x/b  .-. ... ...
x/c  ..- ... ...
y/a  ... -.. ...
y/b  ... .-. ...
y/c  ... ..- ...
z/a  ... ... -..
z/b  ... ... .-.
z/c  ... ... ..-
""")

INTO_X_DENIED = grid("""
x/a  -XX ... ...
x/b  X-X ... ...
x/c  XX- ... ...
y/a  XXX -.. ...
y/b  XXX .-. ...
y/c  XXX ..- ...
z/a  XXX ... -..
z/b  XXX ... .-.
z/c  XXX ... ..-
""")

FROM_X_DENIED = grid("""
x/a  -XX XXX XXX
x/b  X-X XXX XXX
x/c  XX- XXX XXX
y/a  ... -.. ...
y/b  ... .-. ...
y/c  ... ..- ...
z/a  ... ... -..
z/b  ... ... .-.
z/c  ... ... ..-
""")

INTO_X_FROM_Y_ONLY = grid("""
x/a  -XX ... ...
x/b  X-X ... ...
x/c  XX- ... ...
y/a  ... -.. ...
y/b  ... .-. ...
y/c  ... ..- ...
z/a  XXX ... -..
z/b  XXX ... .-.
z/c  XXX ... ..-
""")

INTO_XA_FROM_XB_ONLY = grid("""
x/a  -.. ... ...
x/b  .-. ... ...
x/c  X.- ... ...
y/a  X.. -.. ...
y/b  X.. .-. ...
y/c  X.. ..- ...
z/a  X.. ... -..
z/b  X.. ... .-.
z/c  X.. ... ..-
""")

DENY_INGRESS_X = policy("x", "deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]})
DENY_EGRESS_X = policy("x", "deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]})
FROM_Y = {"namespaceSelector": {"matchLabels": {NAME: "y"}}}
NOT_IN_X = {"namespaceSelector": {"matchExpressions": [
    {"key": NAME, "operator": "NotIn", "values": ["x"]}]}}
POD_B = {"podSelector": {"matchLabels": {"pod": "b"}}}
POD_A_ONLY = {"matchLabels": {"pod": "a"}}
ALL_GRIDS_OPEN: Tables = {(n, p): OPEN for n in (80, 81) for p in ("TCP", "UDP")}


# -- the lab and the steps of a case ---------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def lab(request) -> Iterator[Lab]:
    lab = Lab(lab_name(), say=print)
    listeners: list[int] = []
    try:
        lab.up(UpOptions(request.param, "sqlite", nodes=2, pods_per_node=0,
                         reconcile_interval=1.0))
        applied = ctl(lab, "apply", "-f", "-", text=model())
        assert applied.returncode == 0, applied.stdout + applied.stderr
        listeners = [p.listener_pid for p in lab.load().pods]
        yield lab
    finally:
        down_clean(lab)
        assert not [pid for pid in listeners if alive(pid)], "listeners outlived `lab down`"


@pytest.fixture(autouse=True)
def clean(lab: Lab) -> Iterator[None]:
    """Cases are independent: each leaves no policy and the model's labels behind."""
    yield
    stored = lab_objects.stored_objects(lab, lab.load())
    assert not stored["networkpolicies"], f"policies left: {sorted(stored['networkpolicies'])}"
    assert {k: p["metadata"]["labels"] for k, p in stored["pods"].items()} == {
        k: {"pod": k.partition("/")[2]} for k in KEYS}
    assert {k: n["metadata"]["labels"] for k, n in stored["namespaces"].items()} == {
        n: {NAME: n} for n in ("x", "y", "z")}


def run(lab: Lab, command: str, *docs: dict, flags: tuple[str, ...] = ()) -> str:
    done = ctl(lab, command, "-f", "-", *flags, text=yaml.safe_dump_all(docs))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@contextlib.contextmanager
def applied(lab: Lab, *docs: dict) -> Iterator[None]:
    """The policies `docs` for the block, deleted after it (also those it deleted itself)."""
    run(lab, "apply", *docs)
    try:
        yield
    finally:
        run(lab, "delete", *docs, flags=("--ignore-not-found",))


@contextlib.contextmanager
def relabelled(lab: Lab, changed: dict, original: dict) -> Iterator[None]:
    """`changed` (a Pod or a Namespace with new labels) applied for the block, then
    `original` applied again."""
    assert run(lab, "apply", changed).splitlines()[0].endswith(" configured")
    try:
        yield
    finally:
        run(lab, "apply", original)


def probe(lab: Lab, tables: Tables) -> None:
    """probe-matrix over the grids of `tables`: every cell as `policy explain` says (exit 0)
    and as the case's table says. A failure lists each disagreeing cell."""
    ports = sorted({port for port, _ in tables})
    protocols = sorted({protocol for _, protocol in tables})
    assert set(tables) == {(n, p) for n in ports for p in protocols}, (
        "probe-matrix probes every port with every protocol: give a table for each")
    done = ctl(lab, "probe-matrix", "--ports", ",".join(map(str, ports)),
               "--protocols", ",".join(protocols).lower(), "--workers", WORKERS, "-o", "json")
    assert done.stdout, done.stderr
    doc = json.loads(done.stdout)
    seen = {key(c): c["allowed"] for c in doc["observed"]}
    wanted = {(src, dst, n, p): allowed for (n, p), cells in tables.items()
              for (src, dst), allowed in cells.items()}
    assert seen.keys() == wanted.keys()
    failures = [f"{flow(key(c))}: probed {mark(c['observed'])}, policy explain "
                f"{mark(c['expected'])} ({', '.join(c['by']) or 'no policy isolates it'})"
                for c in doc["differences"]]
    failures += [f"probe-matrix: {line}" for line in doc["problems"]]
    if done.returncode != 0 and not failures:
        failures.append(f"probe-matrix exited {done.returncode}: {done.stderr}")
    failures += [f"{flow(k)}: probed {mark(seen[k])}, the case's table {mark(wanted[k])}"
                 for k in wanted if seen[k] != wanted[k]]
    assert not failures, "\n".join(failures)


def key(cell: dict) -> tuple[str, str, int, str]:
    return (cell["from"], cell["to"], cell["port"], cell["protocol"])


def flow(k: tuple[str, str, int, str]) -> str:
    return f"{k[0]} -> {k[1]} {k[2]}/{k[3]}"


def mark(allowed: bool) -> str:
    return "." if allowed else "X"


def address(lab: Lab, key: str) -> str:
    return pods_json(lab)[key]["ips"][0]


# -- the cases ------------------------------------------------------------------------


def test_the_model_spans_both_nodes_and_without_policies_all_is_open(lab: Lab):
    pods = pods_json(lab)
    assert sorted(pods) == KEYS
    for ns in ("x", "y", "z"):
        assert {p["node"] for p in pods.values() if p["namespace"] == ns} == {"node1",
                                                                               "node2"}
    probe(lab, ALL_GRIDS_OPEN)


def test_deny_all_ingress_and_egress(lab: Lab):
    deny_all = policy("x", "deny-all", {"podSelector": {},
                                        "policyTypes": ["Ingress", "Egress"]})
    both_ways = grid("""
        x/a  -XX XXX XXX
        x/b  X-X XXX XXX
        x/c  XX- XXX XXX
        y/a  XXX -.. ...
        y/b  XXX .-. ...
        y/c  XXX ..- ...
        z/a  XXX ... -..
        z/b  XXX ... .-.
        z/c  XXX ... ..-
    """)
    with applied(lab, deny_all):
        probe(lab, {(80, "TCP"): both_ways, (80, "UDP"): both_ways})


def test_allow_all_ingress_overrides_a_default_deny(lab: Lab):
    allow_all = policy("x", "allow-all-ingress", {"podSelector": {}, "ingress": [{}]})
    with applied(lab, DENY_INGRESS_X, allow_all):
        probe(lab, ALL_GRIDS_OPEN)


def test_allow_all_egress_overrides_a_default_deny(lab: Lab):
    allow_all = policy("x", "allow-all-egress", {"podSelector": {}, "egress": [{}],
                                                 "policyTypes": ["Egress"]})
    with applied(lab, DENY_EGRESS_X, allow_all):
        probe(lab, ALL_GRIDS_OPEN)


def test_ingress_from_the_same_namespace_only(lab: Lab):
    same = policy("x", "same-namespace", {"podSelector": {}, "ingress": [
        {"from": [{"podSelector": {}}]}]})
    only_x = grid("""
        x/a  -.. ... ...
        x/b  .-. ... ...
        x/c  ..- ... ...
        y/a  XXX -.. ...
        y/b  XXX .-. ...
        y/c  XXX ..- ...
        z/a  XXX ... -..
        z/b  XXX ... .-.
        z/c  XXX ... ..-
    """)
    with applied(lab, same):
        probe(lab, {(80, "TCP"): only_x})


def test_match_expressions_in_on_pods(lab: Lab):
    pod_in = policy("x", "xa-from-pod-in-b", {"podSelector": POD_A_ONLY, "ingress": [
        {"from": [{"podSelector": {"matchExpressions": [
            {"key": "pod", "operator": "In", "values": ["b"]}]}}]}]})
    with applied(lab, pod_in):
        probe(lab, {(80, "TCP"): INTO_XA_FROM_XB_ONLY})


def test_pod_and_namespace_in_one_peer_is_both(lab: Lab):
    one_peer = policy("x", "xa-from-b-not-in-x", {"podSelector": POD_A_ONLY, "ingress": [
        {"from": [{**NOT_IN_X, **POD_B}]}]})
    both = grid("""
        x/a  -.. ... ...
        x/b  X-. ... ...
        x/c  X.- ... ...
        y/a  X.. -.. ...
        y/b  ... .-. ...
        y/c  X.. ..- ...
        z/a  X.. ... -..
        z/b  ... ... .-.
        z/c  X.. ... ..-
    """)
    with applied(lab, one_peer):
        probe(lab, {(80, "TCP"): both})


def test_pod_and_namespace_in_two_peers_is_either(lab: Lab):
    two_peers = policy("x", "xa-from-b-or-not-in-x", {"podSelector": POD_A_ONLY, "ingress": [
        {"from": [NOT_IN_X, POD_B]}]})
    either = grid("""
        x/a  -.. ... ...
        x/b  .-. ... ...
        x/c  X.- ... ...
        y/a  ... -.. ...
        y/b  ... .-. ...
        y/c  ... ..- ...
        z/a  ... ... -..
        z/b  ... ... .-.
        z/c  ... ... ..-
    """)
    with applied(lab, two_peers):
        probe(lab, {(80, "TCP"): either})


def test_one_port_allows_80_and_denies_81(lab: Lab):
    port_80 = policy("x", "ingress-80", {"podSelector": {}, "ingress": [
        {"ports": [{"port": 80, "protocol": "TCP"}]}]})
    with applied(lab, port_80):
        probe(lab, {(80, "TCP"): OPEN, (81, "TCP"): INTO_X_DENIED})


def test_a_named_port_on_egress_allows_its_number_and_protocol_only(lab: Lab):
    named = policy("x", "egress-serve-81-udp", {"podSelector": {}, "policyTypes": ["Egress"],
                                                "egress": [{"ports": [
                                                    {"port": "serve-81-udp",
                                                     "protocol": "UDP"}]}]})
    with applied(lab, named):
        probe(lab, {(80, "TCP"): FROM_X_DENIED, (80, "UDP"): FROM_X_DENIED,
                    (81, "TCP"): FROM_X_DENIED, (81, "UDP"): OPEN})


def test_egress_to_a_cidr_with_except_and_an_overlapping_block(lab: Lab):
    xb, xc, yb = (address(lab, key) for key in ("x/b", "x/c", "y/b"))
    cluster = ipaddress.ip_network(f"{xb}/16", strict=False)
    assert all(ipaddress.ip_address(ip) in cluster for ip in (xc, yb))
    to_cidr = policy("x", "xa-egress-cidr", {
        "podSelector": POD_A_ONLY, "policyTypes": ["Egress"], "egress": [{"to": [
            {"ipBlock": {"cidr": str(cluster), "except": [f"{xb}/32", f"{xc}/32",
                                                           f"{yb}/32"]}},
            {"ipBlock": {"cidr": f"{yb}/32"}}]}]})
    excepted = grid("""
        x/a  -XX ... ...
        x/b  .-. ... ...
        x/c  ..- ... ...
        y/a  ... -.. ...
        y/b  ... .-. ...
        y/c  ... ..- ...
        z/a  ... ... -..
        z/b  ... ... .-.
        z/c  ... ... ..-
    """)
    with applied(lab, to_cidr):
        probe(lab, {(80, "TCP"): excepted})


def test_ingress_and_egress_together(lab: Lab):
    both = policy("x", "xa-in-from-b-out-80", {
        "podSelector": POD_A_ONLY, "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [POD_B]}], "egress": [{"ports": [{"port": 80}]}]})
    on_81 = grid("""
        x/a  -XX XXX XXX
        x/b  .-. ... ...
        x/c  X.- ... ...
        y/a  X.. -.. ...
        y/b  X.. .-. ...
        y/c  X.. ..- ...
        z/a  X.. ... -..
        z/b  X.. ... .-.
        z/c  X.. ... ..-
    """)
    with applied(lab, both):
        probe(lab, {(80, "TCP"): INTO_XA_FROM_XB_ONLY, (81, "TCP"): on_81})


def test_new_labels_of_a_pod_update_who_it_may_reach(lab: Lab):
    from_marked = policy("z", "from-marked", {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"marked": "yes"}}}]}]})
    into_z_denied = grid("""
        x/a  -.. ... XXX
        x/b  .-. ... XXX
        x/c  ..- ... XXX
        y/a  ... -.. XXX
        y/b  ... .-. XXX
        y/c  ... ..- XXX
        z/a  ... ... -XX
        z/b  ... ... X-X
        z/c  ... ... XX-
    """)
    from_xa_only = grid("""
        x/a  -.. ... ...
        x/b  .-. ... XXX
        x/c  ..- ... XXX
        y/a  ... -.. XXX
        y/b  ... .-. XXX
        y/c  ... ..- XXX
        z/a  ... ... -XX
        z/b  ... ... X-X
        z/c  ... ... XX-
    """)
    with applied(lab, from_marked):
        probe(lab, {(80, "TCP"): into_z_denied})
        with relabelled(lab, pod_manifest("x", "a", {"pod": "a", "marked": "yes"}),
                        pod_manifest("x", "a")):
            probe(lab, {(80, "TCP"): from_xa_only})


def test_new_labels_of_a_namespace_update_who_may_reach_it(lab: Lab):
    from_team = policy("x", "from-team-blue", {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]})
    with applied(lab, from_team):
        probe(lab, {(80, "TCP"): INTO_X_DENIED})
        with relabelled(lab, namespace_manifest("y", {"team": "blue"}),
                        namespace_manifest("y")):
            probe(lab, {(80, "TCP"): INTO_X_FROM_Y_ONLY})


def test_a_policy_updated_in_place_enforces_its_new_rule(lab: Lab):
    def from_pod(name: str) -> dict:
        return policy("x", "allow-client", {"podSelector": {}, "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"pod": name}}}]}]})

    from_xa = grid("""
        x/a  -.. ... ...
        x/b  X-X ... ...
        x/c  XX- ... ...
        y/a  XXX -.. ...
        y/b  XXX .-. ...
        y/c  XXX ..- ...
        z/a  XXX ... -..
        z/b  XXX ... .-.
        z/c  XXX ... ..-
    """)
    from_xb = grid("""
        x/a  -XX ... ...
        x/b  .-. ... ...
        x/c  XX- ... ...
        y/a  XXX -.. ...
        y/b  XXX .-. ...
        y/c  XXX ..- ...
        z/a  XXX ... -..
        z/b  XXX ... .-.
        z/c  XXX ... ..-
    """)
    with applied(lab, from_pod("a")):
        probe(lab, {(80, "TCP"): from_xa})
        assert run(lab, "apply", from_pod("b")).splitlines()[0] == (
            "networkpolicy.networking.k8s.io/allow-client configured")
        probe(lab, {(80, "TCP"): from_xb})


def test_deleted_policies_stop_being_enforced(lab: Lab):
    allow_from_y = policy("x", "allow-from-y", {"podSelector": {}, "ingress": [
        {"from": [FROM_Y]}]})
    with applied(lab, DENY_INGRESS_X, allow_from_y):
        run(lab, "delete", allow_from_y)
        probe(lab, {(80, "TCP"): INTO_X_DENIED})
        run(lab, "delete", DENY_INGRESS_X)
        probe(lab, {(80, "TCP"): OPEN})


def test_two_policies_add_up(lab: Lab):
    port_80 = policy("x", "ingress-80", {"podSelector": {}, "ingress": [
        {"ports": [{"port": 80}]}]})
    from_y = policy("x", "ingress-from-y", {"podSelector": {}, "ingress": [
        {"from": [FROM_Y]}]})
    with applied(lab, port_80, from_y):
        probe(lab, {(80, "TCP"): OPEN, (81, "TCP"): INTO_X_FROM_Y_ONLY})


def test_end_port_ranges(lab: Lab):
    range_80_81 = policy("x", "xa-80-81", {"podSelector": POD_A_ONLY, "ingress": [
        {"ports": [{"port": 80, "endPort": 81}]}]})
    range_53_80 = policy("x", "xb-53-80", {"podSelector": {"matchLabels": {"pod": "b"}},
                                           "ingress": [{"ports": [{"port": 53,
                                                                   "endPort": 80}]}]})
    on_81 = grid("""
        x/a  -X. ... ...
        x/b  .-. ... ...
        x/c  .X- ... ...
        y/a  .X. -.. ...
        y/b  .X. .-. ...
        y/c  .X. ..- ...
        z/a  .X. ... -..
        z/b  .X. ... .-.
        z/c  .X. ... ..-
    """)
    with applied(lab, range_80_81, range_53_80):
        probe(lab, {(80, "TCP"): OPEN, (81, "TCP"): on_81})
