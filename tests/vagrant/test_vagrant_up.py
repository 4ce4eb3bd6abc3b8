"""The users' Vagrantfile, brought up for real: `vagrant up` of 2 nodes with vagrant-libvirt
from the Debian 12 box built here, the Vagrantfile's own provisioner (provision.sh: the bundle,
etcd on node1, tartand as its systemd unit), pods made by the real plugins on each node, the
cross-node ping matrix, `vagrant destroy`, and nothing of libvirt left on the host."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmlab import box, cluster, vagrant

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def nodes() -> Iterator[vagrant.Cluster]:
    built = box.build(say=print)
    run = vagrant.Cluster(ROOT, nodes=2, backend="vxlan")
    try:
        started = time.monotonic()
        took = run.up(built, say=print)
        print(f"vagrant up of {run.count} nodes: {took:.0f} s "
              f"({time.monotonic() - started:.0f} s with libvirtd and the box)")
        yield run
    finally:
        vagrant.destroy(run)
        assert not vagrant.leftovers(), vagrant.leftovers()


def test_each_node_runs_its_debian_kernel_and_the_tartand_the_provisioner_installed(nodes):
    for node in nodes.nodes:
        words = nodes.run(node, "uname -r; systemctl is-active tartand; "
                                "readlink /opt/cni/bin/tartan; hostname").split()
        assert words[0].startswith("6.1."), words
        assert words[1] == "active" and words[2].startswith("../../tartan/"), words
        assert words[3] == node
        cluster.wait_ready(nodes, node)


def test_both_nodes_hold_a_lease_in_etcd_on_node1(nodes):
    status = json.loads(nodes.run("node2", "tartanctl status -o json"))
    assert status["node"]["backend"] == "vxlan", status["node"]
    assert status["node"]["publicIP"] == "192.168.56.12", status["node"]  # the underlay
    assert len(status["peers"]) == 1, status["peers"]
    subnets = {nodes.run(node, "cat /run/tartan/subnet.env") for node in nodes.nodes}
    assert len(subnets) == 2


def test_the_cross_node_pod_ping_matrix(nodes):
    pods = cluster.add_pods(nodes)
    matrix = cluster.ping_matrix(nodes, pods)
    assert len(matrix) == 2 and all(matrix.values()), cluster.render_matrix(pods, matrix)
