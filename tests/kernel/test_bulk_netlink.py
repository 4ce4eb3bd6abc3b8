"""kernel/bulk.py against the kernel, and against pyroute2's reading of the same kernel."""

from __future__ import annotations

import pytest

from tartan.kernel import link, neigh, netns, route
from tartan.kernel.bulk import BATCH, Rtnl
from tartan.kernel.errors import KernelFailure
from tartan.kernel.neigh import FdbEntry, Neighbour
from tartan.kernel.route import RouteSpec

pytestmark = pytest.mark.kernel

PROTO = 152
COUNT = 3 * BATCH + 7  # several batches, the last one short


@pytest.fixture
def node(netns_factory):
    ns = netns_factory("tb")
    ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    ns.run("ip", "addr", "add", "192.168.0.1/16", "dev", "eth0")
    ns.run("ip", "link", "add", "tartan.1", "type", "vxlan", "id", "1", "local",
           "192.168.0.1", "dev", "eth0", "dstport", "8472", "nolearning")
    for dev in ("eth0", "eth1", "tartan.1"):
        ns.run("ip", "link", "set", dev, "up")
    return ns


def _peer(i: int) -> tuple[RouteSpec, Neighbour, FdbEntry]:
    gateway = f"10.{i // 256}.{i % 256}.0"
    mac = f"02:5c:00:00:{i // 256:02x}:{i % 256:02x}"
    return (RouteSpec(dst=f"{gateway}/24", gw=gateway, oif=0, onlink=True, proto=PROTO),
            Neighbour(gateway, mac), FdbEntry(mac, f"192.168.{1 + i // 250}.{1 + i % 250}"))


def test_what_it_writes_both_it_and_pyroute2_read_back(node):
    with netns.entered(node.path), Rtnl() as rtnl, netns.netlink_in() as ipr:
        dev = link.require(ipr, "tartan.1").index
        peers = [_peer(i) for i in range(1, COUNT + 1)]
        routes = [RouteSpec(r.dst, r.gw, dev, onlink=True, proto=PROTO) for r, _, _ in peers]
        rtnl.replace_neighbours(dev, [n for _, n, _ in peers])
        rtnl.replace_fdb(dev, [f for _, _, f in peers])
        rtnl.replace_routes(routes)
        assert sorted(rtnl.routes(PROTO), key=str) == sorted(routes, key=str)
        assert sorted(route.by_protocol(ipr, PROTO), key=str) == sorted(routes, key=str)
        assert set(rtnl.permanent_neighbours(dev)) == {n for _, n, _ in peers}
        assert set(neigh.permanent_neighbours(ipr, dev)) == {n for _, n, _ in peers}
        assert set(rtnl.remote_fdb(dev)) == {f for _, _, f in peers}
        assert set(neigh.remote_fdb(ipr, dev)) == {f for _, _, f in peers}


def test_dumps_hold_only_the_protocol_table_and_device_asked_for(node):
    node.run("ip", "route", "add", "10.200.0.0/24", "via", "192.168.0.9", "proto", "static")
    node.run("ip", "route", "add", "10.201.0.0/24", "via", "192.168.0.9", "proto", "152",
             "table", "300")
    node.run("ip", "neigh", "add", "192.168.0.77", "lladdr", "02:00:00:00:00:77", "dev",
             "eth0", "nud", "permanent")
    with netns.entered(node.path), Rtnl() as rtnl, netns.netlink_in() as ipr:
        dev = link.require(ipr, "tartan.1").index
        assert rtnl.routes(PROTO) == []
        assert [r.dst for r in rtnl.routes(PROTO, table=300)] == ["10.201.0.0/24"]
        assert rtnl.permanent_neighbours(dev) == []
        eth0 = link.require(ipr, "eth0").index
        assert rtnl.permanent_neighbours(eth0) == [Neighbour("192.168.0.77",
                                                             "02:00:00:00:00:77")]


def test_replacing_changes_in_place_and_deleting_what_is_gone_is_fine(node):
    with netns.entered(node.path), Rtnl() as rtnl, netns.netlink_in() as ipr:
        dev = link.require(ipr, "tartan.1").index
        spec = RouteSpec("10.9.0.0/24", "192.168.0.5", 0, proto=PROTO)
        rtnl.replace_routes([spec])
        moved = RouteSpec("10.9.0.0/24", "192.168.0.6", 0, proto=PROTO)
        rtnl.replace_routes([moved])
        assert [r.gw for r in rtnl.routes(PROTO)] == ["192.168.0.6"]
        rtnl.replace_neighbours(dev, [Neighbour("10.9.0.0", "02:00:00:00:00:01")])
        rtnl.replace_neighbours(dev, [Neighbour("10.9.0.0", "02:00:00:00:00:02")])
        assert rtnl.permanent_neighbours(dev) == [Neighbour("10.9.0.0", "02:00:00:00:00:02")]
        rtnl.delete_routes([moved, moved])
        rtnl.delete_neighbours(dev, [Neighbour("10.9.0.0", ""), Neighbour("10.9.9.0", "")])
        rtnl.delete_fdb(dev, [FdbEntry("02:00:00:00:00:09", "192.168.0.9")])
        assert rtnl.routes(PROTO) == [] and rtnl.permanent_neighbours(dev) == []


def test_a_refused_write_is_named_and_the_rest_of_its_batch_is_applied(node):
    with netns.entered(node.path), Rtnl() as rtnl:
        good = [RouteSpec(f"10.8.{i}.0/24", "192.168.0.5", 0, proto=PROTO) for i in range(5)]
        unreachable = RouteSpec("10.7.0.0/24", "172.31.0.1", 0, proto=PROTO)
        with pytest.raises(KernelFailure, match=r"cannot set route 10\.7\.0\.0/24 via "
                                                r"172\.31\.0\.1: "):
            rtnl.replace_routes([*good[:2], unreachable, *good[2:]])
        assert sorted(r.dst for r in rtnl.routes(PROTO)) == sorted(g.dst for g in good)
