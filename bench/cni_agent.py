"""The installed-bundle implementations and the CNI server (the agent's socket) they talk to.

`tartan-agent` and `tartan-bundle-fallback` call dist/tartan/tartan-cni through symlinks
named as the plugins, in a temporary directory that is their CNI_PATH, as /opt/cni/bin is
after `make install`. `tartan-agent` points TARTAN_CNI_SOCKET at a CNI server this process
starts; `tartan-bundle-fallback` at a path where nothing listens, so every call takes the
fallback (exec of tartan-full). `tartan-meta` is the `tartan` meta plugin, with the agent.

The server must be started after this process entered the node namespace with setns(2):
as its child it then shares the bench's network and mount namespace, the plugins' too, and
the agent serves them (it declines callers in other namespaces).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from cni_run import VENV_BIN, BenchError, Impl

from tartan.cni import registry

REPO = Path(__file__).resolve().parent.parent
BUNDLE_CNI = REPO / "dist" / "tartan" / "tartan-cni"
BUNDLE_IMPLS = ("tartan-agent", "tartan-bundle-fallback", "tartan-meta")
AGENT_IMPLS = ("tartan-agent", "tartan-meta")
SERVER_START_TIMEOUT = 30.0

# What the `tartan` meta plugin reads, as flanneld (or tartand) writes it.
SUBNET_ENV = """\
FLANNEL_NETWORK=10.250.0.0/16
FLANNEL_SUBNET=10.250.9.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true
"""


def bundle_available() -> bool:
    return BUNDLE_CNI.is_file()


def bundle_impls(names: list[str], work: Path) -> dict[str, Impl]:
    """The bundle implementations among `names`, with their symlinks and subnet file in
    `work` (a temporary directory the caller removes)."""
    bin_dir = work / "bin"
    bin_dir.mkdir()
    for name in registry.NAMES:
        (bin_dir / name).symlink_to(BUNDLE_CNI)
    subnet_file = work / "subnet.env"
    subnet_file.write_text(SUBNET_ENV)
    agent = (("TARTAN_CNI_SOCKET", str(socket_path(work))),)
    nobody = (("TARTAN_CNI_SOCKET", str(work / "no-agent.sock")),)
    known = {
        "tartan-agent": Impl("tartan-agent", bin_dir / "tartan-bridge", "tartan-ipam",
                             (bin_dir,), "tagent0", "10.250.2.0/24", agent),
        "tartan-bundle-fallback": Impl("tartan-bundle-fallback", bin_dir / "tartan-bridge",
                                       "tartan-ipam", (bin_dir,), "tfback0", "10.250.3.0/24",
                                       nobody),
        # Bridge cni0 and the subnet come from the subnet file; FLANNEL_IPMASQ=true means the
        # delegate runs without ipMasq, so it is measured in that mode only.
        "tartan-meta": Impl("tartan-meta", bin_dir / "tartan", "tartan-ipam", (bin_dir,),
                            "cni0", "10.250.9.0/24", agent, modes=("nomasq",),
                            subnet_file=str(subnet_file)),
    }
    return {n: known[n] for n in names if n in known}


def socket_path(work: Path) -> Path:
    return work / "cni.sock"


def needs_agent(impls: list[Impl]) -> bool:
    return any(i.name in AGENT_IMPLS for i in impls)


class CniServer:
    """`python -m tartan.cni.server --socket PATH` as a child of this process."""

    def __init__(self, work: Path) -> None:
        self.path = socket_path(work)
        self.log_path = work / "cni-server.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> CniServer:
        return self._start([str(VENV_BIN / "python"), "-m", "tartan.cni.server", "--socket",
                            str(self.path)], "the CNI server")

    def _start(self, argv: list[str], what: str) -> CniServer:
        """`argv` started, and waited for until its socket is there."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not self.path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise BenchError(f"{what} did not start: {self.log_tail()}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("the CNI server is not running")
        return self.proc.pid

    def alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"the CNI server exited: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return lines[-1][:300] if lines else "no output"

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the server process, in KiB."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields["VmRSS"], fields["VmHWM"]


class Tartand(CniServer):
    """The bundle's full tartand (what `make install` runs, as `tartand`) serving the CNI
    socket, with its normal background work: its store (SQLite, here in `work`), the
    reconcile loop and kernel monitor, NetworkPolicy, metrics. Its uplink is a veth in the
    bench's node namespace with an address of its own, nowhere routed."""

    def __enter__(self) -> CniServer:
        from cni_run import ip

        work = self.path.parent
        ip("link", "add", "tartan-up0", "type", "veth", "peer", "name", "tartan-up1")
        ip("addr", "add", "198.18.250.1/24", "dev", "tartan-up0")
        for dev in ("tartan-up0", "tartan-up1"):
            ip("link", "set", dev, "up")
        (work / "net-conf.json").write_text('{"Network": "10.251.0.0/16"}')
        binary = work / "agent-bin" / "tartand"
        binary.parent.mkdir(exist_ok=True)
        binary.symlink_to(BUNDLE_CNI.parent / "tartan-full")
        argv = [str(binary), "--store", f"sqlite:{work / 'leases.db'}", "--net-config",
                str(work / "net-conf.json"), "--iface", "tartan-up0", "--subnet-file",
                str(work / "tartand-subnet.env"), "--cni-socket", str(self.path),
                "--cni-journal", str(work / "journal"), "--http-addr", "127.0.0.1:9818",
                "--node-name", "bench", "--ip-masq"]
        return self._start(argv, "tartand")


def missing_bundle_message() -> str:
    return (f"{BUNDLE_CNI} is missing: run make bundle; skipping "
            f"{', '.join(BUNDLE_IMPLS)}")


def warn(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr)
