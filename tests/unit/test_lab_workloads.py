"""Applied pods: placement, namespace names, ports, the listener's command line, updates, and
their CNI_ARGS (pure, no root)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tartan.debug import lab_objects, lab_pods, lab_serve, lab_workloads
from tartan.debug.lab_state import LabState, Node, Pod
from tartan.debug.lab_sys import LabError
from tartan.debug.lab_views import pod_row
from tartan.netpol.manifest import load

NODES = ["node1", "node2", "node3"]


def test_spec_node_name_wins():
    assert lab_workloads.place("node3", NODES, {"node3": 9}) == "node3"


def test_an_unknown_node_name_is_one_line_naming_the_nodes():
    with pytest.raises(LabError, match="'node9' is not a running node of the lab; use one "
                                       "of node1, node2, node3, or leave it out"):
        lab_workloads.place("node9", NODES, {})


def test_without_a_node_name_pods_go_round_the_nodes():
    counts: dict[str, int] = {}
    placed = []
    for _ in range(7):
        node = lab_workloads.place("", NODES, counts)
        counts[node] = counts.get(node, 0) + 1
        placed.append(node)
    assert placed == ["node1", "node2", "node3", "node1", "node2", "node3", "node1"]


def test_the_least_loaded_node_first_and_no_node_is_an_error():
    assert lab_workloads.place("", NODES, {"node1": 2, "node2": 1, "node3": 1}) == "node2"
    with pytest.raises(LabError, match="no node of the lab is running"):
        lab_workloads.place("", [], {})


def pod(name: str, node: str, netns: str, namespace: str = "x", **kw) -> Pod:
    return Pod(name, node, netns, "c" * 64, "10.244.1.2/24", namespace, **kw)


def test_the_namespace_is_the_next_pod_index_of_the_node():
    node = Node("node2", 2, 2, "198.18.2.12", "tlab-node2")
    pods = [pod("a", "node2", "tlab-node2-pod1"), pod("b", "node2", "tlab-node2-pod3"),
            pod("c", "node1", "tlab-node1-pod7")]
    assert lab_workloads.next_netns(node, pods) == "tlab-node2-pod4"
    assert lab_workloads.next_netns(node, []) == "tlab-node2-pod1"


MANIFEST = """
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  containers:
  - name: c80
    ports:
    - {containerPort: 80, name: serve-80-tcp}
    - {containerPort: 80, protocol: UDP, name: serve-80-udp}
  - name: c81
    ports: [{containerPort: 81, protocol: SCTP}]
"""


def model(text: str = MANIFEST):
    return load(text).pods[0]


def test_ports_are_kept_as_given():
    assert lab_workloads.ports_of(model()) == [
        {"port": 80, "protocol": "TCP", "name": "serve-80-tcp"},
        {"port": 80, "protocol": "UDP", "name": "serve-80-udp"},
        {"port": 81, "protocol": "SCTP", "name": ""}]


def test_the_listener_runs_in_the_pods_namespace_one_flag_per_port(tmp_path: Path):
    p = pod("a", "node1", "tlab-node1-pod2", ports=lab_workloads.ports_of(model()))
    ready = lab_workloads.ready_file(tmp_path, p)
    assert ready == tmp_path / "node1" / "pod2-listener.ready"
    assert lab_workloads.listener_argv(p, ready, "/venv/bin/python") == [
        "nsenter", "--net=/run/netns/tlab-node1-pod2", "/venv/bin/python", "-m",
        "tartan.debug.lab_serve", "--answer", "x/a", "--ready", str(ready),
        "--tcp", "80", "--udp", "80"]  # SCTP is not served


def test_the_listener_reads_its_command_line():
    args = lab_serve.parse_args(["--answer", "x/a", "--tcp", "80", "--udp", "80",
                                 "--tcp", "81"])
    assert (args.answer, args.tcp, args.udp, args.ready) == ("x/a", [80, 81], [80], None)


def test_a_new_pod_from_a_manifest_goes_on_the_least_loaded_running_node(monkeypatch):
    monkeypatch.setattr("tartan.debug.lab_agents.running", lambda node: True)
    state = LabState("tlab", "vxlan", "sqlite", 2, 0)
    state.nodes = [Node("node1", 1, 1, "198.18.1.11", "tlab-node1"),
                   Node("node2", 2, 2, "198.18.2.12", "tlab-node2")]
    state.pods = [pod("z", "node1", "tlab-node1-pod1")]
    new = lab_workloads.new_pod(state, model())
    assert (new.key, new.node, new.netns, new.labels) == ("x/a", "node2", "tlab-node2-pod1",
                                                           {"pod": "a"})
    assert len(new.container_id) == 64 and new.address == "" and new.listener_pid == 0


def test_cni_args_carry_the_pods_own_namespace():
    env = lab_pods.cni_env("ADD", pod("a", "node1", "tlab-node1-pod1", namespace="y"))
    assert env["CNI_ARGS"] == ("IgnoreUnknown=1;K8S_POD_NAMESPACE=y;K8S_POD_NAME=a;"
                               "K8S_POD_INFRA_CONTAINER_ID=" + "c" * 64)


def test_a_running_pod_may_get_new_labels_but_not_a_new_node_or_ports():
    running = pod("a", "node1", "tlab-node1-pod1", ports=lab_workloads.ports_of(model()))
    lab_objects.check_update(running, model(MANIFEST.replace("pod: a", "pod: b")))
    with pytest.raises(LabError, match="spec.nodeName cannot change .the pod runs on node1"):
        lab_objects.check_update(running, model(MANIFEST.replace("spec:\n",
                                                                 "spec:\n  nodeName: n2\n")))
    with pytest.raises(LabError, match="ports of a running pod cannot change"):
        lab_objects.check_update(running, model(MANIFEST.replace("81", "82")))


def test_pods_json_and_row():
    p = pod("a", "node1", "tlab-node1-pod1", labels={"pod": "a"}, listener_pid=7,
            ports=[{"port": 80, "protocol": "TCP", "name": "serve-80-tcp"}])
    assert json.loads(json.dumps(lab_objects.summary(p))) == {
        "namespace": "x", "name": "a", "node": "node1", "ips": ["10.244.1.2"],
        "labels": {"pod": "a"}, "ports": [{"port": 80, "protocol": "TCP",
                                           "name": "serve-80-tcp"}],
        "netns": "/run/netns/tlab-node1-pod1", "containerID": "c" * 64, "listenerPid": 7}
    assert pod_row(p)[:6] == ["x", "a", "node1", "10.244.1.2/24", "pod=a", "80/TCP"]


def test_up_pods_keep_their_names_in_the_ping_matrix_applied_ones_their_keys():
    assert lab_pods.label(Pod("node1-pod1", "node1", "t-node1-pod1", "c")) == "node1-pod1"
    assert lab_pods.label(pod("a", "node1", "t-node1-pod2")) == "x/a"
    assert lab_pods.short("x/a") == "x/a"
