"""tartan-bridge + tartan-ipam in real namespaces, run exactly as a runtime runs them."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import shlex
import sys

import pytest

from harness import REFERENCE_CNI, plugin_dir, remove_netns

pytestmark = pytest.mark.kernel


def test_add_gives_a_working_pod(bridge_net):
    a = bridge_net.add()
    b = bridge_net.add()
    assert a.reply.code == 0, a.reply.stdout
    result = a.reply.json
    names = [i["name"] for i in result["interfaces"]]
    assert names[0] == "cni0" and names[1].startswith("veth") and names[2] == "eth0"
    assert result["interfaces"][2]["sandbox"] == a.ns.path
    assert result["ips"][0]["interface"] == 2
    assert result["ips"][0]["gateway"] == "10.250.0.1"
    assert a.ns.ping("10.250.0.1")
    assert a.ns.ping(b.address)
    assert bridge_net.host.ping(a.address)
    assert "10.250.0.1/24" in bridge_net.host.addresses("cni0")
    assert bridge_net.host.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_is_converted_to_the_config_version(bridge_net, version):
    pod = bridge_net.add(bridge_net.conf(cniVersion=version))
    assert pod.reply.code == 0, pod.reply.stdout
    result = pod.reply.json
    assert result["cniVersion"] == version
    ip = result["ips"][0]
    assert ("version" in ip) == version.startswith("0.")
    assert bridge_net.delete(pod, bridge_net.conf(cniVersion=version)).code == 0


def test_check_passes_then_fails_when_the_address_is_removed(bridge_net):
    pod = bridge_net.add()
    assert bridge_net.check(pod).code == 0
    pod.ns.run("ip", "addr", "del", pod.reply.json["ips"][0]["address"], "dev", "eth0")
    reply = bridge_net.check(pod)
    assert reply.error_code == 100
    assert pod.reply.json["ips"][0]["address"] in reply.json["msg"]


def test_check_fails_when_the_masquerade_rule_is_gone(bridge_net):
    conf = bridge_net.conf(ipMasq=True)
    pod = bridge_net.add(conf)
    assert bridge_net.check(pod, conf).code == 0
    jump = next(r for r in bridge_net.masq_rules() if r.startswith("-A POSTROUTING"))
    bridge_net.host.run("iptables", "-t", "nat", *shlex.split(jump.replace("-A", "-D", 1)))
    reply = bridge_net.check(pod, conf)
    assert reply.error_code == 100, reply.stdout
    assert "masquerade" in reply.json["msg"]


def test_check_without_prev_result_is_invalid_config(bridge_net):
    pod = bridge_net.add()
    assert bridge_net.run("CHECK", pod).error_code == 7


def test_del_removes_everything_and_twice_is_fine(bridge_net):
    conf = bridge_net.conf(ipMasq=True)
    pod = bridge_net.add(conf)
    assert pod.reply.code == 0, pod.reply.stdout
    assert bridge_net.reservations() and bridge_net.host_veths() and bridge_net.masq_rules()
    assert bridge_net.delete(pod, conf).code == 0
    assert bridge_net.reservations() == []
    assert bridge_net.host_veths() == []
    assert bridge_net.masq_rules() == []
    assert "eth0" not in pod.ns.links()
    assert bridge_net.delete(pod, conf).code == 0


def test_del_after_the_netns_is_gone_still_removes_the_rules(bridge_net):
    conf = bridge_net.conf(ipMasq=True)
    pod = bridge_net.add(conf)
    assert bridge_net.masq_rules()
    remove_netns(pod.ns.name)
    reply = bridge_net.delete(pod, conf)
    assert reply.code == 0, reply.stdout
    assert bridge_net.masq_rules() == []
    assert bridge_net.reservations() == []
    assert bridge_net.host_veths() == []


def test_del_without_netns_variable(bridge_net):
    pod = bridge_net.add()
    assert bridge_net.run("DEL", container_id=pod.container_id, ifname="eth0").code == 0
    assert bridge_net.reservations() == []


def test_64_concurrent_adds_get_distinct_addresses_and_dels_empty_the_store(bridge_net):
    namespaces = [bridge_net.factory("tq") for _ in range(64)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        pods = list(pool.map(lambda ns: bridge_net.add(ns=ns), namespaces))
    failed = [p.reply.stdout for p in pods if p.reply.code != 0]
    assert not failed, failed[:3]
    addresses = {p.address for p in pods}
    assert len(addresses) == 64
    assert len(bridge_net.reservations()) == 64
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(bridge_net.delete, pods))
    assert all(r.code == 0 for r in replies)
    assert bridge_net.reservations() == []
    assert bridge_net.host_veths() == []


def test_ip_masq_rules_exist_per_container(bridge_net):
    conf = bridge_net.conf(ipMasq=True)
    a = bridge_net.add(conf)
    b = bridge_net.add(conf)
    rules = "\n".join(bridge_net.masq_rules())
    assert f"-s {a.address}/32" in rules and f"-s {b.address}/32" in rules
    assert "MASQUERADE" in rules
    assert bridge_net.delete(a, conf).code == 0
    rules = "\n".join(bridge_net.masq_rules())
    assert a.address not in rules and b.address in rules


def test_default_gateway_route_and_mtu(bridge_net):
    conf = bridge_net.conf(isDefaultGateway=True, mtu=1400)
    pod = bridge_net.add(conf)
    assert pod.reply.code == 0, pod.reply.stdout
    routes = pod.ns.run("ip", "route", "show", "default").stdout
    assert "via 10.250.0.1" in routes
    assert "mtu 1400" in pod.ns.run("ip", "link", "show", "eth0").stdout
    veth = pod.reply.json["interfaces"][1]["name"]
    assert "mtu 1400" in bridge_net.host.run("ip", "link", "show", veth).stdout


def test_hairpin_and_promisc_modes(bridge_net):
    conf = bridge_net.conf(hairpinMode=True, promiscMode=True)
    pod = bridge_net.add(conf)
    assert pod.reply.code == 0, pod.reply.stdout
    veth = pod.reply.json["interfaces"][1]["name"]
    detail = bridge_net.host.run("ip", "-d", "link", "show", veth).stdout
    assert "hairpin on" in detail
    assert "PROMISC" in bridge_net.host.run("ip", "link", "show", "cni0").stdout


def ipv4_gso_limits(ns, ifname: str) -> tuple[int, int]:
    """gso_ipv4_max_size and gro_ipv4_max_size of a link (iproute2 6.1 does not print them)."""
    probe = ("import socket,sys;from tartan.kernel import gso;"
             "l=gso.limits(socket.if_nametoindex(sys.argv[1]));"
             "print(l.gso_ipv4_max, l.gro_ipv4_max)")
    out = ns.run(sys.executable, "-c", probe, ifname).stdout.split()
    return int(out[0]), int(out[1])


def test_gso_max_size_gives_the_pod_ipv4_big_tcp_on_both_ends_and_the_bridge(bridge_net):
    if ipv4_gso_limits(bridge_net.host, "lo")[0] == 0:
        pytest.skip("this kernel has no IPv4 BIG TCP (Linux 6.3+)")
    pod = bridge_net.add(bridge_net.conf(gsoMaxSize=196608))
    assert pod.reply.code == 0, pod.reply.stdout
    veth = pod.reply.json["interfaces"][1]["name"]
    assert ipv4_gso_limits(pod.ns, "eth0") == (196608, 196608)
    assert ipv4_gso_limits(bridge_net.host, veth) == (196608, 196608)
    assert ipv4_gso_limits(bridge_net.host, "cni0") == (196608, 196608)
    assert pod.ns.ping("10.250.0.1")
    plain = bridge_net.add()  # without the key: the kernel's default
    assert plain.reply.code == 0 and ipv4_gso_limits(plain.ns, "eth0") == (65536, 65536)


def kernel_has_bridge_vlan_filtering(ns) -> bool:
    made = ns.run("ip", "link", "add", "vfprobe", "type", "bridge", "vlan_filtering", "1",
                  check=False)
    ns.run("ip", "link", "del", "vfprobe", check=False)
    return made.returncode == 0


def test_vlan_without_kernel_support_is_a_clear_error(bridge_net):
    if kernel_has_bridge_vlan_filtering(bridge_net.host):
        pytest.skip("this kernel has bridge VLAN filtering; the functional test covers vlan")
    pod = bridge_net.add(bridge_net.conf(vlan=100))
    assert pod.reply.error_code == 101, pod.reply.stdout
    assert "CONFIG_BRIDGE_VLAN_FILTERING" in pod.reply.json["msg"]
    assert "cni0" not in bridge_net.host.links()
    assert bridge_net.reservations() == [] and pod.ns.links() == ["lo"]


def test_vlan_isolates_pods_and_keeps_the_gateway(bridge_net):
    if not kernel_has_bridge_vlan_filtering(bridge_net.host):
        pytest.skip("this kernel lacks CONFIG_BRIDGE_VLAN_FILTERING")
    on_vlan = bridge_net.conf(vlan=100)
    a = bridge_net.add(on_vlan)
    b = bridge_net.add(on_vlan)
    assert a.reply.code == 0, a.reply.stdout
    assert a.ns.ping(b.address)
    assert a.ns.ping("10.250.0.1")
    assert "10.250.0.1/24" in bridge_net.host.addresses("cni0.100")
    vlans = bridge_net.host.run("bridge", "vlan", "show").stdout
    veth = a.reply.json["interfaces"][1]["name"]
    line = next(line for line in vlans.split(veth)[1].splitlines() if line.strip())
    assert "100" in line and "PVID" in line


def test_dual_stack_pods_talk_over_ipv6(bridge_net, data_dir):
    conf = bridge_net.conf(ipam={
        "type": "tartan-ipam", "dataDir": str(data_dir),
        "ranges": [[{"subnet": "10.250.0.0/24"}], [{"subnet": "fd00:250::/64"}]],
    })
    a = bridge_net.add(conf)
    b = bridge_net.add(conf)
    assert a.reply.code == 0, a.reply.stdout
    v6 = [ip["address"].split("/")[0] for ip in b.reply.json["ips"]
          if ipaddress.ip_interface(ip["address"]).version == 6]
    assert v6
    assert a.ns.run("ping", "-6", "-c1", "-W2", v6[0], check=False).returncode == 0


def test_delegates_to_the_reference_host_local_by_exec(bridge_net, data_dir):
    # The reference host-local here (v1.1.1) speaks spec versions up to 1.0.0.
    conf = bridge_net.conf(cniVersion="1.0.0",
                           ipam={"type": "host-local", "subnet": "10.250.0.0/24",
                                 "dataDir": str(data_dir)})
    pod = bridge_net.add(conf, path=[plugin_dir(), REFERENCE_CNI])
    assert pod.reply.code == 0, pod.reply.stdout
    assert pod.ns.ping("10.250.0.1")
    assert bridge_net.delete(pod, conf, path=[plugin_dir(), REFERENCE_CNI]).code == 0
    assert bridge_net.reservations() == []


def test_gc_releases_what_is_not_valid(bridge_net):
    conf = bridge_net.conf(ipMasq=True)
    keep = bridge_net.add(conf)
    drop = bridge_net.add(conf)
    gc = bridge_net.conf(ipMasq=True)
    gc["cni.dev/valid-attachments"] = [{"containerID": keep.container_id, "ifname": "eth0"}]
    assert bridge_net.run("GC", config=gc, ifname="").code == 0
    rules = "\n".join(bridge_net.masq_rules())
    assert keep.address in rules and drop.address not in rules
    assert bridge_net.reservations() == [keep.address]


def test_status_answers_ok(bridge_net):
    assert bridge_net.run("STATUS", ifname="").code == 0
