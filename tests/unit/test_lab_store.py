"""The lab's view of the lease store: flannel's etcd keys and values (pure, no root)."""

from __future__ import annotations

from pathlib import Path

from tartan.debug import lab_store


def test_flannel_keys_map_to_subnets():
    assert lab_store.key_to_subnet("/coreos.com/network/subnets/10.244.3.0-24") == \
        "10.244.3.0/24"
    assert lab_store.subnets_prefix() == "/coreos.com/network/subnets/"


def test_lease_from_flannel_value():
    value = '{"PublicIP":"198.18.1.11","BackendType":"vxlan","BackendData":{"VNI":1}}'
    lease = lab_store.lease_from_value("10.244.3.0/24", value, 123.0)
    assert (lease.subnet, lease.public_ip, lease.backend, lease.expires) == (
        "10.244.3.0/24", "198.18.1.11", "vxlan", 123.0)
    assert lab_store.lease_from_value("10.244.4.0/24", "not json", None).public_ip == "?"


def test_tartand_store_flags():
    assert lab_store.tartand_store_args("sqlite", Path("/run/tartan-lab/x")) == [
        "--store", "sqlite:/run/tartan-lab/x/leases.db"]
    assert lab_store.tartand_store_args("etcd", Path("/x")) == [
        "--store", "etcd", "--etcd-endpoints", "http://198.18.1.1:2379",
        "--etcd-prefix", "/coreos.com/network"]


def test_etcd_runs_in_the_router_namespace_on_its_own_data_dir():
    argv = lab_store.etcd_argv("tlab", Path("/run/tartan-lab/tlab"))
    assert argv[:2] == ["nsenter", "--net=/run/netns/tlab-router"]
    assert "--data-dir" in argv and "/run/tartan-lab/tlab/etcd" in argv
    assert "http://198.18.1.1:2379,http://127.0.0.1:2379" in argv


def test_sqlite_leases_of_a_lab_without_a_store_file(tmp_path: Path):
    assert lab_store.sqlite_leases(tmp_path) == []


def test_sqlite_leases_list_and_delete_through_tartans_store(tmp_path: Path):
    from ipaddress import IPv4Network

    from tartan.ipam.lease import LeaseAttrs
    from tartan.ipam.lease_sqlite import SqliteLeaseStore

    store = SqliteLeaseStore(lab_store.sqlite_path(tmp_path))
    for i, ip in ((3, "198.18.1.11"), (12, "198.18.2.12")):
        store.create(IPv4Network(f"10.244.{i}.0/24"), LeaseAttrs(ip, "vxlan"), 3600)
    store.close()
    found = lab_store.leases("sqlite", "tlab", tmp_path)
    assert [(x.subnet, x.public_ip, x.backend) for x in found] == [
        ("10.244.3.0/24", "198.18.1.11", "vxlan"), ("10.244.12.0/24", "198.18.2.12", "vxlan")]
    assert all(x.expires and x.expires > 0 for x in found)
    assert lab_store.delete_lease("sqlite", "tlab", tmp_path, "10.244.3.0/24")
    assert [x.subnet for x in lab_store.leases("sqlite", "tlab", tmp_path)] == [
        "10.244.12.0/24"]


def test_the_pods_of_a_node_that_left_go_from_the_store(tmp_path: Path):
    record = {"ips": ["10.244.3.2"], "node": "node2", "containerID": "c"}
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "x", "name": "a"}}

    def fill(store):
        store.put_object("podips", "x/a", record)
        store.put_object("pods", "x/a", manifest)
        store.put_object("podips", "default/node2-pod1", record)
        store.put_object("podips", "x/b", record)

    lab_store.with_store("sqlite", "t", tmp_path, fill)
    gone = lab_store.forget_pods("sqlite", "t", tmp_path, ["x/a", "default/node2-pod1", "y/q"])
    assert gone == ["x/a", "default/node2-pod1"]
    left = lab_store.with_store("sqlite", "t", tmp_path, lambda s: s.list_objects()[0])
    assert (left["pods"], list(left["podips"])) == ({}, ["x/b"])
