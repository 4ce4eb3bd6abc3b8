"""kernel/attach.py against the kernel, read back by pyroute2 (kernel/link.py, addr.py, route.py)
and by `ip`: what the pod attach path writes is what the pyroute2 path wrote."""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from tartan.kernel import addr, attach, link, netns, route
from tartan.kernel.bulk import Rtnl
from tartan.kernel.errors import KernelFailure, LinkGone
from tartan.kernel.route import RouteSpec

pytestmark = pytest.mark.kernel


@pytest.fixture
def host(netns_factory):
    return netns_factory("ta")


@pytest.fixture
def pod(netns_factory):
    return netns_factory("tp")


def _ip_json(ns, *args: str) -> list[dict]:
    return json.loads(ns.run("ip", "-j", *args).stdout)


def test_a_bridge_and_a_veth_port_read_the_same_through_pyroute2(host, pod):
    with netns.entered(host.path), Rtnl() as rtnl, netns.netlink_in() as ipr:
        bridge = attach.ensure_bridge(rtnl, "tbr0", 1400)
        assert attach.ensure_bridge(rtnl, "tbr0", 1400) == bridge  # the second ADD's call
        assert link.require(ipr, "tbr0") == bridge
        assert bridge.kind == "bridge" and bridge.up and bridge.mtu == 1400
        fd = netns.open_netns(pod.path)
        try:
            assert attach.add_veth(rtnl, "vethtest", "eth0", fd, 1400)
            assert not attach.add_veth(rtnl, "vethtest", "eth0", fd, 1400)  # exists
        finally:
            os.close(fd)
        veth = attach.require(rtnl, "vethtest")
        attach.set_link(rtnl, veth.index, up=True, master=bridge.index)
        attach.set_hairpin(rtnl, veth.index)
        assert attach.at(rtnl, veth.index) == link.by_index(ipr, veth.index)
        port = attach.at(rtnl, veth.index)
        assert port.master == bridge.index and port.up and port.kind == "veth"
    [info] = _ip_json(host, "-d", "link", "show", "vethtest")
    assert info["linkinfo"]["info_slave_data"]["hairpin"] is True
    [peer] = _ip_json(pod, "link", "show", "eth0")
    assert peer["mtu"] == 1400


def test_addresses_and_routes_as_the_pyroute2_path_made_them(pod):
    pod.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    with netns.entered(pod.path), Rtnl() as rtnl, netns.netlink_in() as ipr:
        eth0 = attach.require(rtnl, "eth0")
        v4, v6 = ipaddress.ip_interface("10.9.0.5/24"), ipaddress.ip_interface("fd00:9::5/64")
        for address in (v4, v6, v4):  # the repeat is fine, as an existing address was
            attach.add_address(rtnl, eth0.index, address)
        attach.set_link(rtnl, eth0.index, up=True)
        assert attach.addresses(rtnl, eth0.index, 4) == addr.list_(ipr, eth0.index, 4) == [v4]
        assert attach.addresses(rtnl, eth0.index, 6) == [v6]
        spec = RouteSpec(dst="10.20.3.4/16", gw="10.9.0.1", oif=eth0.index)
        attach.add_route(rtnl, spec)
        attach.add_route(rtnl, spec)
        attach.add_route(rtnl, RouteSpec(dst="0.0.0.0/0", gw="10.9.0.1", oif=eth0.index))
        assert route.exists(ipr, RouteSpec(dst="10.20.0.0/16", gw="10.9.0.1"))
        assert route.exists(ipr, RouteSpec(dst="0.0.0.0/0", gw="10.9.0.1"))
        attach.delete_address(rtnl, eth0.index, v4)
        attach.delete_address(rtnl, eth0.index, v4)
        assert attach.addresses(rtnl, eth0.index, 4) == []
    [addresses] = _ip_json(pod, "addr", "show", "eth0")
    [mine] = [a for a in addresses["addr_info"] if a["local"] == "fd00:9::5"]
    assert "tentative" not in mine  # no duplicate detection: usable at once


def test_lookups_and_deletes_of_what_is_not_there(pod):
    pod.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    with netns.entered(pod.path), Rtnl() as rtnl:
        assert attach.named(rtnl, "nothere") is None
        with pytest.raises(LinkGone):
            attach.require(rtnl, "nothere")
        with pytest.raises(LinkGone):
            attach.at(rtnl, 999999)
        assert not attach.delete(rtnl, "nothere")
        eth0 = attach.require(rtnl, "eth0")
        assert attach.delete(rtnl, index=eth0.index)
        assert not attach.delete(rtnl, index=eth0.index)
        with pytest.raises(KernelFailure, match="cannot add route 10.1.0.0/16 via 10.99.0.1"):
            attach.add_route(rtnl, RouteSpec(dst="10.1.0.0/16", gw="10.99.0.1", oif=1))
