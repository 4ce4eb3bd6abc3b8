"""The lab's address plan, names and option checks (pure, no root)."""

from __future__ import annotations

import ipaddress

import pytest

from tartan.debug import lab_plan as plan


def test_nodes_alternate_segments_and_get_unique_addresses():
    nodes = [plan.node_plan("lab", i, 2) for i in range(1, 6)]
    assert [n.segment for n in nodes] == [1, 2, 1, 2, 1]
    assert [n.ip for n in nodes] == ["198.18.1.11", "198.18.2.12", "198.18.1.13",
                                     "198.18.2.14", "198.18.1.15"]
    assert all(n.address.network == plan.segment_network(n.segment) for n in nodes)
    assert [n.gateway for n in nodes[:2]] == ["198.18.1.1", "198.18.2.1"]


def test_one_segment_puts_every_node_on_it():
    assert {plan.node_plan("lab", i, 1).segment for i in range(1, 10)} == {1}


def test_names_are_per_lab_and_fit_interface_limits():
    node = plan.node_plan("tlab", 12, 2)
    assert (node.name, node.netns, node.pod_netns(3)) == ("node12", "tlab-node12",
                                                          "tlab-node12-pod3")
    assert plan.router_netns("tlab") == "tlab-router"
    assert len(plan.node_plan("a", plan.MAX_NODES, 2).router_port) <= 15


def test_default_segments_by_backend():
    assert plan.default_segments("host-gw") == 1
    assert plan.default_segments("vxlan") == plan.default_segments("directrouting") == 2


@pytest.mark.parametrize("backend,expected", [
    ("vxlan", {"Type": "vxlan"}),
    ("host-gw", {"Type": "host-gw"}),
    ("directrouting", {"Type": "vxlan", "DirectRouting": True}),
])
def test_net_conf_per_backend(backend, expected):
    conf = plan.net_conf(backend)
    assert conf == {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": expected}
    conf["Backend"]["Type"] = "changed"
    assert plan.BACKENDS[backend] == expected  # the table is not shared


def test_etcd_listens_on_the_router_segment_one_address():
    assert plan.etcd_endpoint() == "http://198.18.1.1:2379"


def test_lab_ranges_are_benchmarking_space_and_the_cluster_network():
    ranges = plan.lab_ranges(2)
    assert [str(r) for r in ranges] == ["198.18.1.0/24", "198.18.2.0/24", "10.244.0.0/16"]
    benchmarking = ipaddress.ip_network("198.18.0.0/15")
    assert all(r.subnet_of(benchmarking) for r in ranges[:-1])


def test_overlaps_names_the_host_route_and_ignores_default_and_v6():
    routes = [{"dst": "default", "dev": "eth0"}, {"dst": "192.0.2.0/24", "dev": "eth0"},
              {"dst": "10.244.7.0/24", "dev": "cni0"}, {"dst": "198.18.2.5", "dev": "x"},
              {"dst": "fe80::/64", "dev": "eth0"}]
    found = plan.overlaps(plan.lab_ranges(2), routes)
    assert found == ["10.244.0.0/16 overlaps the host's route to 10.244.7.0/24 (dev cni0)",
                     "198.18.2.0/24 overlaps the host's route to 198.18.2.5 (dev x)"]
    assert plan.overlaps(plan.lab_ranges(1), routes[:2]) == []


@pytest.mark.parametrize("name", ["tlab", "a", "lab2", "abcdefghijkl"])
def test_good_lab_names(name):
    assert plan.check_name(name) == name


@pytest.mark.parametrize("name", ["", "Lab", "my-lab", "2lab", "abcdefghijklm", "a b", "../x"])
def test_bad_lab_names(name):
    with pytest.raises(plan.PlanError, match="lab name"):
        plan.check_name(name)


def test_node_index():
    assert plan.node_index("node7") == 7
    for bad in ("node0", "node", "pod1", "node1x", "Node1"):
        with pytest.raises(plan.PlanError, match="node1, node2"):
            plan.node_index(bad)


@pytest.mark.parametrize("args,message", [
    (("ipip", "sqlite", 3, 2, 2), "backend 'ipip'"),
    (("vxlan", "consul", 3, 2, 2), "store 'consul'"),
    (("vxlan", "sqlite", 0, 2, 2), "--nodes 0"),
    (("vxlan", "sqlite", 3, 9, 2), "--segments 9"),
    (("vxlan", "sqlite", 3, 2, 21), "--pods-per-node 21"),
])
def test_validate_names_the_bad_option(args, message):
    with pytest.raises(plan.PlanError, match=message):
        plan.validate(*args)


def test_validate_accepts_the_defaults():
    plan.validate("host-gw", "etcd", 3, 1, 2)
