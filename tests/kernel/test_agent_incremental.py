"""The agent's incremental path and its full pass agree, in a node namespace's kernel.

Random sequences of joins, leaves, renewals, expiries, peers that change their VTEP MAC or
their address (on and off the node's segment), each applied as a store change by the
incremental path alone: after every one, a full pass finds nothing to correct. With
hand-made damage among them, one full pass repairs it all and a second finds nothing. And a
restarted agent with many peers rewrites nothing that is already right.
"""

from __future__ import annotations

import io
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from tartan.backends import registry
from tartan.backends.daemon import Agent, Settings
from tartan.backends.log import Log
from tartan.backends.metrics import Metrics
from tartan.backends.node import discover
from tartan.backends.routes import PROTO_TARTAN
from tartan.ipam.lease import LeaseAttrs, LeaseManager
from tartan.ipam.lease_memory import MemoryLeaseStore
from tartan.ipam.netconf import parse_network_config
from tartan.kernel import link, neigh, netns, route
from tartan.kernel.route import RouteSpec

pytestmark = pytest.mark.kernel

BACKENDS = {"vxlan": {"Type": "vxlan"}, "host-gw": {"Type": "host-gw"},
            "directrouting": {"Type": "vxlan", "DirectRouting": True}}
NODE_IP = "198.18.1.10"
TTL = 3600.0
FAR = 1e12  # a full pass that never comes due by itself


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Node:
    """An agent of the real backend in a namespace, stepped by hand, on a memory store."""

    path: str
    backend: str
    tmp: Path
    clock: Clock = field(default_factory=Clock)
    store: MemoryLeaseStore | None = None
    revision: int = 0
    first_pass: int = 0  # the changes the agent's first full pass made

    def __post_init__(self) -> None:
        self.store = self.store or MemoryLeaseStore(clock=self.clock)
        net = parse_network_config({"Network": "10.0.0.0/8", "Backend":
                                    BACKENDS[self.backend]})
        with netns.entered(self.path):
            node = discover("eth0", None)
            self.agent = Agent(self.store, LeaseManager(self.store, net, ttl=TTL * 100), net,
                               node, registry.create(net, node),
                               Settings(self.tmp / "subnet.env", False, 5.0),
                               Log(io.StringIO()), Metrics(), clock=self.clock)
            self.first_pass = self.agent.start().corrections
        self.revision = self.agent.revision

    @property
    def leases(self) -> MemoryLeaseStore:
        assert self.store is not None
        return self.store

    def step(self) -> None:
        """The store's changes since the last step, by the incremental path only."""
        self.agent.next_full_pass = FAR
        passes = self.agent.passes
        with netns.entered(self.path):
            self.revision, _ = self.agent.step(self.revision)
        assert self.agent.passes == passes, "a full pass ran: the incremental path failed"

    def full_pass(self) -> int:
        with netns.entered(self.path):
            return self.agent.reconcile().corrections


@pytest.fixture(params=sorted(BACKENDS))
def node(request, netns_factory, tmp_path) -> Iterator[Node]:
    ns, uplink = netns_factory("ti"), netns_factory("tu")
    subprocess.run(["ip", "link", "add", "eth0", "netns", ns.name, "type", "veth", "peer",
                    "name", "eth0", "netns", uplink.name], check=True)
    ns.run("ip", "addr", "add", f"{NODE_IP}/24", "dev", "eth0")
    ns.run("ip", "link", "set", "eth0", "up")
    uplink.run("ip", "link", "set", "eth0", "up")
    yield Node(ns.path, request.param, tmp_path)


def _peer_ip(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"198.18.1.{rng.randrange(20, 250)}"  # on the segment
    return f"198.19.{rng.randrange(0, 250)}.{rng.randrange(1, 250)}"


def _attrs(backend: str, ip: str, mac: str) -> LeaseAttrs:
    if backend == "host-gw":
        return LeaseAttrs(public_ip=ip, backend_type="host-gw", backend_data={})
    return LeaseAttrs(public_ip=ip, backend_type="vxlan", backend_data={"VNI": 1,
                                                                        "VtepMAC": mac})


def _mac(rng: random.Random) -> str:
    return "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))


def store_change(node: Node, rng: random.Random) -> str:
    """One random change to the peers' leases; what it was."""
    store, own = node.leases, node.agent.lease.subnet
    leases = [x for x in store.list_leases()[0] if x.subnet != own]
    kind = rng.choice(["join", "join", "leave", "renew", "move", "remac", "expire"]
                      if leases else ["join"])
    if kind == "join":
        taken = {x.subnet for x in store.list_leases()[0]}
        subnet = next(s for s in (IPv4Network(f"10.244.{rng.randrange(256)}.0/24")
                                  for _ in range(1000)) if s not in taken)
        ttl = 10.0 if rng.random() < 0.2 else TTL
        store.create(subnet, _attrs(node.backend, _peer_ip(rng), _mac(rng)), ttl)
        return f"join {subnet}"
    lease = rng.choice(leases)
    data = lease.attrs.backend_data
    if kind == "leave":
        store.delete(lease.subnet)
    elif kind == "renew":
        store.update(lease, lease.attrs, TTL)
    elif kind == "move":
        store.update(lease, _attrs(node.backend, _peer_ip(rng), str(data.get("VtepMAC"))), TTL)
    elif kind == "remac":
        store.update(lease, _attrs(node.backend, lease.attrs.public_ip, _mac(rng)), TTL)
    else:
        node.clock.now += 11  # the 10 s leases are gone (the store expires them)
        store.wait(0, 0)
    return f"{kind} {lease.subnet}"


def damage(node: Node, rng: random.Random) -> str:
    """One random hand-made change to the kernel: an entry of Tartan's removed, or a stray
    route in Tartan's protocol added."""
    with netns.netlink_in(node.path) as ipr:
        routes = route.by_protocol(ipr, PROTO_TARTAN)
        device = link.get(ipr, "tartan.1")
        kind = rng.choice(["route", "stray"] + (["neighbour", "fdb"] if device else []))
        if kind == "route" and routes:
            route.delete(ipr, rng.choice(routes))
        elif kind == "neighbour" and device:
            found = neigh.permanent_neighbours(ipr, device.index)
            if found:
                neigh.delete_neighbour(ipr, device.index, rng.choice(found))
        elif kind == "fdb" and device:
            found = neigh.remote_fdb(ipr, device.index)
            if found:
                neigh.delete_fdb(ipr, device.index, rng.choice(found))
        else:
            route.replace(ipr, RouteSpec(dst="10.99.0.0/24", gw="198.18.1.254",
                                         proto=PROTO_TARTAN))
            kind = "stray"
    return f"damage {kind}"


@pytest.mark.parametrize("seed", range(4))
def test_incremental_steps_leave_nothing_for_a_full_pass(node: Node, seed: int):
    rng = random.Random(f"{node.backend}/{seed}")
    history = []
    for _ in range(25):
        history.append(store_change(node, rng))
        node.step()
        assert node.full_pass() == 0, f"after {history}"


@pytest.mark.parametrize("seed", range(3))
def test_one_full_pass_repairs_damage_among_incremental_steps(node: Node, seed: int):
    rng = random.Random(f"damage/{node.backend}/{seed}")
    history = []
    for _ in range(25):
        history.append(damage(node, rng) if rng.random() < 0.3 else store_change(node, rng))
        node.step()
    node.full_pass()
    assert node.full_pass() == 0, f"after {history}"
    with netns.netlink_in(node.path) as ipr:
        networks = {spec.network for spec in route.by_protocol(ipr, PROTO_TARTAN)}
    assert IPv4Network("10.99.0.0/24") not in networks


def test_a_bug_in_an_incremental_write_is_a_full_pass_once_not_a_loop(node: Node, monkeypatch):
    rng = random.Random("bug")
    calls = []

    def broken(changes):  # fails on every change it is given
        if len(changes):
            calls.append(changes.revision)
            raise KeyError("a bug")

    monkeypatch.setattr(node.agent, "apply", broken)
    store_change(node, rng)
    passes, failures = node.agent.passes, node.agent.metrics.reconcile_failures._value.get()
    node.agent.next_full_pass = FAR
    with netns.entered(node.path):
        revision, _ = node.agent.step(node.revision)
    assert len(calls) == 1 and node.agent.passes == passes + 1  # the change, then a full pass
    assert revision == node.leases.list_leases()[1]  # past the change that failed
    assert node.agent.metrics.reconcile_failures._value.get() == failures + 1
    with netns.entered(node.path):  # nothing new in the store: nothing is tried again
        assert node.agent.step(revision)[0] == revision
    assert len(calls) == 1 and node.agent.passes == passes + 1
    monkeypatch.undo()
    assert node.full_pass() == 0  # the full pass had applied the change


def test_a_restarted_agent_with_thousands_of_peers_rewrites_nothing(node: Node):
    if node.backend != "vxlan":
        pytest.skip("one backend is enough for the size")
    own = node.agent.lease.subnet  # leased at random: it may fall among the peers' subnets
    subnets = (s for s in (IPv4Network(f"10.{1 + i // 256}.{i % 256}.0/24") for i in range(2100))
               if s != own)
    for index, subnet in zip(range(2000), subnets, strict=False):
        assert node.leases.create(subnet, _attrs(
            "vxlan", f"198.19.{index // 250}.{1 + index % 250}",
            f"02:00:00:00:{index // 256:02x}:{index % 256:02x}"), TTL) is not None
    node.step()
    with netns.netlink_in(node.path) as ipr:
        before = route.by_protocol(ipr, PROTO_TARTAN)
    assert len(before) == 2000
    restarted = Node(node.path, node.backend, node.tmp, node.clock, node.leases)
    assert restarted.agent.lease.subnet == node.agent.lease.subnet
    assert restarted.first_pass == 0  # no flush, nothing re-added
    with netns.netlink_in(node.path) as ipr:
        assert route.by_protocol(ipr, PROTO_TARTAN) == before
