"""`vagrant up` of the users' Vagrantfile (vagrant/Vagrantfile, used as is) on this machine,
with vagrant-libvirt and the box built here (box.py).

libvirtd is started for the run inside a network namespace of its own (tartan-vagrant), and
Vagrant runs there too: every VM, bridge, dnsmasq and firewall rule libvirt makes lives in that
namespace, nothing reaches the host's network, and removing the namespace removes it all. What
libvirt keeps on disk (domains, networks, the box's volume, the storage pool it defined, logs)
is removed by `destroy`, which also runs first, for what a killed run left.

This machine's own settings come from Vagrant's home Vagrantfile, where Vagrant reads a
machine's defaults: qemu's emulation with a qemu64 CPU (KVM here cannot run a stock kernel), a
management network that is isolated (no NAT), no display.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from vmlab import box as boxes
from vmlab.image import CACHE
from vmlab.machines import VmError, alive, terminate

NETNS = "tartan-vagrant"
STATE = Path("/run/tartan-vagrant")
HOME = CACHE / "vagrant-home"  # the box stays added between runs
PREFIX = "tartan-"  # of libvirt's names for the run's domains
LIBVIRT_SOCKET = Path("/run/libvirt/libvirt-sock")
DAEMONS = (("virtlogd", Path("/run/virtlogd.pid")), ("libvirtd", Path("/run/libvirtd.pid")))
HOME_VAGRANTFILE = f"""# This machine's vagrant-libvirt defaults (by vagrant/vmlab/vagrant.py)
Vagrant.configure("2") do |config|
  config.vm.provider "libvirt" do |libvirt|
    libvirt.driver = "qemu"
    libvirt.cpu_mode = "custom"
    libvirt.cpu_model = "qemu64"
    libvirt.management_network_mode = "none"
    libvirt.graphics_type = "none"
    libvirt.video_type = "none"
    libvirt.default_prefix = "{PREFIX}"
  end
end
"""


def _run(argv: list[str], timeout: float = 120, check: bool = True,
         env: dict[str, str] | None = None) -> str:
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                             check=False)
    except subprocess.TimeoutExpired:
        raise VmError(f"`{' '.join(argv[:6])}` did not finish in {timeout:g} s") from None
    if check and run.returncode != 0:
        tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-12:])
        raise VmError(f"`{' '.join(argv[:6])}` exited {run.returncode}: {tail}")
    return run.stdout


def _in_netns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *argv]


class Cluster:
    """The nodes of one `vagrant up` (cluster.Nodes), reached by `vagrant ssh-config`."""

    def __init__(self, repo: Path, nodes: int = 2, backend: str = "vxlan") -> None:
        self.repo = repo
        self.count = nodes
        self.backend = backend
        self.env = {**os.environ, "VAGRANT_HOME": str(HOME), "VAGRANT_CWD": str(repo / "vagrant"),
                    "VAGRANT_DOTFILE_PATH": str(STATE / "dotfile"),
                    "VAGRANT_DEFAULT_PROVIDER": "libvirt", "VAGRANT_CHECKPOINT_DISABLE": "1",
                    "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1", "TARTAN_NODES": str(nodes),
                    "TARTAN_BACKEND": backend}

    @property
    def nodes(self) -> list[str]:
        return [f"node{i}" for i in range(1, self.count + 1)]

    def vagrant(self, *args: str, timeout: float = 900, check: bool = True) -> str:
        return _run(_in_netns("vagrant", *args, "--no-color"), timeout, check, self.env)

    def run(self, node: str, command: str, timeout: float = 300) -> str:
        argv = _in_netns("ssh", "-F", str(STATE / "ssh_config"), "-o", "BatchMode=yes", node,
                         "sudo bash -c " + shlex.quote(command))
        try:
            return _run(argv, timeout)
        except VmError as exc:
            raise VmError(f"{node}: {exc}") from None

    def up(self, box: boxes.Box, say: Callable[[str], None] = print) -> float:
        """libvirtd started, the box added, `vagrant up`; seconds `vagrant up` took."""
        self.env["TARTAN_BOX"] = box.name
        destroy(self, say=lambda _line: None)  # what a killed run left
        STATE.mkdir(parents=True, exist_ok=True)
        HOME.mkdir(parents=True, exist_ok=True)
        (HOME / "Vagrantfile").write_text(HOME_VAGRANTFILE)
        _start_libvirt()
        if not _virsh("pool-list", "--all", "--name").split().count("default"):
            (STATE / "pool-defined").touch()  # vagrant-libvirt defines it; destroy undefines
        listed = self.vagrant("box", "list")
        if not re.search(rf"^{re.escape(box.name)} ", listed, re.M):
            for old in re.findall(rf"^({re.escape(boxes.NAME)}\S*) ", listed, re.M):
                self.vagrant("box", "remove", "--all", "--force", old, check=False)
            say(f"vagrant box add {box.name} ({box.path})")
            self.vagrant("box", "add", "--name", box.name, str(box.path), timeout=600)
        say(f"vagrant up: {self.count} nodes, {self.backend}")
        started = time.monotonic()
        self.vagrant("up", "--provider", "libvirt", timeout=1800)
        took = time.monotonic() - started
        (STATE / "ssh_config").write_text(self.vagrant("ssh-config"))
        return took


def _start_libvirt() -> None:
    for name, pidfile in DAEMONS:
        if _pid(pidfile):
            raise VmError(f"{name} already runs on this machine: `make test-vagrant` starts its "
                          "own, in a namespace; stop it first")
    if not Path(f"/run/netns/{NETNS}").exists():
        _run(["ip", "netns", "add", NETNS])
    _run(["ip", "-n", NETNS, "link", "set", "lo", "up"])
    for name, _pidfile in DAEMONS:
        _run(_in_netns(name, "--daemon"))
    deadline = time.monotonic() + 30
    while not LIBVIRT_SOCKET.exists():
        if time.monotonic() > deadline:
            raise VmError(f"libvirtd did not open {LIBVIRT_SOCKET} in 30 s")
        time.sleep(0.2)


def _pid(pidfile: Path) -> int:
    """The live process `pidfile` names, or 0."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return 0
    return pid if alive(pid) else 0


def _virsh(*args: str, check: bool = False) -> str:
    return _run(["virsh", "--quiet", "--connect", "qemu:///system", *args], 60, check)


def destroy(cluster: Cluster, say: Callable[[str], None] = print) -> list[str]:
    """`vagrant destroy`, then whatever of the run libvirt still holds, libvirtd stopped and
    the namespace gone; what was removed."""
    removed: list[str] = []
    defined = list(Path("/etc/libvirt/qemu").glob(f"{PREFIX}*.xml"))
    if not _pid(DAEMONS[1][1]) and (defined or STATE.exists()):
        _start_libvirt()  # a killed run left definitions that only libvirtd removes cleanly
    if _ours(_pid(DAEMONS[1][1])):
        if (STATE / "dotfile").exists():
            cluster.vagrant("destroy", "--force", timeout=600, check=False)
            removed.append("vagrant destroy")
        removed += _undefine_leftovers()
        for name, pidfile in reversed(DAEMONS):
            pid = _pid(pidfile)
            if _ours(pid):
                terminate(pid, 20)
                removed.append(f"{name} (pid {pid})")
        shutil.rmtree("/run/libvirt", ignore_errors=True)  # the stopped daemons' runtime state
    if Path(f"/run/netns/{NETNS}").exists():
        for left in _run(["ip", "netns", "pids", NETNS], check=False).split():
            os.kill(int(left), signal.SIGKILL)  # a qemu or dnsmasq libvirtd did not stop
            removed.append(f"process {left}")
        _run(["ip", "netns", "del", NETNS], check=False)
        removed.append(f"namespace {NETNS}")
    for log in Path("/var/log/libvirt/qemu").glob(f"{PREFIX}*"):
        log.unlink()
    if STATE.exists():
        shutil.rmtree(STATE, ignore_errors=True)
    for line in removed:
        say(f"  removed {line}")
    return removed


def _undefine_leftovers() -> list[str]:
    """Domains, networks, volumes and the storage pool of the run that `vagrant destroy` did
    not remove (it was killed, or the run never got that far)."""
    removed = []
    for domain in _virsh("list", "--all", "--name").split():
        if domain.startswith(PREFIX):
            _virsh("destroy", domain)
            _virsh("undefine", domain, "--nvram")
            removed.append(f"domain {domain}")
    for network in _virsh("net-list", "--all", "--name").split():
        if network != "default":
            _virsh("net-destroy", network)
            _virsh("net-undefine", network)
            removed.append(f"network {network}")
    for volume in _virsh("vol-list", "default").splitlines():
        name = volume.split()[0] if volume.split() else ""
        if name.startswith(("tartan-VAGRANTSLASH-", PREFIX)):
            _virsh("vol-delete", "--pool", "default", name)
            removed.append(f"volume {name}")
    if (STATE / "pool-defined").exists():
        _virsh("pool-destroy", "default")
        _virsh("pool-undefine", "default")
        removed.append("storage pool default")
    return removed


def _ours(pid: int) -> bool:
    """Whether the process runs in the run's namespace (a libvirtd of the host's is not
    touched)."""
    try:
        return pid > 0 and (os.stat(f"/proc/{pid}/ns/net").st_ino
                            == os.stat(f"/run/netns/{NETNS}").st_ino)
    except OSError:
        return False


def leftovers() -> list[str]:
    """What of libvirt would still be on this machine after `destroy`: none of it may be."""
    found = []
    rules = _run(["iptables-save"], check=False) + _run(["ip6tables-save"], check=False)
    if "LIBVIRT_" in rules:
        found.append("LIBVIRT_* iptables chains in the host's namespace")
    tables = _run(["nft", "list", "tables"], check=False) if shutil.which("nft") else ""
    if re.search(r"libvirt", tables):
        found.append("libvirt's nftables tables in the host's namespace")
    if any(_pid(pidfile) for _name, pidfile in DAEMONS):
        found.append("libvirtd or virtlogd still running")
    if Path(f"/run/netns/{NETNS}").exists():
        found.append(f"namespace {NETNS}")
    if Path("/run/libvirt").exists():
        found.append("/run/libvirt")
    if list(Path("/etc/libvirt/qemu").glob(f"{PREFIX}*.xml")):
        found.append("a domain of the run defined in /etc/libvirt/qemu")
    if _run(["pgrep", "-f", f"guest={PREFIX}"], check=False).strip():
        found.append("a qemu of the run")
    return found
