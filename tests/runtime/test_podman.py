"""A real container runtime runs containers on Tartan: podman 4 with its CNI backend.

Every test runs on the reference plugins (`bridge` + `host-local` + `portmap`: the baseline
that proves the test and the setup) and on `tartan-bridge` + `tartan-ipam` + the reference
`portmap`, from a conflist podman reads from the test's own config dir (see conftest.py).
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from pathlib import Path

import pytest
from podman_env import PodmanNet, free_port, http_get

pytestmark = pytest.mark.runtime

SHOW_AND_PING = 'ip -4 -o addr show dev eth0 && ping -c 1 -W 3 "$1"'


def assert_wired_off(net: PodmanNet, container_id: str, address: str = "") -> None:
    """No reservation, veth, iptables rule or chain of the container is left on the host."""
    assert net.reservations() == []
    assert net.bridge_ports() == []
    rules, chains = net.added()
    mentions = [container_id] + ([f"{address}/32", f"{address}:"] if address else [])
    left = [r for r in net.rules("nat") + net.rules("filter")
            if any(m in r for m in mentions)]
    assert left == [], "rules of the removed container remain"
    assert [r for r in rules if "TARTAN" in r] == []
    # portmap's shared CNI-HOSTPORT-{DNAT,MASQ,SETMARK} chains stay (the reference leaves
    # them); the container's own chains must not.
    assert [c for c in chains if not c.startswith("CNI-HOSTPORT-")] == []


def test_container_gets_an_address_from_the_range_and_pings_the_gateway(podman_net, tmp_path):
    cidfile = tmp_path / "cid"
    proc = podman_net.run("sh", "-c", SHOW_AND_PING, "sh", podman_net.gateway,
                          rm=True, cidfile=cidfile)
    addresses = re.findall(r"\binet (\S+)", proc.stdout)
    assert len(addresses) == 1, proc.stdout
    address = ipaddress.ip_interface(addresses[0])
    assert address.network == podman_net.subnet, proc.stdout
    assert str(address.ip) != podman_net.gateway
    assert "1 packets received" in proc.stdout, proc.stdout
    # --rm: podman ran DEL before it returned.
    assert_wired_off(podman_net, cidfile.read_text().strip(), str(address.ip))


def test_detached_container_is_wired_while_it_runs_and_unwired_by_rm(podman_net):
    host_port = free_port()
    cid = podman_net.run("sleep", "600", detach=True,
                         publish=((host_port, 8080),)).stdout.strip()
    info = podman_net.inspect(cid)
    address = info["NetworkSettings"]["Networks"][podman_net.name]["IPAddress"]
    assert ipaddress.ip_address(address) in podman_net.subnet
    sandbox = Path(info["NetworkSettings"]["SandboxKey"])
    assert sandbox.exists()

    # The reservation, in host-local's layout: dataDir/<net>/<ip> holding the container id.
    assert podman_net.reservations() == [address]
    assert cid in (podman_net.data_dir / podman_net.name / address).read_text()

    # The host end of the container's eth0 is on the bridge.
    ports = podman_net.bridge_ports()
    assert [p["ifname"][:4] for p in ports] == ["veth"], ports
    iflink = podman_net.podman("exec", cid, "cat", "/sys/class/net/eth0/iflink").stdout
    assert int(iflink) == ports[0]["ifindex"]

    # Masquerade of the container's address, and portmap's DNAT of the published port.
    nat = podman_net.rules("nat")
    masq = [r for r in nat if r.startswith(f"-A POSTROUTING -s {address}/32 ") and cid in r]
    assert len(masq) == 1, nat
    assert f"-j {podman_net.masq_chain}" in masq[0]
    dnat = [r for r in nat if r.startswith("-A CNI-HOSTPORT-DNAT ") and cid in r]
    assert len(dnat) == 1 and f"--dports {host_port}" in dnat[0], nat

    podman_net.podman("rm", "--force", "--time", "0", cid)

    assert not sandbox.exists()
    assert_wired_off(podman_net, cid, address)


def test_published_port_reaches_a_server_in_the_container(podman_net):
    token = uuid.uuid4().hex
    (podman_net.rootfs / "www" / "index.html").write_text(token)
    host_port = free_port()
    podman_net.run("httpd", "-f", "-p", "8080", "-h", "/www", detach=True,
                   publish=((host_port, 8080),))
    # From the host namespace, to two of the host's own addresses: loopback (portmap's
    # hairpin through route_localnet) and the bridge's gateway address.
    for host in ("127.0.0.1", podman_net.gateway):
        assert http_get(host, host_port, "/index.html").strip() == token, host
