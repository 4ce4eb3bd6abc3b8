"""containerd's CRI runs pod sandboxes on Tartan, as kubelet asks for them.

Each test runs three times (conftest.py): Tartan with the bundle's tartand up (the plugins
hand each request to its socket), Tartan with no agent (every plugin runs in-process), and
the reference `bridge` + `host-local` + `portmap` on the same containerd (the baseline that
proves the test). containerd, its pods, the bridges and the rules all live in the node's
network namespace (cri_node.py); the test reaches into a pod through the netns containerd
made for it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest

from tartan.kernel.netns import entered

from harness import eventually

pytestmark = pytest.mark.cri

TCP_PORT, UDP_PORT = (8080, 30080), (5353, 30053)  # (containerPort, hostPort)


def ping(cri, pod, address: str) -> bool:
    proc = cri.node.in_pod(pod, "ping", "-c", "1", "-W", "2", address)
    return proc.returncode == 0


def _socket(netns: str, kind: str) -> socket.socket:
    """A socket of `netns` (a socket stays in the namespace it was made in)."""
    with entered(netns):
        return socket.socket(socket.AF_INET,
                             socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)


@contextlib.contextmanager
def serve(netns: str, kind: str, port: int, token: bytes) -> Iterator[None]:
    """A listener in `netns` on `port` that answers every connection (tcp) or datagram
    (udp) with `token`, for the body of the with-statement."""
    sock = _socket(netns, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    if kind == "tcp":
        sock.listen(8)
    sock.settimeout(0.2)
    done = threading.Event()

    def answer() -> None:
        while not done.is_set():
            try:
                if kind == "tcp":
                    conn, _ = sock.accept()
                    with conn:
                        conn.sendall(token)
                else:
                    _, peer = sock.recvfrom(64)
                    sock.sendto(token, peer)
            except OSError:  # a timeout: look at `done` again
                continue

    thread = threading.Thread(target=answer, name=f"serve-{kind}-{port}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)
        sock.close()


def ask(netns: str, kind: str, host: str, port: int) -> bytes:
    """Connect (tcp) or send one datagram (udp) from `netns` and return the answer."""
    with _socket(netns, kind) as sock:
        sock.settimeout(2)
        if kind == "tcp":
            sock.connect((host, port))
        else:
            sock.sendto(b"hello", (host, port))
        return sock.recv(64)


def test_pods_get_addresses_from_the_subnet_and_reach_each_other_and_the_gateway(cri):
    gateway = cri.gateway
    a, b = cri.run_pod("web-a"), cri.run_pod("web-b")
    for pod in (a, b):
        assert ipaddress.ip_address(pod.ip) in gateway.network, (pod, gateway)
        assert pod.ip != str(gateway.ip)
        shown = cri.node.in_pod(pod, "ip", "-4", "-o", "addr", "show").stdout
        assert f"inet {pod.ip}/{gateway.network.prefixlen} " in shown, shown
        assert "inet 127.0.0.1/8 " in shown, "containerd's loopback plugin did not run"
    assert a.ip != b.ip
    assert cri.node.reservations(cri.handler) == sorted([a.ip, b.ip])
    assert len(cri.node.bridge_ports(cri.handler)) == 2

    listed = {i["id"]: i for i in cri.client.call("ListPodSandbox")["items"]}
    for pod in (a, b):
        assert listed[pod.id]["state"] == "SANDBOX_READY"
        assert listed[pod.id]["metadata"]["name"] == pod.name
        assert listed[pod.id]["runtime_handler"] == cri.handler

    for pod, address in ((a, b.ip), (b, a.ip), (a, str(gateway.ip)), (b, str(gateway.ip))):
        eventually(lambda p=pod, d=address: ping(cri, p, d), 10,
                   what=f"{pod.name} pings {address}")

    cri.remove(a, b)
    cri.assert_gone(a, b)


def test_host_ports_answer_on_the_node_address(cri):
    pod = cri.run_pod("hostport", ports=(("TCP", *TCP_PORT), ("UDP", *UDP_PORT)))
    token = uuid.uuid4().hex.encode()
    node, address = cri.node.netns, cri.node.node_ip
    with serve(pod.netns, "tcp", TCP_PORT[0], token), \
            serve(pod.netns, "udp", UDP_PORT[0], token):
        for kind, (_, host_port) in (("tcp", TCP_PORT), ("udp", UDP_PORT)):
            answer = eventually(lambda k=kind, h=host_port: ask(node, k, address, h), 10,
                                retry_on=(OSError,), what=f"{kind} {address}:{host_port}")
            assert answer == token, kind
    dnat = [r for r in cri.node.iptables() if f"{pod.ip}:{TCP_PORT[0]}" in r]
    assert dnat, "no DNAT rule to the pod's containerPort"

    cri.remove(pod)
    cri.assert_gone(pod)
    with serve(node, "tcp", TCP_PORT[1], b"node"):
        # The hostPort is the node's own again: nothing redirects it any more.
        assert ask(node, "tcp", address, TCP_PORT[1]) == b"node"


def test_stop_releases_the_network_and_remove_forgets_the_sandbox(cri):
    pod = cri.run_pod("stopped", ports=(("TCP", *TCP_PORT),))
    for _ in range(2):  # kubelet may call StopPodSandbox more than once
        cri.client.call("StopPodSandbox", {"pod_sandbox_id": pod.id})
    status = cri.client.call("PodSandboxStatus", {"pod_sandbox_id": pod.id})["status"]
    assert status["state"] == "SANDBOX_NOTREADY"
    # Stopped is off the network already: netns, address, rules, chains and veth are gone.
    left = [x for x in cri.node.left_of(pod) if not x.startswith(("shim", "mount"))]
    assert left == []
    eventually(lambda: cri.node.bridge_ports(cri.handler) == [], 10, what="veth removed")
    assert cri.node.pod_chains() == []

    for _ in range(2):  # and RemovePodSandbox of a removed sandbox is no error
        cri.client.call("RemovePodSandbox", {"pod_sandbox_id": pod.id})
    cri.assert_gone(pod)


def test_with_tartand_up_requests_go_to_it_and_with_it_down_they_run_in_process(tartan_cri):
    node = tartan_cri.node
    pod = tartan_cri.run_pod("path")
    tartan_cri.remove(pod)
    served = node.agent_requests(pod.id)
    journal = [e["command"] for e in node.journal_entries(pod.id)]
    if node.agent:
        assert [c for c in ("ADD", "DEL") if not any(f"command={c}" in s for s in served)] \
            == [], node.agent_text()[-3000:]
        assert journal == [], "the agent answered, so the plugins had nothing to journal"
    else:
        assert served == [] and not node.socket.exists()
        # The in-process plugin leaves kubelet's pods for the agent to record later. CRI
        # runs DEL at every StopPodSandbox, RemovePodSandbox's included (then without a
        # netns): one ADD, then DELs only.
        assert journal[:1] == ["ADD"] and set(journal[1:]) == {"DEL"}, journal
    tartan_cri.assert_gone(pod)
