"""Tartan on real Debian 12 VMs (their own 6.1 kernel) under qemu: three VMs provisioned by
vagrant/provision.sh as the Vagrantfile provisions its nodes, pods made by the real plugins,
the full cross-VM ping matrix for vxlan and host-gw, tartand restarted under traffic, a VM
rebooted, and BIG TCP reported as the 6.1 kernel's lack. The VMs, their network namespace
and their files are removed at the end, also when a test fails."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator

import pytest
from vmlab import cluster, machines
from vmlab.machines import Lab

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def lab(vm_image) -> Iterator[Lab]:
    name = f"t{int(time.time()) % 100000}"
    lab = machines.up(name, vm_image, 3, say=print)
    try:
        cluster.provision(lab, "vxlan", say=print)
        yield lab
    finally:
        machines.down(lab)
        assert not machines.Lab(name).dir.exists()
        assert not subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                  check=True).stdout.count(lab.netns)


@pytest.fixture(scope="module")
def pods(lab: Lab) -> list[cluster.PodOnVm]:
    return cluster.add_pods(lab)


def test_every_vm_runs_its_own_debian_kernel_and_the_installed_tartand(lab: Lab):
    for vm in lab.vms:
        out = machines.ssh(lab, vm, "uname -r; systemctl is-active tartand; "
                                    "readlink /opt/cni/bin/tartan").stdout.split()
        assert out[0].startswith("6.1.") and out[0] == lab.image["kernel_version"]
        assert out[1] == "active" and out[2].startswith("../../tartan/")


def test_the_full_cross_vm_ping_matrix_over_vxlan(lab: Lab, pods):
    matrix = cluster.ping_matrix(lab, pods)
    assert len(matrix) == 6 and all(matrix.values()), cluster.render_matrix(pods, matrix)
    route = machines.ssh(lab, lab.vms[0], f"ip route get {pods[1].ip}").stdout
    assert "dev tartan.1" in route


def test_big_tcp_is_reported_missing_on_6_1_and_nothing_else_depends_on_it(lab: Lab):
    status = json.loads(machines.ssh(lab, lab.vms[0], "tartanctl status -o json").stdout)
    assert status["node"]["bigTCP"] == "not supported by this kernel (IPv4 BIG TCP needs 6.3)"
    text = machines.ssh(lab, lab.vms[0], "tartanctl status").stdout
    assert "BIG TCP:  not supported by this kernel" in text


def test_restarting_tartand_under_a_continuous_cross_vm_ping_loses_nothing(lab: Lab, pods):
    src, dst = pods[0], pods[1]
    vm1, vm2 = lab.vm(src.vm), lab.vm(dst.vm)
    # a count, not a deadline: with -w the last request can still be in flight when ping
    # stops, and would be counted as lost
    count = 125
    pinger = subprocess.Popen(machines.ssh_argv(
        lab, vm1, f"ip netns exec {src.netns} ping -n -i 0.2 -W 5 -c {count} {dst.ip}"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        machines.ssh(lab, vm2, "systemctl restart tartand")
        cluster.wait_ready(lab, vm2.name)
        machines.ssh(lab, vm1, "systemctl restart tartand")
        out, _ = pinger.communicate(timeout=90)
    finally:
        if pinger.poll() is None:
            pinger.kill()
    answered = {int(seq) for seq in re.findall(r"icmp_seq=(\d+) ttl=", out)}
    lost = sorted(set(range(1, count + 1)) - answered)
    assert not lost, f"lost icmp_seq {lost}\n" + "\n".join(out.splitlines()[-4:])


def test_a_rebooted_vm_keeps_its_subnet_and_leaks_no_address(lab: Lab, pods):
    vm = lab.vms[2]
    before = machines.ssh(lab, vm, "cat /run/tartan/subnet.env").stdout
    held = machines.ssh(lab, vm, "ls /var/lib/cni/networks/tartan").stdout.split()
    assert any(re.fullmatch(r"[\d.]+", name) for name in held)  # its pod's address
    machines.reboot(lab, vm)
    cluster.wait_ready(lab, vm.name)
    after = machines.ssh(lab, vm, "cat /run/tartan/subnet.env").stdout
    subnet = re.compile(r"FLANNEL_SUBNET=(\S+)")
    assert subnet.search(after)[1] == subnet.search(before)[1]  # type: ignore[index]
    # the pod did not survive the reboot; its address is released by the first ADD after it
    again = cluster.add_pod(lab, vm.name, "default/after-reboot")
    leases = [name for name in machines.ssh(lab, vm, "ls /var/lib/cni/networks/tartan")
              .stdout.split() if re.fullmatch(r"[\d.]+", name)]
    assert leases == [again.ip]
    matrix = cluster.ping_matrix(lab, [*[p for p in pods if p.vm != vm.name], again])
    assert all(matrix.values()), matrix


def test_the_full_cross_vm_ping_matrix_over_host_gw(lab: Lab):
    cluster.delete_all_pods(lab)
    cluster.unprovision(lab)
    cluster.provision(lab, "host-gw", say=print)
    fresh = cluster.add_pods(lab)
    matrix = cluster.ping_matrix(lab, fresh)
    assert all(matrix.values()), cluster.render_matrix(fresh, matrix)
    route = machines.ssh(lab, lab.vms[0], f"ip route get {fresh[1].ip}").stdout
    assert f"via {lab.vms[1].ip} dev eth0" in route
