"""The fast path: plugins hand requests to the agent's socket; without it they work alone.

The CNI server runs in a node namespace entered with `nsenter --net` only, so it shares
the test's mount namespace with the plugins (as tartand shares the host's with a runtime).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tartan.cni.fastpath import MAGIC, ask_agent

from harness import Netns, eventually, plugin_dir, unique

pytestmark = pytest.mark.kernel


@dataclass
class PodRef:
    ns: Netns
    container_id: str
    ifname: str = "eth0"


TRACED_SERVER = Path(__file__).with_name("traced_cni_server.py")


class Agent:
    """The CNI server alone, in the node's netns. `traced`: the same server, telling on
    stderr which requests it has begun and which it has answered (traced_cni_server.py)."""

    def __init__(self, ns, path: Path, mode: str = "600", traced: bool = False) -> None:
        self.ns, self.path, self.mode, self.traced = ns, path, mode, traced
        self.proc: subprocess.Popen | None = None
        self.stderr: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> Agent:
        program = [str(TRACED_SERVER)] if self.traced else ["-m", "tartan.cni.server"]
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={self.ns.path}", sys.executable, *program,
             "--socket", str(self.path), "--mode", self.mode],
            stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,),
                                        daemon=True)
        self._reader.start()
        eventually(self.path.exists, 20, 0.05, process=self.proc,
                   what=lambda: "CNI server started:\n" + "".join(self.stderr))
        return self

    def _read(self, stream) -> None:
        for line in stream:
            self.stderr.append(line)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self._reader is not None:
            self._reader.join(10)  # all it wrote before it died

    def unanswered(self) -> list[str]:
        """Requests the (traced) server has begun and not answered, as "ADD <container>"."""
        begun: list[str] = []
        for line in list(self.stderr):
            event, _, key = line.rstrip("\n").partition(" ")
            if event == "begin":
                begun.append(key)
            elif event == "reply":
                begun.remove(key)
        return begun

    def answered(self) -> int:
        return sum(line.startswith("reply ") for line in list(self.stderr))


@pytest.fixture
def agent(bridge_net, tmp_path):
    made = Agent(bridge_net.host, tmp_path / "cni.sock")
    try:
        yield made.start()
    finally:
        made.kill()


def run_in_node(bridge_net, agent, command, pod, config=None, **kw):
    """The plugin as a runtime runs it, in the node's netns but the host's mount namespace."""
    kw.setdefault("container_id", pod.container_id)
    kw.setdefault("netns", pod.ns.path)
    kw.setdefault("ifname", pod.ifname)
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_PATH": str(plugin_dir()),
           "CNI_CONTAINERID": kw["container_id"], "CNI_NETNS": kw["netns"],
           "CNI_IFNAME": kw["ifname"], "TARTAN_CNI_SOCKET": str(agent.path)}

    proc = subprocess.run(["nsenter", f"--net={bridge_net.host.path}",
                           str(plugin_dir() / "tartan-bridge")],
                          input=json.dumps(config or bridge_net.config).encode(), env=env,
                          capture_output=True, timeout=60, check=False)
    return proc.returncode, proc.stdout.decode()


def served(agent) -> int:
    return agent.proc is not None and agent.proc.poll() is None


def test_fast_path_and_fallback_give_the_same_result_and_state(bridge_net, agent):

    fast = PodRef(bridge_net.factory("tp"), unique("ctr-"))
    code, out = run_in_node(bridge_net, agent, "ADD", fast)
    assert code == 0, out
    agent.kill()
    slow = PodRef(bridge_net.factory("tp"), unique("ctr-"))
    code, out_slow = run_in_node(bridge_net, agent, "ADD", slow)
    assert code == 0, out_slow
    a, b = json.loads(out), json.loads(out_slow)
    assert [i["name"] for i in a["interfaces"]][::2] == [i["name"] for i in b["interfaces"]][::2]
    assert a["ips"][0]["gateway"] == b["ips"][0]["gateway"]
    assert a["ips"][0]["address"] != b["ips"][0]["address"]
    assert len(bridge_net.reservations()) == 2 and len(bridge_net.host_veths()) == 2
    fast_ip = a["ips"][0]["address"].split("/")[0]
    assert slow.ns.ping(fast_ip)
    for pod in (fast, slow):
        assert run_in_node(bridge_net, agent, "DEL", pod)[0] == 0
    assert bridge_net.reservations() == []
    assert bridge_net.host_veths() == []


def interface_up(pod: PodRef) -> bool:
    out = pod.ns.run("ip", "-o", "link", "show", "dev", pod.ifname, check=False).stdout
    return bool(out) and ",UP" in out.split(">")[0] + ","


def test_del_through_the_agent_answers_with_the_pod_off_the_network_then_finishes(
        bridge_net, agent):
    pod = PodRef(bridge_net.factory("tp"), unique("ctr-"))
    assert run_in_node(bridge_net, agent, "ADD", pod)[0] == 0
    assert interface_up(pod)
    assert run_in_node(bridge_net, agent, "DEL", pod)[0] == 0
    assert served(agent)
    # when DEL answers: the address is free and the pod's interface is down (or gone)
    assert bridge_net.reservations() == []
    assert not interface_up(pod)
    # the veth pair's deletion, which the agent finishes after the reply
    eventually(lambda: bridge_net.host_veths() == [] and "eth0" not in pod.ns.links(), 10, 0.02,
               what="the veth pair deleted after DEL's reply")


def test_a_request_right_after_del_waits_for_the_agent_to_finish_it(bridge_net, agent):
    """A runtime may ADD the same container into the same netns again at once: the ADD must
    not find the interface the agent is still deleting."""
    pod = PodRef(bridge_net.factory("tp"), unique("ctr-"))
    for _ in range(3):
        code, out = run_in_node(bridge_net, agent, "ADD", pod)
        assert code == 0, out
        assert pod.ns.ping("10.250.0.1")
        assert run_in_node(bridge_net, agent, "DEL", pod)[0] == 0
    assert served(agent)
    eventually(lambda: bridge_net.host_veths() == [], 10, 0.02,
               what="every veth deleted after the last DEL's reply")
    assert bridge_net.reservations() == []


def test_requests_really_go_through_the_agent(bridge_net, agent):
    pod = PodRef(bridge_net.factory("tp"), unique("ctr-"))
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": pod.container_id, "CNI_NETNS": pod.ns.path,
           "CNI_IFNAME": "eth0", "CNI_PATH": str(plugin_dir()), "PATH": os.environ["PATH"]}

    # Asked from the test's own network namespace, the agent declines: not its namespace.
    assert ask_agent("tartan-bridge", env, json.dumps(bridge_net.config).encode(),
                     str(agent.path)) is None
    code, out = run_in_node(bridge_net, agent, "ADD", pod)
    assert code == 0
    assert served(agent)


def test_a_request_from_another_namespace_falls_back_to_in_process(bridge_net, agent):
    pod = bridge_net.add()  # run through `ip netns exec`: another mount namespace
    assert pod.reply.code == 0, pod.reply.stdout
    assert pod.ns.ping("10.250.0.1")


def _raw(agent, payload: bytes) -> tuple[int, str]:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(agent.path))
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    code, size = struct.unpack(">iI", data[len(MAGIC):len(MAGIC) + 8])
    return code, data[len(MAGIC) + 8:].decode()


def test_malformed_and_oversized_requests_get_cni_errors_and_the_agent_keeps_serving(agent):

    code, out = _raw(agent, b"GARBAGE-REQUEST")
    assert code == 1 and json.loads(out)["code"] == 6
    code, out = _raw(agent, MAGIC + struct.pack(">I", 1 << 30))
    assert code == 1 and json.loads(out)["code"] == 4 and "limit" in json.loads(out)["msg"]
    code, out = _raw(agent, MAGIC + struct.pack(">I", 3) + b"bad")
    assert code == 1 and json.loads(out)["code"] in (4, 6)
    assert served(agent)
    code, out = _raw(agent, MAGIC + struct.pack(">I", 13) + b"tartan-bridge"
                     + struct.pack(">I", 0) + struct.pack(">I", 0))
    assert served(agent) and code != 0  # no namespace identity: declined, not run


def test_a_non_root_client_is_refused(bridge_net):
    folder = Path(tempfile.mkdtemp(prefix="tartan-sock-"))
    folder.chmod(0o755)  # so that `nobody` reaches the socket, and the credential check
    open_agent = Agent(bridge_net.host, folder / "open.sock", mode="666").start()
    try:
        probe = ("import socket,struct,sys;s=socket.socket(socket.AF_UNIX);"
                 f"s.connect('{open_agent.path}');s.sendall(b'TCNI1');s.shutdown(1);"
                 "d=s.recv(65536);sys.stdout.write(d[13:].decode())")
        out = subprocess.run(["/usr/bin/python3", "-I", "-c", probe], capture_output=True,
                             text=True, user=65534, timeout=30, check=True).stdout
        assert "root only" in out
        assert served(open_agent)
    finally:
        open_agent.kill()
        shutil.rmtree(folder, ignore_errors=True)


def temp_files(bridge_net) -> list[str]:
    folder = bridge_net.data_dir / bridge_net.config["name"]
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def assert_half_written_files_are_swept(bridge_net, agent) -> None:
    """A write cut by the kill may leave a temp file; the next ADD (under the lock) sweeps."""
    if temp_files(bridge_net):
        extra = PodRef(bridge_net.factory("tq"), unique("ctr-"))
        assert run_in_node(bridge_net, agent, "ADD", extra)[0] == 0
        assert run_in_node(bridge_net, agent, "DEL", extra)[0] == 0
        assert temp_files(bridge_net) == []


def test_killing_the_agent_mid_batch_leaves_no_half_made_pod(bridge_net, tmp_path):
    agent = Agent(bridge_net.host, tmp_path / "traced.sock", traced=True).start()
    pods = [PodRef(bridge_net.factory("tq"), unique("ctr-"))
            for _ in range(12)]
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(run_in_node, bridge_net, agent, "ADD", p) for p in pods]
            # Mid-batch: some ADDs answered, several taken up by the agent and not answered.
            eventually(lambda: agent.answered() >= 1 and len(agent.unanswered()) >= 2, 60,
                       0.002, what=lambda: "agent busy mid-batch:\n" + "".join(agent.stderr))
            agent.kill()
            # The premise, from the dead agent's complete record: it was killed with
            # requests it had begun (maybe half done) and never answered.
            in_flight = agent.unanswered()
            assert in_flight, "the agent had answered every request it took up when killed"
            assert all(key.startswith("ADD ") for key in in_flight), in_flight
            results = [f.result() for f in futures]
    finally:
        agent.kill()
    for pod, (code, _out) in zip(pods, results, strict=True):
        if code == 0:
            assert "eth0" in pod.ns.links()
        # whatever happened, DEL (now in-process) cleans up
        assert run_in_node(bridge_net, agent, "DEL", pod)[0] == 0
    assert bridge_net.reservations() == []
    assert_half_written_files_are_swept(bridge_net, agent)
    assert bridge_net.host_veths() == []
