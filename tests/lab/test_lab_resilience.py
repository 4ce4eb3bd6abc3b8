"""tartand restarts and etcd outages: the datapath stays, and the cluster recovers.

One lab (vxlan, etcd, 3 nodes on 2 segments, --reconcile-interval 1) for the module.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from lab_env import down_clean, lab_name, route_to, routes, status_peers, subnet_of

from tartan.debug import lab_agents, lab_pods, lab_store
from tartan.debug import lab_state as files
from tartan.debug.lab import Lab, UpOptions
from tartan.debug.lab_sys import alive, stop

from harness import eventually

pytestmark = pytest.mark.kernel

RECONCILE = 1.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(lab_name(), say=print)
    try:
        lab.up(UpOptions("vxlan", "etcd", nodes=3, pods_per_node=1,
                         reconcile_interval=RECONCILE))
        yield lab
    finally:
        down_clean(lab)


def all_reachable(lab: Lab) -> bool:
    return all(lab_pods.ping_all(lab.sys, lab.load().pods).values())


def test_a_stopped_tartand_leaves_the_datapath_and_a_restart_keeps_the_lease(lab: Lab):
    node = lab.load().nodes[0]
    subnet, datapath = subnet_of(node), routes(node)
    lab_agents.stop_agent(node)
    assert not lab_agents.running(node)
    assert routes(node) == datapath
    assert all_reachable(lab)
    lab.restart(node.name)
    node = lab.load().nodes[0]
    assert lab_agents.running(node) and lab_agents.ready(node)
    assert subnet_of(node) == subnet
    assert routes(node) == datapath
    assert all_reachable(lab)


def test_continuous_ping_survives_tartand_restarting_on_both_nodes(lab: Lab):
    state = lab.load()
    (a, b) = state.nodes[:2]
    src, dst = state.pods_of(a.name)[0], state.pods_of(b.name)[0]
    # ping until told to stop (`ip netns exec` execs it: SIGINT reaches ping, which then
    # prints its summary), so it covers the whole of both restarts whatever they take.
    # -O reports every request that got no reply before the next one was sent.
    ping = subprocess.Popen(["ip", "netns", "exec", src.netns, "ping", "-n", "-O", "-i", "0.05",
                             "-W", "1", dst.ip], stdout=subprocess.PIPE, text=True)
    try:
        assert ping.stdout is not None
        ping.stdout.readline()  # PING header
        assert "bytes from" in ping.stdout.readline(), "no reply before the restarts"
        lab.restart(a.name)
        lab.restart(b.name)
        time.sleep(1)  # a tail of pings after both agents are back
        assert ping.poll() is None, "ping ended before the restarts were done"
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=10)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    assert "no answer yet" not in out, out
    summary = next(line for line in out.splitlines() if "packet loss" in line)
    sent, received = int(summary.split()[0]), int(summary.split()[3])
    # the one request sent as SIGINT arrived may still have been on its way back
    assert sent > 20 and received >= sent - 1, summary


def test_an_etcd_outage_keeps_the_datapath_and_the_cluster_recovers(lab: Lab):
    state = lab.load()
    stop([state.etcd_pid])
    try:
        time.sleep(3 * RECONCILE)
        assert all(alive(n.tartand_pid) for n in state.nodes), "a tartand died with etcd"
        assert all_reachable(lab)
        node, peer = state.nodes[0], state.nodes[1]
        subnet = subnet_of(peer)
        before = route_to(node, subnet)
        lab.sys.ip("route", "del", subnet, netns=node.netns)
        eventually(lambda: route_to(node, subnet) == before, RECONCILE + 3,
                   what="a route deleted during the outage comes back")
    finally:
        state.etcd_pid = lab_store.start_etcd(lab.sys, lab.name, lab.dir)
        files.save(state)
    joined = lab.join()
    subnet = subnet_of(joined)
    for other in state.nodes:
        eventually(lambda o=other: subnet in status_peers(o), 15,
                   what=f"{other.name} programs {joined.name} after the outage")
    assert all_reachable(lab)
