"""podman on the installed bundle: 10-tartan.conflist from <DESTDIR>/opt/cni/bin, with the
bundle's tartand running (the plugins relay to its socket) and with it stopped (tartan-cni
execs tartan-full).

Everything happens in a network namespace of the test's own (the "node"): the agent and
podman are started there with `nsenter --net` only, so they share the test's mount namespace
(the agent declines callers outside its namespaces) and the bridge, the vxlan link and the
iptables rules land in the node, which goes away at the end. podman's own state, containers
and cgroups are `PodmanNet`'s (podman_env.py), whose cleanup and `leftovers` also prove the
real host was left as found.

podman (libcni) hands its own environment to the plugins, so TARTAN_CNI_SOCKET reaches
them; the `podman container cleanup` that conmon runs when a container exits gets conmon's
curated environment instead, hence `conmon_env_vars` in the test's containers.conf.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from podman_env import PODMAN, RUNC, HostSnapshot, PodmanNet, free_port

from harness import REFERENCE_CNI, Netns, eventually, make_netns, remove_netns, stop_process

pytestmark = pytest.mark.runtime

TESTS = Path(__file__).resolve().parents[1]
NETWORK = ipaddress.ip_network("10.252.0.0/16")
UPLINK = ("tbn0", "198.18.77.2/24")


def bundle_kit():
    """tests/packaging/bundle_kit.py (not on this directory's import path)."""
    if "bundle_kit" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "bundle_kit", TESTS / "packaging" / "bundle_kit.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bundle_kit"] = module
        spec.loader.exec_module(module)
    return sys.modules["bundle_kit"]


@dataclass
class BundleNet(PodmanNet):
    """A `PodmanNet` whose conflist is packaging/10-tartan.conflist and whose podman runs in
    the node namespace, on the installed CNI names."""

    node: Netns | None = None
    socket: Path | None = None

    @property
    def meta_dir(self) -> Path:
        return self.tmp / "meta"

    def conflist(self) -> dict:
        conflist = json.loads((bundle_kit().PACKAGING / "10-tartan.conflist").read_text())
        conflist["name"] = self.name
        meta = conflist["plugins"][0]
        assert meta["type"] == "tartan", conflist
        meta.update({"subnetFile": str(self.tmp / "subnet.env"),
                     "dataDir": str(self.meta_dir),
                     "delegate": {"ipam": {"dataDir": str(self.data_dir)}}})
        return conflist

    @property
    def env(self) -> dict:
        env = super().env
        env["TARTAN_CNI_SOCKET"] = str(self.socket)
        return env

    def write_config(self) -> None:
        super().write_config()
        # conmon gets a curated environment (PATH, CONTAINERS_CONF, LC_*...), and so does
        # the `podman container cleanup` it runs when the container exits, which may be the
        # one to call DEL: without this its plugins would not find the agent's socket.
        conf = self.tmp / "containers.conf"
        conmon_env = [f"PATH={os.environ['PATH']}", f"TARTAN_CNI_SOCKET={self.socket}"]
        conf.write_text(conf.read_text().replace(
            "[engine]\n", f"[engine]\nconmon_env_vars = {json.dumps(conmon_env)}\n", 1))

    def podman(self, *args: str, check: bool = True,
               timeout: float = 60) -> subprocess.CompletedProcess:
        argv = ["nsenter", f"--net={self.node.path}", PODMAN, *self.global_args, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stderr.strip()}\n{proc.stdout.strip()}")
        return proc

    def check_network_loaded(self) -> None:
        proc = self.podman("network", "inspect", self.name, check=False)
        assert proc.returncode == 0, f"podman did not load {self.name}:\n{proc.stderr}"
        assert json.loads(proc.stdout)[0].get("driver") == "tartan", proc.stdout


@dataclass
class Agent:
    proc: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def requests(self, container: str) -> list[str]:
        return [line for line in self.text().splitlines()
                if "event=cni.request" in line and container in line]

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def bundle_node(tmp_path: Path) -> Iterator[tuple[BundleNet, Agent]]:
    if not PODMAN or not RUNC:
        pytest.skip("podman and runc are needed (apt-get install podman runc)")
    assert os.geteuid() == 0, "runtime tests need root"
    kit = bundle_kit()
    made = kit.make("bundle")
    assert made.returncode == 0, f"make bundle failed:\n{made.stdout[-3000:]}"
    token = uuid.uuid4().hex[:6]
    destdir = tmp_path / "destdir"
    node_name = f"tbn{token}"
    net = agent = None
    installed = False
    try:
        proc = kit.install_py("install", destdir, kit.REPO / "dist" / "tartan")
        assert proc.returncode == 0, proc.stderr
        installed = True
        staged = kit.Staged(destdir)

        node = make_netns(node_name)
        node.run("ip", "link", "add", UPLINK[0], "type", "veth", "peer", "name",
                 f"{UPLINK[0]}p")
        node.run("ip", "addr", "add", UPLINK[1], "dev", UPLINK[0])
        for link in (UPLINK[0], f"{UPLINK[0]}p"):
            node.run("ip", "link", "set", link, "up")

        net = BundleNet(
            kind="tartan", tmp=tmp_path, name=f"tpb{token}", subnet=NETWORK,
            snapshot=HostSnapshot.take(), cgroup_parent=f"/tartan-rt-{token}",
            state=Path(tempfile.mkdtemp(prefix=f"tpb{token}-", dir="/tmp")),
            plugin_dirs=[str(staged.cni_bin), str(REFERENCE_CNI)],
            node=node, socket=tmp_path / "cni.sock")

        conf = tmp_path / "net-conf.json"
        conf.write_text(json.dumps({"Network": str(NETWORK), "Backend": {"Type": "vxlan"}}))
        argv = ["nsenter", f"--net={node.path}", str(staged.command("tartand")),
                "--store", f"sqlite:{tmp_path / 'leases.db'}", "--net-config", str(conf),
                "--iface", UPLINK[0], "--subnet-file", str(tmp_path / "subnet.env"),
                "--cni-socket", str(net.socket),
                "--http-addr", f"127.0.0.1:{free_port()}", "--ip-masq"]
        log = tmp_path / "tartand.log"
        with open(log, "wb") as out:
            agent = Agent(subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=out), log)
        eventually(lambda: net.socket.exists() and "agent.started" in agent.text(), 30,
                   process=agent.proc, what=lambda: f"tartand started:\n{agent.text()}")

        net.write_config()
        net.check_network_loaded()
        yield net, agent
    finally:
        problems: list[str] = []
        if net is not None:
            problems += net.cleanup()  # podman rm -a (in the node), cgroups, podman state
        if agent is not None:
            agent.stop()
        remove_netns(node_name)  # the bridge, vxlan, veths and iptables state of the node
        if net is not None:
            problems += [f"still there: {x}" for x in net.leftovers()]
        if installed:
            kit.install_py("uninstall", destdir)
        shutil.rmtree(destdir, ignore_errors=True)
        if problems:
            pytest.fail("the host was not left as found:\n  " + "\n  ".join(problems))


def node_subnet(net: BundleNet) -> ipaddress.IPv4Interface:
    text = (net.tmp / "subnet.env").read_text()
    match = re.search(r"^FLANNEL_SUBNET=(\S+)$", text, re.M)
    assert match, text
    return ipaddress.ip_interface(match.group(1))


def run_one(net: BundleNet, gateway: str) -> tuple[str, ipaddress.IPv4Interface]:
    """A detached container: its address, a ping to the gateway, then `podman rm -f`."""
    cid = net.run("sleep", "600", detach=True).stdout.strip()
    shown = net.podman("exec", cid, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    addresses = re.findall(r"\binet (\S+)", shown)
    assert len(addresses) == 1, shown
    address = ipaddress.ip_interface(addresses[0])
    assert net.reservations() == [str(address.ip)]
    pinged = net.podman("exec", cid, "ping", "-c", "1", "-W", "3", gateway, check=False)
    assert "1 packets received" in pinged.stdout, pinged.stdout + pinged.stderr
    net.podman("rm", "--force", "--time", "0", cid)
    assert net.reservations() == [], "podman rm -f did not release the address"
    assert not (net.meta_dir / cid).exists()
    return cid, address


def test_podman_on_the_installed_bundle_with_and_without_the_agent(bundle_node):
    net, agent = bundle_node
    subnet = node_subnet(net)
    assert subnet.network.subnet_of(NETWORK), subnet
    gateway = str(subnet.ip)

    # The agent running: the plugins relay to its socket (the fast path).
    cid, address = run_one(net, gateway)
    assert address.network == subnet.network, (address, subnet)
    assert str(address.ip) != gateway
    served = agent.requests(cid)
    assert [c for c in ("ADD", "DEL") if not any(f"command={c}" in s for s in served)] == [], \
        agent.text()

    # The agent stopped: tartan-cni execs tartan-full, and nothing reaches the agent.
    agent.stop()
    before = agent.text()
    cid, address = run_one(net, gateway)
    assert address.network == subnet.network, (address, subnet)
    assert agent.requests(cid) == []
    assert agent.text() == before
