"""The lab's state file: round trip, atomic save, lookups (no root)."""

from __future__ import annotations

from pathlib import Path

from tartan.debug import lab_state as files
from tartan.debug.lab_state import LabState, Node, Pod


def sample() -> LabState:
    state = LabState("tlab", "vxlan", "etcd", 2, 1, reconcile_interval=1.0, etcd_pid=42)
    state.nodes = [Node("node1", 1, 1, "198.18.1.11", "tlab-node1", 100, 101),
                   Node("node3", 3, 1, "198.18.1.13", "tlab-node3", 300, 301)]
    state.pods = [Pod("node1-pod1", "node1", "tlab-node1-pod1", "c1", "10.244.5.2/24"),
                  Pod("node3-pod1", "node3", "tlab-node3-pod1", "c3")]
    return state


def test_round_trip_through_json():
    state = sample()
    assert LabState.from_json(state.to_json()) == state


def test_save_and_load(tmp_path: Path):
    files.lab_dir("tlab", tmp_path).mkdir()
    files.save(sample(), tmp_path)
    assert files.load("tlab", tmp_path) == sample()
    assert [p.name for p in files.lab_dir("tlab", tmp_path).iterdir()] == ["state.json"]


def test_load_of_a_missing_lab_is_none(tmp_path: Path):
    assert files.load("nolab", tmp_path) is None


def test_lookups():
    state = sample()
    assert state.node("node3").ip == "198.18.1.13"
    assert state.node("node2") is None
    assert [p.name for p in state.pods_of("node1")] == ["node1-pod1"]
    assert state.next_index() == 4
    assert LabState("x", "vxlan", "sqlite", 1, 1).next_index() == 1


def test_pod_ip_drops_the_prefix_length():
    assert sample().pods[0].ip == "10.244.5.2"
    assert sample().pods[1].ip == ""


def test_layout(tmp_path: Path):
    assert files.state_path("tlab", tmp_path) == tmp_path / "tlab" / "state.json"
    assert files.node_log("tlab", "node2", tmp_path) == tmp_path / "tlab/node2/tartand.log"
    assert {target for _, target in files.NODE_MOUNTS} == {
        "/run/tartan", "/var/lib/cni", "/var/lib/tartan", "/etc/cni"}


def test_tail(tmp_path: Path):
    log = tmp_path / "log"
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    assert files.tail(log, 2) == ["line 28", "line 29"]
    assert files.tail(tmp_path / "missing") == []
