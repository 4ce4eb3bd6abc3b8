"""Every backend x store: reachability, self-healing, leave and join — one lab per pair.

vxlan and directrouting get two segments (directrouting then has a same-segment peer it
routes directly and a peer behind the router it reaches over VXLAN); host-gw one segment.
tartand runs with --reconcile-interval 1.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from lab_env import (
    down_clean,
    fdb,
    lab_name,
    route_to,
    status_peers,
    subnet_of,
)

from tartan.debug import lab_pods, lab_store
from tartan.debug.lab import Lab, UpOptions
from tartan.debug.lab_state import LabState
from tartan.debug.lab_sys import netns_path
from tartan.debug.lab_underlay import BIG_TCP_SIZE
from tartan.kernel import gso
from tartan.kernel.netns import entered

from harness import eventually

pytestmark = pytest.mark.kernel

BACKENDS = ("vxlan", "host-gw", "directrouting")
STORES = ("sqlite", "etcd")
RECONCILE = 1.0


@pytest.fixture(scope="module", params=[(b, s) for b in BACKENDS for s in STORES],
                ids=[f"{b}-{s}" for b in BACKENDS for s in STORES])
def lab(request) -> Iterator[Lab]:
    backend, store = request.param
    lab = Lab(lab_name(), say=print)
    try:
        lab.up(UpOptions(backend, store, nodes=3, pods_per_node=2,
                         reconcile_interval=RECONCILE))
        yield lab
    finally:
        down_clean(lab)


def unreachable(lab: Lab, state: LabState) -> list[tuple[str, str]]:
    results = lab_pods.ping_all(lab.sys, state.pods)
    return sorted(pair for pair, ok in results.items() if not ok)


def expected_device(backend: str, a_segment: int, b_segment: int) -> str:
    direct = backend == "host-gw" or (backend == "directrouting" and a_segment == b_segment)
    return "dev eth0" if direct else "dev tartan.1"


def test_all_pods_reach_all_pods(lab: Lab):
    state = lab.load()
    assert len(state.pods) == 6
    assert unreachable(lab, state) == []


def test_routes_use_the_backend_mode(lab: Lab):
    state = lab.load()
    for node in state.nodes:
        for peer in (p for p in state.nodes if p is not node):
            route = route_to(node, subnet_of(peer))
            device = expected_device(state.backend, node.segment, peer.segment)
            assert device in route, f"{node.name} -> {peer.name}: {route!r}"
            if device == "dev eth0":
                assert f"via {peer.ip} " in route
            assert status_peers(node)[subnet_of(peer)]["state"] == "programmed"


def test_a_route_deleted_by_hand_comes_back(lab: Lab):
    state = lab.load()
    node, peer = state.nodes[0], state.nodes[1]
    subnet = subnet_of(peer)
    before = route_to(node, subnet)
    lab.sys.ip("route", "del", subnet, netns=node.netns)
    assert route_to(node, subnet) == ""
    eventually(lambda: route_to(node, subnet) == before, RECONCILE + 3,
               what=f"{node.name}'s route to {subnet} back")
    assert unreachable(lab, lab.load()) == []


def test_a_node_that_leaves_disappears_from_every_peer(lab: Lab):
    state = lab.load()
    gone = state.nodes[1]
    subnet = subnet_of(gone)
    lab.leave(gone.name)
    state = lab.load()
    assert [n.name for n in state.nodes] == ["node1", "node3"]
    for node in state.nodes:
        eventually(lambda n=node: route_to(n, subnet) == "", 10,
                   what=f"{node.name}'s route to {subnet} removed")
        eventually(lambda n=node: f"dst {gone.ip} " not in fdb(n), 10,
                   what=f"{node.name}'s FDB entry for {gone.ip} removed")
        eventually(lambda n=node: subnet not in status_peers(n), 10,
                   what=f"{node.name}'s /status without {subnet}")
    leases = lab_store.leases(state.store, lab.name, lab.dir)
    assert gone.ip not in [lease.public_ip for lease in leases]
    assert unreachable(lab, state) == []


def test_a_node_that_joins_becomes_reachable(lab: Lab):
    node = lab.join()
    state = lab.load()
    assert node.name == "node4" and len(state.pods) == 6
    subnet = subnet_of(node)
    for other in (n for n in state.nodes if n.name != node.name):
        eventually(lambda o=other: subnet in status_peers(o), 10,
                   what=f"{other.name} programs {node.name}")
    assert unreachable(lab, state) == []



def test_host_gw_skips_peers_on_another_segment():
    """host-gw across a router cannot work: those peers are skipped, with the reason."""
    lab = Lab(lab_name(), say=print)
    try:
        lab.up(UpOptions("host-gw", "sqlite", nodes=3, segments=2, pods_per_node=1))
        state = lab.load()
        node1, node2, node3 = state.nodes
        peers = status_peers(node1)
        assert peers[subnet_of(node3)]["state"] == "programmed"
        skipped = peers[subnet_of(node2)]
        assert (skipped["state"], skipped["mode"]) == ("skipped", "skipped")
        assert "L2 segment" in skipped["reason"]
        assert route_to(node1, subnet_of(node2)) == ""
        assert unreachable(lab, state) == [(a, b) for a, b in [
            ("node1-pod1", "node2-pod1"), ("node2-pod1", "node1-pod1"),
            ("node2-pod1", "node3-pod1"), ("node3-pod1", "node2-pod1")]]
    finally:
        down_clean(lab)


def pod_gso(pod) -> int:
    with entered(netns_path(pod.netns)):
        return gso.limits(socket.if_nametoindex("eth0")).gso_ipv4_max


@pytest.mark.parametrize("backend", ["host-gw", "vxlan"])
def test_big_tcp_uplinks_give_host_gw_pods_big_packets_and_vxlan_pods_none(backend):
    """Over an underlay that takes 192 KiB packets, host-gw pods get IPv4 BIG TCP; VXLAN pods
    keep 64 KiB (the VXLAN device takes no more), and both still reach every pod."""
    probe = gso.limits(socket.if_nametoindex("lo"))
    if not probe.gso_ipv4_max:
        pytest.skip("this kernel has no IPv4 BIG TCP (Linux 6.3+)")
    lab = Lab(lab_name(), say=print)
    try:
        lab.up(UpOptions(backend, "sqlite", nodes=2, segments=1, pods_per_node=2,
                         big_tcp=True))
        state = lab.load()
        want = BIG_TCP_SIZE if backend == "host-gw" else 65536
        assert {pod.name: pod_gso(pod) for pod in state.pods} == {
            pod.name: want for pod in state.pods}
        assert unreachable(lab, state) == []
    finally:
        down_clean(lab)
