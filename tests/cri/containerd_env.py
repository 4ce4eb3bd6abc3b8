"""containerd 1.6 with its CRI plugin, configured only by files under one folder of its own,
and the pod sandboxes a kubelet would ask it for.

`Containerd` writes config.toml (version 2) with its root, state, temp, gRPC and ttrpc
sockets, the opt plugin's folder, runc's state root and the CRI plugin's CNI bin and conf
dirs all under `home`; it starts containerd in a network namespace given as a path
(`nsenter --net` for the child only: the mount namespace stays the host's, so the pod netns
bind mounts under /var/run/netns and the overlay mounts are the ones the test can see and
remove), imports the pause image with `ctr`, waits for the CRI's NetworkReady and stops it.

What containerd itself puts outside `home`, and so what a cleanup must look at:

- the pod netns, /var/run/netns/cni-<uuid> (netns_mounts_under_state_dir is left off, as on
  a node); CRI deletes each at StopPodSandbox;
- each shim's socket, /run/containerd/s/<sha256(address/namespace/id)> (a fixed folder in
  1.6), deleted when the shim exits;
- libcni's result cache, /var/lib/cni/results/<network>-<id>-<ifname> (go-cni sets no
  cache dir), deleted at CNI DEL;
- the pods' cgroups under the cgroup parent the test gives each sandbox (cgroupfs).

The snapshotter is overlayfs when an overlay mount works on `home`'s filesystem, else
native. Settings this machine needs: `restrict_oom_score_adj = true`, since root here lacks
CAP_SYS_RESOURCE and runc could not give the sandbox CRI's oom_score_adj of -998;
`disable_apparmor`, since no AppArmor is loaded here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cri_proto import CriClient, CriError

from harness import eventually, stop_process

CONTAINERD = shutil.which("containerd")
CTR = shutil.which("ctr")
SHIM = shutil.which("containerd-shim-runc-v2")
RUNC = shutil.which("runc")
K8S_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin keeps its objects in
SHIM_SOCKETS = Path("/run/containerd/s")
CNI_RESULTS = Path("/var/lib/cni/results")
DEFAULT_HANDLER = "runc"
START_TIMEOUT = 30.0


def missing_tools() -> list[str]:
    return [name for name, path in (("containerd", CONTAINERD), ("ctr", CTR),
                                    ("containerd-shim-runc-v2", SHIM), ("runc", RUNC))
            if not path]


def snapshotter_for(folder: Path) -> str:
    """overlayfs when an overlay mount works on `folder`'s filesystem, else native (copies)."""
    probe = folder / "overlay-probe"
    parts = [probe / p for p in ("lower", "upper", "work", "merged")]
    for part in parts:
        part.mkdir(parents=True, exist_ok=True)
    lower, upper, work, merged = parts
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
                          capture_output=True, check=False)
    if proc.returncode == 0:
        subprocess.run(["umount", str(merged)], capture_output=True, check=False)
    shutil.rmtree(probe, ignore_errors=True)
    return "overlayfs" if proc.returncode == 0 else "native"


def _toml(value: object) -> str:
    return json.dumps(value)  # TOML's basic strings, integers and booleans read as JSON's


@dataclass
class Containerd:
    """One containerd, everything under `home`; `handlers` maps each CRI runtime handler to
    the CNI conf dir its pods use (the first one is the default)."""

    home: Path
    netns: str  # path of the network namespace containerd runs in
    bin_dir: Path
    handlers: dict[str, Path]
    sandbox_image: str
    env: dict[str, str] = field(default_factory=dict)
    snapshotter: str = ""  # "": overlayfs if it works under home, else native
    proc: subprocess.Popen | None = None
    _client: CriClient | None = None

    @property
    def socket(self) -> Path:
        return self.home / "containerd.sock"

    @property
    def root(self) -> Path:
        return self.home / "root"

    @property
    def state(self) -> Path:
        return self.home / "state"

    @property
    def log(self) -> Path:
        return self.home / "containerd.log"

    @property
    def config(self) -> Path:
        return self.home / "config.toml"

    def log_text(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""

    def write_config(self) -> None:
        for path in (self.root, self.state, self.home / "tmp", self.home / "opt"):
            path.mkdir(parents=True, exist_ok=True)
        self.snapshotter = self.snapshotter or snapshotter_for(self.home)
        default = next(iter(self.handlers))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        lines = [
            "version = 2",
            f"root = {_toml(str(self.root))}",
            f"state = {_toml(str(self.state))}",
            f"temp = {_toml(str(self.home / 'tmp'))}",
            "disabled_plugins = [" + ", ".join(_toml(f"io.containerd.snapshotter.v1.{s}")
                                             for s in ("aufs", "btrfs", "devmapper", "zfs"))
            + "]",
            "[grpc]", f"  address = {_toml(str(self.socket))}",
            "[ttrpc]", f"  address = {_toml(str(self.socket) + '.ttrpc')}",
            '[plugins."io.containerd.internal.v1.opt"]',
            f"  path = {_toml(str(self.home / 'opt'))}",
            f"[{cri}]",
            f"  sandbox_image = {_toml(self.sandbox_image)}",
            "  restrict_oom_score_adj = true",
            "  disable_apparmor = true",
            "  stream_server_address = \"127.0.0.1\"",
            "  stream_server_port = \"0\"",
            f"[{cri}.cni]",
            f"  bin_dir = {_toml(str(self.bin_dir))}",
            f"  conf_dir = {_toml(str(self.handlers[default]))}",
            "  max_conf_num = 1",
            f"[{cri}.containerd]",
            f"  snapshotter = {_toml(self.snapshotter)}",
            f"  default_runtime_name = {_toml(default)}",
        ]
        for handler, conf_dir in self.handlers.items():
            table = f"{cri}.containerd.runtimes.{handler}"
            lines += [
                f"[{table}]",
                '  runtime_type = "io.containerd.runc.v2"',
                f"  cni_conf_dir = {_toml(str(conf_dir))}",
                "  cni_max_conf_num = 1",
                f"[{table}.options]",
                f"  BinaryName = {_toml(RUNC)}",
                f"  Root = {_toml(str(self.state / 'runc'))}",
                "  SystemdCgroup = false",
            ]
        self.config.write_text("\n".join(lines) + "\n")

    # ---- the process

    def start(self) -> None:
        self.write_config()
        argv = ["nsenter", f"--net={self.netns}", CONTAINERD or "containerd",
                "--config", str(self.config)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, env=self.env, start_new_session=True)
        eventually(self._serving, START_TIMEOUT, 0.05, process=self.proc,
                   what=lambda: f"containerd serving CRI:\n{self.log_text()}",
                   retry_on=(AssertionError, CriError))

    def _serving(self) -> bool:
        if not self.socket.exists():
            return False
        version = self.client().call("Version", {"version": "v1"}, timeout=2)
        return version.get("runtime_api_version") == "v1"

    def client(self) -> CriClient:
        if self._client is None:
            self._client = CriClient(self.socket)
        return self._client

    def import_image(self, archive: Path) -> None:
        """`ctr images import` into the CRI's namespace, then wait until CRI sees it (it
        learns of the image from containerd's events) and its network is ready."""
        proc = subprocess.run(
            [CTR or "ctr", "--address", str(self.socket), "--namespace", K8S_NAMESPACE,
             "images", "import", "--snapshotter", self.snapshotter, str(archive)],
            capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, f"ctr images import failed:\n{proc.stderr}{proc.stdout}"
        eventually(lambda: self.client().call(
            "ImageStatus", {"image": {"image": self.sandbox_image}}).get("image", {}).get("id"),
            START_TIMEOUT, 0.05, what=f"CRI sees {self.sandbox_image}")
        eventually(self.network_ready, START_TIMEOUT, 0.05,
                   what=lambda: f"CRI NetworkReady:\n{self.log_text()}")

    def network_ready(self) -> bool:
        conditions = self.client().call("Status")["status"]["conditions"]
        return any(c["type"] == "NetworkReady" and c["status"] for c in conditions)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None:
            stop_process(self.proc)

    # ---- what it leaves outside home

    def shim_socket(self, sandbox_id: str) -> Path:
        digest = hashlib.sha256(f"{self.socket}/{K8S_NAMESPACE}/{sandbox_id}".encode())
        return SHIM_SOCKETS / digest.hexdigest()

    def shim_pids(self) -> list[int]:
        """containerd-shim-runc-v2 processes serving this containerd (by its address)."""
        wanted = ["-address", str(self.socket)]
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if argv and argv[0].endswith("containerd-shim-runc-v2") and any(
                    argv[i:i + 2] == wanted for i in range(len(argv) - 1)):
                pids.append(int(entry.name))
        return pids

    def kill_shims(self) -> list[str]:
        problems = []
        for pid in self.shim_pids():
            problems.append(f"containerd-shim {pid} outlived containerd: killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return problems


# --------------------------------------------------------------------------- pods


@dataclass(frozen=True)
class Pod:
    id: str
    name: str
    namespace: str
    ip: str
    netns: str  # the pod's network namespace, as containerd made it
    handler: str


def sandbox_config(name: str, namespace: str, *, cgroup_parent: str,
                   ports: tuple[tuple[str, int, int], ...] = (), log_root: Path | None = None,
                   host_network: bool = False) -> dict:
    """A PodSandboxConfig as kubelet sends one: metadata, labels kubelet adds, DNS, the
    hostPorts (protocol, containerPort, hostPort), and the Linux namespaces of a pod (network
    and IPC of the pod, a PID namespace per container; `host_network`: the node's network,
    so no CNI at all)."""
    uid = str(uuid.uuid4())
    config = {
        "metadata": {"name": name, "uid": uid, "namespace": namespace, "attempt": 0},
        "hostname": "" if host_network else name,  # the node's, as kubelet leaves it
        "dns_config": {"servers": ["10.96.0.10"], "options": ["ndots:5"],
                       "searches": [f"{namespace}.svc.cluster.local", "svc.cluster.local"]},
        "port_mappings": [{"protocol": protocol, "container_port": container,
                           "host_port": host} for protocol, container, host in ports],
        "labels": {"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                   "io.kubernetes.pod.uid": uid},
        "annotations": {"kubernetes.io/config.source": "api"},
        "linux": {"cgroup_parent": cgroup_parent, "security_context": {
            "namespace_options": {"network": "NODE" if host_network else "POD",
                                  "pid": "CONTAINER", "ipc": "POD"}}},
    }
    if log_root is not None:
        config["log_directory"] = str(log_root / f"{namespace}_{name}_{uid}")
    return config


def sandbox_netns(status: dict) -> str:
    """The network namespace path from a verbose PodSandboxStatus (its runtime spec); ""
    for a pod on the node's network."""
    info = json.loads(status["info"]["info"])
    paths = [n.get("path", "") for n in info["runtimeSpec"]["linux"]["namespaces"]
             if n["type"] == "network"]
    return paths[0] if paths else ""


def pod_of(client: CriClient, sandbox_id: str, handler: str) -> Pod:
    status = client.call("PodSandboxStatus", {"pod_sandbox_id": sandbox_id, "verbose": True})
    meta = status["status"]["metadata"]
    return Pod(sandbox_id, meta["name"], meta["namespace"], status["status"]["network"]["ip"],
               sandbox_netns(status), handler)


def remove_pod(client: CriClient, sandbox_id: str) -> None:
    """As kubelet removes a pod: StopPodSandbox, then RemovePodSandbox."""
    client.call("StopPodSandbox", {"pod_sandbox_id": sandbox_id})
    client.call("RemovePodSandbox", {"pod_sandbox_id": sandbox_id})
