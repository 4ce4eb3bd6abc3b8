"""doctor's checks that need no kernel: the conntrack table, the order of network configs."""

from __future__ import annotations

import json
from pathlib import Path

from tartan.debug import doctor
from tartan.debug.node import Network, find_network


def node(tmp_path: Path, conf_dir: Path | None = None) -> doctor.Node:
    folder = conf_dir or tmp_path / "net.d"
    return doctor.Node(find_network(str(folder)), str(folder), None, "", None,
                       sysctl_root=tmp_path / "sys")


def sysctl(tmp_path: Path, name: str, value: str) -> None:
    path = tmp_path / "sys" / name.replace(".", "/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")


def test_a_conntrack_table_near_full_and_one_with_room(tmp_path: Path):
    sysctl(tmp_path, "net.netfilter.nf_conntrack_max", "1000")
    sysctl(tmp_path, "net.netfilter.nf_conntrack_count", "950")
    (found,) = doctor.check_conntrack(node(tmp_path), None)  # type: ignore[arg-type]
    assert found.problem == "conntrack table at 950 of 1000 entries"
    sysctl(tmp_path, "net.netfilter.nf_conntrack_count", "10")
    assert list(doctor.check_conntrack(node(tmp_path), None)) == []  # type: ignore[arg-type]


def test_network_configs_in_the_order_a_runtime_reads_them(tmp_path: Path):
    folder = tmp_path / "net.d"
    folder.mkdir()
    assert [f.problem for f in doctor.check_cni_config(node(tmp_path), None)] == [  # type: ignore[arg-type]
        f"no network config in {folder}"]
    ours = {"cniVersion": "1.0.0", "name": "tartan", "plugins": [{"type": "tartan"}]}
    (folder / "10-tartan.conflist").write_text(json.dumps(ours))
    (folder / "99-later.conf").write_text(json.dumps({"name": "x", "type": "bridge"}))
    assert list(doctor.check_cni_config(node(tmp_path), None)) == []  # type: ignore[arg-type]
    (folder / "05-flannel.conflist").write_text(json.dumps({"name": "cbr0", "plugins": [
        {"type": "flannel"}]}))
    (found,) = doctor.check_cni_config(node(tmp_path), None)  # type: ignore[arg-type]
    assert found.problem == "05-flannel.conflist sorts before Tartan's config (10-tartan.conflist)"


def test_the_network_is_read_from_tartans_config_else_defaults(tmp_path: Path):
    folder = tmp_path / "net.d"
    folder.mkdir()
    assert find_network(str(folder)) == Network()
    (folder / "10-tartan.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "pods", "plugins": [{
            "type": "tartan", "dataDir": "/var/lib/t", "delegate": {
                "bridge": "br-pods", "ipam": {"dataDir": "/var/lib/ipam"}}}]}))
    (folder / "00-broken.conf").write_text("{not json")
    found = find_network(str(folder))
    assert (found.name, found.bridge, found.ipam_dir, found.data_dir) == (
        "pods", "br-pods", "/var/lib/ipam", "/var/lib/t")
