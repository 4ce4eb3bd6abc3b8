"""The prober's pure parts: pod names, outcomes, retries, the flows, the model from the store,
and the matrix's layout and JSON (no root, no sockets)."""

from __future__ import annotations

import errno

import pytest

from tartan.debug import lab_policy_cli as cli
from tartan.debug import lab_probe
from tartan.debug.lab_probe import Matrix, Outcome
from tartan.debug.lab_state import LabState, Pod
from tartan.debug.lab_sys import LabError
from tartan.ipam.objects import KINDS
from tartan.netpol.model import Protocol

TCP, UDP = Protocol.TCP, Protocol.UDP
PORTS = [{"port": 80, "protocol": "TCP", "name": "serve-80-tcp"}]


def pod(ns: str, name: str, ip: str, ports=PORTS) -> Pod:
    return Pod(name, "node1", f"t-node1-{name}{ns}", "c", f"{ip}/24", ns, ports=list(ports))


A, B, C = pod("x", "a", "10.244.1.2"), pod("x", "b", "10.244.2.2"), pod("y", "a", "10.244.1.3")


def test_pod_refs():
    assert lab_probe.pod_ref("x/a") == "x/a"
    assert lab_probe.pod_ref("a") == "default/a"
    for bad in ("x/", "x/a/b"):
        with pytest.raises(LabError, match="is not a pod: give NS/POD"):
            lab_probe.pod_ref(bad)


def test_find_names_the_pods_there_are():
    state = LabState("t", "vxlan", "sqlite", 2, 0, pods=[A, C])
    assert lab_probe.find(state, "y/a") is C
    with pytest.raises(LabError, match=r"no pod z/a \(pods: x/a, y/a\)"):
        lab_probe.find(state, "z/a")


def test_failed_attempts_in_a_word():
    assert lab_probe.reason(TimeoutError()) == "timed out"
    assert lab_probe.reason(ConnectionRefusedError(errno.ECONNREFUSED, "x")) == "refused"
    assert lab_probe.reason(OSError(errno.EHOSTUNREACH, "x")) == "no route to host"
    assert lab_probe.reason(OSError("odd")) == "odd"


def test_a_denied_attempt_is_tried_once_more_then_denied():
    tries = []

    def attempt(netns, ip, port, protocol, timeout, source_port):
        tries.append((netns, ip, port, protocol, timeout, source_port))
        return Outcome(len(tries) == 2, "answered" if len(tries) == 2 else "timed out")

    ports = iter([12000, 12001])
    assert lab_probe.probe(A, B, 80, UDP, attempt=attempt,
                           source_ports=lambda: next(ports)) == Outcome(True, "answered")
    assert tries == [(A.netns, "10.244.2.2", 80, UDP, 1.0, 12000),
                     (A.netns, "10.244.2.2", 80, UDP, 1.0, 12001)]
    tries.clear()
    denied = lab_probe.probe(A, B, 80, TCP, tries=1, attempt=attempt)
    assert denied == Outcome(False, "timed out") and tries == [
        (A.netns, "10.244.2.2", 80, TCP, 1.0, 0)]  # TCP: the kernel picks


def test_udp_source_ports_are_handed_out_in_turn_across_runs(tmp_path):
    path = tmp_path / "udp-probe-port"
    first = lab_probe.SourcePorts(path, 3)
    second = lab_probe.SourcePorts(path, 2)  # a second run takes the ports after them
    assert [first() for _ in range(4)] == [10000, 10001, 10002, 0]  # 0: its block is used up
    assert [second(), second()] == [10003, 10004]
    path.write_text("32766")
    wrapping = lab_probe.SourcePorts(path, 3)
    assert [wrapping() for _ in range(3)] == [32766, 32767, 10000]
    assert path.read_text() == "10001"
    path.write_text("garbage")
    assert lab_probe.SourcePorts(path, 1)() == 10000


def test_flows_skip_a_pod_to_itself_and_follow_the_tables_order():
    flows = lab_probe.flows([A, B], [80, 81], [TCP, UDP])
    assert len(flows) == 2 * 4
    assert [(s.key, d.key, n, p) for s, d, n, p in flows[:3]] == [
        ("x/a", "x/b", 80, TCP), ("x/b", "x/a", 80, TCP), ("x/a", "x/b", 80, UDP)]


def test_probe_all_runs_every_flow_with_bounded_workers():
    results = lab_probe.probe_all([A, B, C], [80], [TCP], workers=2,
                                  one=lambda s, d, n, p: Outcome(d.namespace == "x", "t"))
    assert len(results) == 6
    assert results[("x/a", "y/a", 80, TCP)].allowed is False
    assert results[("y/a", "x/b", 80, TCP)].allowed is True


def test_serving_pods_leave_ups_pods_out():
    plain = Pod("node1-pod1", "node1", "t-node1-pod1", "c", "10.244.1.9/24")
    state = LabState("t", "vxlan", "sqlite", 2, 0, pods=[C, plain, B, A])
    assert lab_probe.serving(state) == ([A, B, C], [plain])


def store(policies=(), records=None) -> dict:
    objects: dict = {kind: {} for kind in KINDS}
    for ns in ("x", "y"):
        objects["namespaces"][ns] = {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": ns}}
    for p in (A, B, C):
        objects["pods"][p.key] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": p.namespace, "name": p.name, "labels": {"pod": p.name}},
            "spec": {"containers": [{"name": "c", "ports": [
                {"containerPort": 80, "name": "serve-80-tcp"}]}]}}
        objects["podips"][p.key] = {"ips": [p.ip], "node": "node1", "containerID": "c"}
    objects["podips"].update(records or {})
    for policy in policies:
        objects["networkpolicies"][f"x/{policy['metadata']['name']}"] = policy
    return objects


DENY_X = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"namespace": "x", "name": "deny"},
          "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}


def test_the_model_is_policy_explain_of_the_store_over_the_probed_pods():
    table, problems, notes = lab_probe.expected(store([DENY_X]), [A, C], [80], [TCP])
    assert table.pods == ("x/a", "y/a") and problems == [] and notes == []
    assert not table.cell("y/a", "x/a", 80, TCP).allowed
    assert table.cell("x/a", "y/a", 80, TCP).allowed


def test_the_model_says_which_pods_the_store_does_not_know_or_knows_otherwise():
    other = store(records={"x/a": {"ips": ["10.244.1.99"], "node": "node1"}})
    del other["pods"]["x/b"], other["podips"]["x/b"]
    _, problems, _ = lab_probe.expected(other, [A, B], [80], [TCP])
    assert problems == ["x/a: the store records 10.244.1.99, the pod has 10.244.1.2",
                        "x/b: not in the store (no Pod object, no address record)"]


def matrix(observed_allowed: bool) -> Matrix:
    table, _, _ = lab_probe.expected(store([DENY_X]), [A, C], [80], [TCP])
    observed = {("x/a", "y/a", 80, TCP): Outcome(True, "connected", "y/a"),
                ("y/a", "x/a", 80, TCP): (Outcome(True, "connected", "x/a") if observed_allowed
                                          else Outcome(False, "timed out"))}
    return Matrix(["x/a", "y/a"], (80,), (TCP,), observed, table)


def test_the_observed_grid_is_the_e2e_layout_without_self():
    assert cli.observed_grids(matrix(False)) == "80/TCP\n-\tx/a\ty/a\nx/a\t-\t.\ny/a\tX\t-\n"


def test_agreement_and_a_difference():
    same, differ = matrix(False), matrix(True)
    assert same.ok and same.differences() == []
    assert "every observed cell agrees" in cli.render(same, 32)
    assert not differ.ok and [c.key for c in differ.differences()] == [
        ("y/a", "x/a", 80, TCP)]
    text = cli.render(differ, 32)
    assert "y/a\t!\t?" in text  # allowed, expected denied
    assert "y/a -> x/a 80/TCP: expected X, observed . (x/deny ingress)" in text
    assert text.endswith("probe-matrix: 1 of 2 connections differ from the model\n")


def test_the_json_has_both_sides():
    doc = cli.matrix_json(matrix(True))
    assert doc["ok"] is False and doc["pods"] == ["x/a", "y/a"]
    assert doc["observed"][0] == {"from": "x/a", "to": "y/a", "port": 80, "protocol": "TCP",
                                  "allowed": True, "reason": "connected", "answer": "y/a"}
    assert len(doc["expected"]["cells"]) == 4
    assert doc["differences"] == [{"from": "y/a", "to": "x/a", "port": 80, "protocol": "TCP",
                                   "expected": False, "observed": True, "by": ["x/deny ingress"],
                                   "reason": "connected", "answer": "x/a"}]
