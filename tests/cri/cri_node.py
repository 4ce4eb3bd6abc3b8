"""A Kubernetes node as the CRI sees it, inside a network namespace of its own: containerd
with its CRI plugin (containerd_env.py), the CNI plugins as installed, Tartan's conflist and
the reference one, and, when `agent` is set, the bundle's real tartand on a socket of the
node's own. Used by the `cri_node` fixtures (conftest.py) and by bench/cri.py.

- The node is a network namespace `tcri<hex>` with an uplink (a veth pair, `tcri0` holding
  198.18.79.2/24): containerd and tartand are started in it with `nsenter --net` only, so
  the bridges, veths, VXLAN device and iptables rules land in the node and go with it, and
  the agent sees its callers (the plugins containerd execs) in its own namespaces.
- The CNI bin dir is `<destdir>/opt/cni/bin` after `packaging/install.py install --destdir`
  (`install_plugins`; the tests' two nodes share one): Tartan's names linked to the bundle
  as `make install` links them, beside copies of the reference `loopback` (containerd's CRI
  runs it for every pod's `lo`, before the network's plugins, whatever the conflist says),
  `portmap`, `bridge` and `host-local`.
- Two CRI runtime handlers, both runc: the default one (`runc`) uses Tartan's conflist, in
  kube-flannel's shape (the `tartan` meta plugin, then the port mapping plugin,
  `PORTMAP_TYPE`); `reference` uses `bridge` + `host-local` + `portmap` (ipMasq on the
  bridge only when no agent masquerades, as Tartan's bridge gets it).
- With the agent, tartand leases the node's subnet from 10.253.0.0/16 and writes the subnet
  file; without it, the test writes the subnet file (10.253.40.0/24) and every plugin call
  runs in-process. Either way the plugins get the node's socket path (TARTAN_CNI_SOCKET)
  and journal folder (TARTAN_CNI_JOURNAL) from containerd's environment, which libcni
  hands them, so nothing reads or writes /run/tartan.

cri_teardown.py takes a node away again and proves it is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import containerd_env
import pause_image
from containerd_env import CNI_RESULTS, DEFAULT_HANDLER, SHIM_SOCKETS, Containerd, Pod

from harness import REFERENCE_CNI, eventually, make_netns

TESTS = Path(__file__).resolve().parents[1]


def sibling(name: str, folder: str) -> ModuleType:
    """A helper module of another test folder (tests/<folder>/<name>.py), imported once."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTS / folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


podman_env = sibling("podman_env", "runtime")  # host snapshots, cgroups, mounts
bundle_kit = sibling("bundle_kit", "packaging")  # make bundle, install.py, the staged tree

PAUSE_IMAGE = "localhost/tartan/pause:cri"
BUSYBOX_MISSING = [] if pause_image.BUSYBOX else ["busybox-static"]
# The hostPort plugin chained after `tartan` (capabilities.portMappings). containerd 1.6
# sends each mapping with Go's field names (HostPort, ContainerPort, Protocol, HostIP), which
# tartan-portmap reads in any case, as the reference's Go JSON decoder does.
PORTMAP_TYPE = "tartan-portmap"
REFERENCE_PLUGINS = ("loopback", "portmap", "bridge", "host-local")
REFERENCE_HANDLER = "reference"
# Taken around `make bundle` and the install that copies the bundle when it exists (whoever
# rebuilds the bundle by hand takes it with `flock`), so that a test never copies a bundle
# another build is rewriting; the test does not create it.
BUNDLE_LOCK = Path("/tmp/tartan-bundle.lock")
CLUSTER = ipaddress.ip_network("10.253.0.0/16")
FALLBACK_SUBNET = ipaddress.ip_interface("10.253.40.1/24")
REFERENCE_SUBNET = ipaddress.ip_interface("10.254.40.1/24")
UPLINK = ("tcri0", "198.18.79.2/24")
NETWORKS = {DEFAULT_HANDLER: "tartan", REFERENCE_HANDLER: "reference"}  # handler -> name
BRIDGES = {DEFAULT_HANDLER: "cni0", REFERENCE_HANDLER: "cnirf0"}
VXLAN = "tartan.1"  # tartand's device for VNI 1
# Folders outside the node that containerd and libcni create when missing, deepest first.
OUTSIDE = (SHIM_SOCKETS, SHIM_SOCKETS.parent, CNI_RESULTS, CNI_RESULTS.parent)
# Per-pod chains are named by a hash of (network, container): masquerade's CNI-<hex> and
# TARTAN-<hex>, portmap's CNI-DN-<hex>; shared chains have words.
CHAINS_PER_POD = re.compile(r"^(?:CNI|TARTAN)-(?:DN-)?[0-9a-f]{16,}$")
NETNS_NAME = re.compile(r"^cni-[0-9a-f-]{36}$")


def run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _is_address(name: str) -> bool:
    """host-local's reservation files are named by the address (beside lock,
    last_reserved_ip.N and Tartan's .tartan-boot)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def tartan_conflist(subnet_file: Path, meta_dir: Path, ipam_dir: Path) -> dict:
    """The conflist `make install` writes (packaging/10-tartan.conflist: kube-flannel's
    cni-conf.json with Tartan's meta plugin chained with tartan-portmap), with the test's
    own paths."""
    conflist = json.loads((bundle_kit.PACKAGING / "10-tartan.conflist").read_text())
    conflist["name"] = NETWORKS[DEFAULT_HANDLER]
    meta = conflist["plugins"][0]
    assert meta["type"] == "tartan" and conflist["plugins"][1]["type"] == PORTMAP_TYPE
    meta.update(subnetFile=str(subnet_file), dataDir=str(meta_dir))
    meta["delegate"]["ipam"] = {"dataDir": str(ipam_dir)}
    return conflist


def reference_conflist(ipam_dir: Path, ip_masq: bool) -> dict:
    """`ip_masq` as Tartan's bridge gets it: off when tartand masquerades for the node
    (flannel's --ip-masq), on when nobody else does."""
    return {
        "cniVersion": "1.0.0",
        "name": NETWORKS[REFERENCE_HANDLER],
        "plugins": [
            {"type": "bridge", "bridge": BRIDGES[REFERENCE_HANDLER], "isGateway": True,
             "isDefaultGateway": True, "hairpinMode": True, "ipMasq": ip_masq,
             "ipam": {"type": "host-local", "subnet": str(REFERENCE_SUBNET.network),
                      "dataDir": str(ipam_dir)}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


@contextlib.contextmanager
def bundle_lock() -> Iterator[None]:
    if not BUNDLE_LOCK.exists():
        yield
        return
    with open(BUNDLE_LOCK) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def install_plugins(destdir: Path) -> Path:
    """`make bundle`, `install.py install --destdir`, and the reference plugins copied
    beside Tartan's names in <destdir>/opt/cni/bin, as an operator's node has them."""
    with bundle_lock():
        made = bundle_kit.make("bundle")
        assert made.returncode == 0, f"make bundle failed:\n{made.stdout[-3000:]}"
        proc = bundle_kit.install_py("install", destdir, bundle_kit.REPO / "dist" / "tartan")
    assert proc.returncode == 0, f"install.py install failed:\n{proc.stderr}"
    staged = bundle_kit.Staged(destdir)
    for name in REFERENCE_PLUGINS:
        shutil.copy2(REFERENCE_CNI / name, staged.cni_bin / name)
    return destdir


def uninstall_plugins(destdir: Path) -> None:
    bundle_kit.install_py("uninstall", destdir)
    shutil.rmtree(destdir, ignore_errors=True)


@dataclass
class CriNode:
    """`staged`: a tree `install_plugins` made, shared by nodes; None: the node makes (and
    removes) its own under `home`."""

    home: Path
    agent: bool
    staged: Path | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    containerd: Containerd | None = None
    tartand: subprocess.Popen | None = None
    pods: dict[str, Pod] = field(default_factory=dict)  # every sandbox run, by id
    installed: bool = False
    links_before: set[str] = field(default_factory=set)  # the host's links before the node
    existed: dict[Path, bool] = field(default_factory=dict)  # OUTSIDE's folders before

    @property
    def name(self) -> str:
        return f"tcri{self.token}"

    @property
    def netns(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def cgroup_parent(self) -> str:
        return f"/tartan-cri-{self.token}"

    @property
    def bin_dir(self) -> Path:
        assert self.staged is not None
        return bundle_kit.Staged(self.staged).cni_bin

    @property
    def socket(self) -> Path:
        return self.home / "cni.sock"

    @property
    def journal(self) -> Path:
        return self.home / "cni-journal"

    @property
    def subnet_file(self) -> Path:
        return self.home / "subnet.env"

    @property
    def agent_log(self) -> Path:
        return self.home / "tartand.log"

    @property
    def node_ip(self) -> str:
        return UPLINK[1].split("/")[0]

    def ipam_dir(self, handler: str) -> Path:
        return self.home / f"ipam-{NETWORKS[handler]}"

    def conf_dir(self, handler: str) -> Path:
        return self.home / f"net.d-{NETWORKS[handler]}"

    # ---- bring-up

    def up(self) -> None:
        """Everything, in order; the caller runs `cleanup` whatever happens here."""
        self.links_before = set(podman_env.link_names())
        self.existed = {path: os.path.lexists(path) for path in OUTSIDE}
        self.home.mkdir(parents=True, exist_ok=True)
        self._make_node()
        self._install()
        self._write_networks()
        if self.agent:
            self._start_agent()
        else:
            self.subnet_file.write_text(
                f"FLANNEL_NETWORK={CLUSTER}\nFLANNEL_SUBNET={FALLBACK_SUBNET}\n"
                "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
        archive = self.home / "pause.tar"
        pause_image.write_archive(archive, PAUSE_IMAGE)
        self.containerd = Containerd(
            home=self.home / "containerd", netns=self.netns, bin_dir=self.bin_dir,
            handlers={h: self.conf_dir(h) for h in NETWORKS}, sandbox_image=PAUSE_IMAGE,
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "TARTAN_CNI_SOCKET": str(self.socket),
                 "TARTAN_CNI_JOURNAL": str(self.journal)})
        self.containerd.home.mkdir()
        self.containerd.start()
        self.containerd.import_image(archive)

    def _make_node(self) -> None:
        node = make_netns(self.name)
        link, address = UPLINK
        node.run("ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p")
        node.run("ip", "addr", "add", address, "dev", link)
        for name in (link, f"{link}p"):
            node.run("ip", "link", "set", name, "up")

    def _install(self) -> None:
        if self.staged is None:
            self.staged = install_plugins(self.home / "destdir")
            self.installed = True

    def _write_networks(self) -> None:
        conflists = {DEFAULT_HANDLER: tartan_conflist(self.subnet_file, self.home / "meta",
                                                      self.ipam_dir(DEFAULT_HANDLER)),
                     REFERENCE_HANDLER: reference_conflist(self.ipam_dir(REFERENCE_HANDLER),
                                                           ip_masq=not self.agent)}
        for handler, conflist in conflists.items():
            self.conf_dir(handler).mkdir()
            self.ipam_dir(handler).mkdir()
            (self.conf_dir(handler) / f"10-{conflist['name']}.conflist").write_text(
                json.dumps(conflist, indent=2))

    def _start_agent(self) -> None:
        conf = self.home / "net-conf.json"
        conf.write_text(json.dumps({"Network": str(CLUSTER), "Backend": {"Type": "vxlan"}}))
        assert self.staged is not None
        tartand = bundle_kit.Staged(self.staged).command("tartand")
        argv = ["nsenter", f"--net={self.netns}", str(tartand),
                "--store", f"sqlite:{self.home / 'leases.db'}", "--net-config", str(conf),
                "--iface", UPLINK[0], "--subnet-file", str(self.subnet_file),
                "--cni-socket", str(self.socket), "--cni-journal", str(self.journal),
                "--node-name", self.name, "--http-addr", "127.0.0.1:9808", "--ip-masq"]
        with open(self.agent_log, "wb") as log:
            self.tartand = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=log)
        eventually(lambda: self.socket.exists() and self.subnet_file.exists()
                   and "agent.started" in self.agent_text(), 30, process=self.tartand,
                   what=lambda: f"tartand started:\n{self.agent_text()}")

    # ---- pods

    def run_sandbox(self, name: str, *, handler: str = DEFAULT_HANDLER,
                    ports: tuple[tuple[str, int, int], ...] = (),
                    namespace: str = "default", host_network: bool = False) -> str:
        """RunPodSandbox as kubelet sends it; the sandbox's id (kept for cleanup)."""
        assert self.containerd is not None
        config = containerd_env.sandbox_config(name, namespace, ports=ports,
                                               cgroup_parent=self.cgroup_parent,
                                               log_root=self.home / "pod-logs",
                                               host_network=host_network)
        reply = self.containerd.client().call("RunPodSandbox",
                                              {"config": config, "runtime_handler": handler})
        sandbox_id = reply["pod_sandbox_id"]
        self.pods[sandbox_id] = Pod(sandbox_id, name, namespace, "", "", handler)
        return sandbox_id

    def pod(self, sandbox_id: str) -> Pod:
        """The sandbox's address and netns, from its status."""
        assert self.containerd is not None
        handler = self.pods[sandbox_id].handler
        pod = containerd_env.pod_of(self.containerd.client(), sandbox_id, handler)
        self.pods[sandbox_id] = pod
        return pod

    def run_pod(self, name: str, **options) -> Pod:
        return self.pod(self.run_sandbox(name, **options))

    def remove_pod(self, pod: Pod) -> None:
        assert self.containerd is not None
        containerd_env.remove_pod(self.containerd.client(), pod.id)

    def sandbox_ids(self) -> list[str]:
        assert self.containerd is not None
        return [item["id"] for item in
                self.containerd.client().call("ListPodSandbox").get("items", [])]

    # ---- what the node holds

    def gateway(self, handler: str = DEFAULT_HANDLER) -> ipaddress.IPv4Interface:
        if handler == REFERENCE_HANDLER:
            return REFERENCE_SUBNET
        match = re.search(r"^FLANNEL_SUBNET=(\S+)$", self.subnet_file.read_text(), re.M)
        assert match, self.subnet_file.read_text()
        return ipaddress.ip_interface(match.group(1))

    def in_node(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return run(["nsenter", f"--net={self.netns}", *argv], timeout)

    def in_pod(self, pod: Pod, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return run(["nsenter", f"--net={pod.netns}", *argv], timeout)

    def reservations(self, handler: str = DEFAULT_HANDLER) -> list[str]:
        folder = self.ipam_dir(handler) / NETWORKS[handler]
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if _is_address(p.name))

    def bridge_ports(self, handler: str = DEFAULT_HANDLER) -> list[str]:
        proc = self.in_node("ip", "-j", "link", "show", "master", BRIDGES[handler])
        if proc.returncode != 0 or not proc.stdout.strip():
            return []
        return [link["ifname"] for link in json.loads(proc.stdout)]

    def iptables(self) -> list[str]:
        """The node's nat and filter tables (iptables-save lines)."""
        lines = []
        for table in ("nat", "filter"):
            lines += self.in_node("iptables-save", "-t", table).stdout.splitlines()
        return lines

    def pod_chains(self) -> list[str]:
        """Chains that belong to one pod (portmap's CNI-DN-*, masquerade's CNI-*/TARTAN-*);
        the shared hostPort chains are not per pod."""
        return sorted(line[1:].split()[0] for line in self.iptables()
                      if line.startswith(":") and CHAINS_PER_POD.match(line[1:]))

    def agent_text(self) -> str:
        return self.agent_log.read_text(errors="replace") if self.agent_log.exists() else ""

    def agent_requests(self, sandbox_id: str) -> list[str]:
        return [line for line in self.agent_text().splitlines()
                if "event=cni.request" in line and sandbox_id in line]

    def journal_entries(self, sandbox_id: str) -> list[dict]:
        if not self.journal.is_dir():
            return []
        entries = [json.loads(p.read_text()) for p in sorted(self.journal.glob("*.json"))]
        return [e for e in entries if e.get("env", {}).get("CNI_CONTAINERID") == sandbox_id]

    def left_of(self, pod: Pod) -> list[str]:
        """What of `pod` is still on the node after Stop + Remove (must be nothing)."""
        left = []
        if os.path.lexists(pod.netns):
            left.append(f"netns {pod.netns}")
        if pod.ip in self.reservations(pod.handler):
            left.append(f"reservation of {pod.ip}")
        rules = [r for r in self.iptables()
                 if pod.id in r or f"{pod.ip}/32" in r or f"{pod.ip}:" in r]
        left += [f"rule {r}" for r in rules]
        left += [f"cache {p}" for p in CNI_RESULTS.glob(f"*-{pod.id}-*")]
        if (self.home / "meta" / pod.id).exists():
            left.append(f"meta plugin state {pod.id}")
        assert self.containerd is not None
        if self.containerd.shim_socket(pod.id).exists():
            left.append(f"shim socket of {pod.id}")
        left += [f"mount {m}" for m in podman_env.mounts_under(self.containerd.home)
                 if pod.id in m]
        return left
