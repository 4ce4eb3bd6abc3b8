"""Pods' CNI invocation, the ping matrix and its formatting (pure, no root)."""

from __future__ import annotations

from pathlib import Path

from tartan.debug import lab_pods
from tartan.debug.lab_state import Node, Pod


def pods(n: int) -> list[Pod]:
    return [Pod(f"node{i}-pod1", f"node{i}", f"t-node{i}-pod1", f"c{i}", f"10.244.{i}.2/24")
            for i in range(1, n + 1)]


def test_cni_env_is_what_a_kubelet_runtime_sets():
    pod = Pod("node2-pod1", "node2", "tlab-node2-pod1", "ab" * 32)
    env = lab_pods.cni_env("ADD", pod, Path("/opt/cni/bin"))
    assert env["CNI_COMMAND"] == "ADD"
    assert env["CNI_CONTAINERID"] == "ab" * 32
    assert env["CNI_NETNS"] == "/run/netns/tlab-node2-pod1"
    assert env["CNI_IFNAME"] == "eth0"
    assert env["CNI_PATH"] == "/opt/cni/bin"
    assert env["CNI_ARGS"] == ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;"
                               "K8S_POD_NAME=node2-pod1;K8S_POD_INFRA_CONTAINER_ID=" + "ab" * 32)
    assert lab_pods.CNI_CONFIG == {"cniVersion": "1.0.0", "name": "tartan-lab",
                                   "type": "tartan",
                                   "delegate": {"hairpinMode": True, "isDefaultGateway": True}}


def test_new_pod_names_and_container_ids_are_unique():
    node = Node("node3", 3, 1, "198.18.1.13", "tlab-node3")
    a, b = lab_pods.new_pod(node, 1), lab_pods.new_pod(node, 2)
    assert (a.name, a.netns, a.node) == ("node3-pod1", "tlab-node3-pod1", "node3")
    assert b.netns == "tlab-node3-pod2"
    assert a.container_id != b.container_id and len(a.container_id) == 64


def test_pairs_are_every_ordered_pair_without_self():
    assert len(lab_pods.pairs(pods(4))) == 12


def test_ping_all_runs_every_pair_with_the_injected_attempt():
    seen = []

    def attempt(sys, src, dst):
        seen.append((src.name, dst.name))
        return dst.name != "node3-pod1"

    results = lab_pods.ping_all(None, pods(3), workers=2, attempt=attempt)
    assert sorted(seen) == sorted(results) and len(results) == 6
    assert [k for k, ok in results.items() if not ok] == [("node1-pod1", "node3-pod1"),
                                                          ("node2-pod1", "node3-pod1")]


def test_matrix_rows_are_from_and_columns_to():
    names = [p.name for p in pods(2)]
    results = {("node1-pod1", "node2-pod1"): True, ("node2-pod1", "node1-pod1"): False}
    assert lab_pods.format_matrix(names, results) == [
        "from \\ to   n1p1  n2p1",
        "node1-pod1     -    ok",
        "node2-pod1  FAIL     -",
    ]


def test_short_names():
    assert lab_pods.short("node12-pod3") == "n12p3"


def test_summary():
    ok = {("a", "b"): True, ("b", "a"): True}
    assert lab_pods.summary(ok) == "all 2 pairs ok"
    bad = {(f"p{i}", "q"): False for i in range(10)}
    assert lab_pods.summary(bad).startswith("10 of 10 pairs FAILED: p0->q, p1->q")
    assert lab_pods.summary(bad).endswith("(+2 more)")
