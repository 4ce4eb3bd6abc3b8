"""doctor's checks that need no kernel: the conntrack table, the order of network configs,
rp_filter as the kernel applies it, UDP checksums."""

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


def test_rp_filter_is_the_larger_of_all_and_the_devices_own(tmp_path: Path):
    here = node(tmp_path)
    assert here.rp_filter("tartan.1") == 0  # nothing readable: the kernel's default
    conf = tmp_path / "sys" / "net" / "ipv4" / "conf"
    for name, value in (("all", "0"), ("tartan.1", "1"), ("eth0", "2")):
        (conf / name).mkdir(parents=True)
        (conf / name / "rp_filter").write_text(value + "\n")
    assert (here.rp_filter("tartan.1"), here.rp_filter("eth0"), here.rp_filter("cni0")) == (
        1, 2, 0)
    (conf / "all" / "rp_filter").write_text("2\n")
    assert here.rp_filter("tartan.1") == 2


def test_udp_checksums_and_the_counter_of_bad_ones(tmp_path: Path):
    import struct

    from tartan.debug.capture_decode import internet_checksum, udp_checksum_bad
    from tartan.debug.doctor_datapath import udp_checksum_errors

    src, dst, data = bytes([198, 18, 2, 12]), bytes([198, 18, 1, 11]), b"vxlan payload!"
    udp = struct.pack("!HHHH", 40000, 8472, 8 + len(data), 0) + data
    right = internet_checksum(src + dst + struct.pack("!BBH", 0, 17, len(udp)) + udp)
    ip = bytes([0x45]) + bytes(11) + src + dst

    def datagram(checksum: int) -> bytes:
        return ip + udp[:6] + struct.pack("!H", checksum) + udp[8:]

    assert not udp_checksum_bad(datagram(right))
    assert udp_checksum_bad(datagram(right ^ 0x0101))
    assert not udp_checksum_bad(datagram(0))  # no checksum, as VXLAN sends by default
    snmp = tmp_path / "snmp"
    snmp.write_text("Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors "
                    "InCsumErrors IgnoredMulti MemErrors\nUdp: 10 0 3 9 0 0 3 0 0\n")
    assert udp_checksum_errors(snmp) == 3
    assert udp_checksum_errors(tmp_path / "missing") == 0
