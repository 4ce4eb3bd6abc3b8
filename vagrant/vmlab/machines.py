"""The VM lab's machines: qemu VMs booting the image's Debian kernel, on a private network.

The network lives in a network namespace of its own (`tartan-vm-<lab>`): a bridge and one tap
per VM, and an address on the bridge from which the lab reaches the VMs by ssh. Nothing of it
is in the host's namespace, nothing is routed out, and removing the namespace removes it all.
qemu runs inside that namespace, so its taps are there too. Each VM boots the image's kernel
and initrd directly, from its own qcow2 overlay of the image's disk, under KVM where a probe
shows it can run a stock guest, else under software emulation (TCG); TARTAN_VM_ACCEL=kvm|tcg
chooses.

A VM is stopped by its PID, and qemu runs under `timeout -s KILL` (TARTAN_VM_LIFETIME, an
hour), so no VM outlives a lab whose owner crashed; `down` removes the overlays, the logs and
the namespace, also after a failure.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vmlab.image import Image

STATE_ROOT = Path("/run/tartan-vm")
SUBNET = "192.168.56"  # the underlay; only ever inside the lab's namespace
GATEWAY = f"{SUBNET}.1"
MEMORY_MB = 1024
# qemu runs under `timeout -s KILL`: a VM outlives no lab that crashed or was killed
LIFETIME = int(os.environ.get("TARTAN_VM_LIFETIME", "3600"))
SSH_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
               "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6")


class VmError(Exception):
    """A VM that cannot be made, reached or stopped (the message says which and why)."""


@dataclass
class Vm:
    name: str
    index: int
    ip: str
    pid: int = 0
    booted_at: float = 0.0  # time.time() of the last (re)start
    answered_after: float = 0.0  # seconds from that start until ssh answered

    @property
    def mac(self) -> str:
        return f"52:54:00:56:00:{self.index:02x}"

    @property
    def tap(self) -> str:
        return f"tap{self.index}"


@dataclass
class Lab:
    name: str
    image: dict[str, str] = field(default_factory=dict)  # Image's fields, as text
    vms: list[Vm] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return STATE_ROOT / self.name

    @property
    def netns(self) -> str:
        return f"tartan-vm-{self.name}"

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "state.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, name: str) -> Lab:
        try:
            doc = json.loads((STATE_ROOT / name / "state.json").read_text())
        except (OSError, ValueError):
            raise VmError(f"no VM lab {name} (tartanctl's VM lab state is in {STATE_ROOT})") \
                from None
        return cls(doc["name"], doc["image"], [Vm(**vm) for vm in doc["vms"]])

    def vm(self, name: str) -> Vm:
        found = next((vm for vm in self.vms if vm.name == name), None)
        if found is None:
            raise VmError(f"VM lab {self.name} has no {name}")
        return found

    # what vmlab.cluster needs of the machines a cluster runs on (cluster.Nodes)
    @property
    def nodes(self) -> list[str]:
        return [vm.name for vm in self.vms]

    def run(self, node: str, command: str, timeout: float = 300) -> str:
        return ssh(self, self.vm(node), command, timeout=timeout).stdout


def _ip(*argv: str, netns: str | None = None) -> None:
    full = ["ip", *(["-n", netns] if netns else []), *argv]
    run = subprocess.run(full, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise VmError(f"{' '.join(full)}: {run.stderr.strip()}")


@functools.cache
def accel() -> str:
    """The accelerator: TARTAN_VM_ACCEL (kvm or tcg), else KVM where a probe shows it works,
    else TCG (software emulation). The probe is a paused KVM VM: where KVM cannot run a
    stock guest it dies at once (on this kind of host: "failed to set MSR 0x10a")."""
    chosen = os.environ.get("TARTAN_VM_ACCEL", "")
    if chosen:
        return chosen
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    probe = subprocess.Popen(["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "64",
                              "-nodefaults", "-display", "none", "-monitor", "none", "-S"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe.wait(timeout=2)
        return "tcg"
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.wait()
        return "kvm"


def make_network(lab: Lab) -> None:
    _ip("netns", "add", lab.netns)
    _ip("link", "set", "lo", "up", netns=lab.netns)
    _ip("link", "add", "vmbr0", "type", "bridge", netns=lab.netns)
    _ip("addr", "add", f"{GATEWAY}/24", "dev", "vmbr0", netns=lab.netns)
    _ip("link", "set", "vmbr0", "up", netns=lab.netns)
    for vm in lab.vms:
        _ip("tuntap", "add", vm.tap, "mode", "tap", netns=lab.netns)
        _ip("link", "set", vm.tap, "master", "vmbr0", "up", netns=lab.netns)


def qemu_argv(lab: Lab, vm: Vm) -> list[str]:
    image = lab.image
    cpu = "host" if accel() == "kvm" else "max"
    cmdline = (f"root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet "
               f"tartan.ip={vm.ip}/24 tartan.hostname={vm.name}")
    return ["ip", "netns", "exec", lab.netns, "timeout", "-s", "KILL", str(LIFETIME),
            "qemu-system-x86_64", "-accel", accel(), "-cpu", cpu, "-m", str(MEMORY_MB),
            "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
            "-kernel", image["kernel"], "-initrd", image["initrd"], "-append", cmdline,
            "-drive", f"file={lab.dir / vm.name}.qcow2,if=virtio,format=qcow2",
            "-netdev", f"tap,id=n0,ifname={vm.tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={vm.mac}",
            "-serial", f"file:{lab.dir / vm.name}.log",
            "-pidfile", str(lab.dir / f"{vm.name}.pid")]


def start(lab: Lab, vm: Vm) -> None:
    overlay = lab.dir / f"{vm.name}.qcow2"
    if not overlay.exists():
        run = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                              lab.image["disk"], "-F", "raw", str(overlay)],
                             capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise VmError(f"qemu-img create for {vm.name}: {run.stderr.strip()}")
    pidfile = lab.dir / f"{vm.name}.pid"
    pidfile.unlink(missing_ok=True)
    log = open(lab.dir / f"{vm.name}.qemu", "w")  # noqa: SIM115 (qemu keeps it)
    proc = subprocess.Popen(qemu_argv(lab, vm), stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 10
    while not pidfile.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None or not pidfile.exists():
        said = (lab.dir / f"{vm.name}.qemu").read_text().strip().splitlines()[-3:]
        raise VmError(f"qemu for {vm.name} did not start: {' '.join(said)}")
    vm.pid = int(pidfile.read_text())
    vm.booted_at = time.time()
    lab.save()


def stop(vm: Vm, timeout: float = 10.0) -> None:
    """SIGTERM (qemu powers the VM off), then SIGKILL after `timeout`."""
    if vm.pid:
        terminate(vm.pid, timeout)
    vm.pid = 0


def terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if `pid` is still alive after `timeout` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not alive(pid):
            return


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def ssh_argv(lab: Lab, vm: Vm, command: str, interactive: bool = False) -> list[str]:
    options = [*SSH_OPTIONS, "-t"] if interactive else [*SSH_OPTIONS, "-o", "BatchMode=yes"]
    return ["ip", "netns", "exec", lab.netns, "ssh", "-i", lab.image["key"], *options,
            "-o", f"ControlPath={lab.dir}/ssh-{vm.name}", "-o", "ControlMaster=auto",
            "-o", "ControlPersist=300", f"root@{vm.ip}", *([command] if command else [])]


# What ssh prints (exit 255) when it never reached the VM's shell: the command did not run,
# so it may be tried again. Under emulation, with the host busy, a VM's sshd can miss the
# banner deadline once in a while (CI saw it on a VM that answered again a moment later).
NOT_CONNECTED = ("banner exchange", "kex_exchange_identification", "Connection timed out",
                 "Connection refused", "Connection reset", "Connection closed by")
SSH_ATTEMPTS = 3


def ssh(lab: Lab, vm: Vm, command: str, timeout: float = 300, check: bool = True,
        stdin: str | None = None, attempts: int = SSH_ATTEMPTS) -> subprocess.CompletedProcess[str]:
    for attempt in range(1, attempts + 1):
        try:
            run = subprocess.run(ssh_argv(lab, vm, command), capture_output=True, text=True,
                                 timeout=timeout, input=stdin, check=False)
        except subprocess.TimeoutExpired:
            raise VmError(f"{vm.name}: `{command}` did not finish in {timeout:g} s") from None
        never_ran = run.returncode == 255 and any(m in run.stderr for m in NOT_CONNECTED)
        if not never_ran or attempt == attempts:
            break
        time.sleep(2)
    if check and run.returncode != 0:
        tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-8:])
        raise VmError(f"{vm.name}: `{command}` exited {run.returncode}: {tail}")
    return run


def copy_to(lab: Lab, vm: Vm, source: Path, target: str) -> None:
    """A file or folder onto the VM, over the VM's ssh connection (tar through ssh)."""
    tar = subprocess.Popen(["tar", "-C", str(source.parent), "-cf", "-", source.name],
                           stdout=subprocess.PIPE)
    run = subprocess.run(ssh_argv(lab, vm, f"mkdir -p {target} && tar -C {target} -xf -"),
                         stdin=tar.stdout, capture_output=True, text=True, check=False)
    tar.wait()
    if run.returncode != 0 or tar.returncode != 0:
        raise VmError(f"copy {source} to {vm.name}:{target}: {run.stderr.strip()}")


def wait_ssh(lab: Lab, vm: Vm, timeout: float = 300) -> float:
    """Until the VM answers ssh; seconds since it was started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(vm.pid):
            raise VmError(f"{vm.name}'s qemu exited: {_console_tail(lab, vm)}")
        try:
            # one attempt each: this loop is the retry, and it times the boot
            if ssh(lab, vm, "true", timeout=15, check=False, attempts=1).returncode == 0:
                return time.time() - vm.booted_at
        except VmError:
            pass
        time.sleep(1)
    raise VmError(f"{vm.name} did not answer ssh in {timeout:g} s: {_console_tail(lab, vm)}")


def _console_tail(lab: Lab, vm: Vm) -> str:
    try:
        lines = (lab.dir / f"{vm.name}.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no console log)"
    return " | ".join(lines[-4:])


def up(name: str, image: Image, count: int, say: Callable[[str], None] = print) -> Lab:
    """`count` VMs booted and answering ssh; torn down again if any fails."""
    lab = Lab(name, {k: str(v) for k, v in asdict(image).items()},
              [Vm(f"node{i}", i, f"{SUBNET}.{10 + i}") for i in range(1, count + 1)])
    if lab.dir.exists() or Path(f"/run/netns/{lab.netns}").exists():
        raise VmError(f"VM lab {name} exists: `down` it first")
    lab.save()
    try:
        make_network(lab)
        for vm in lab.vms:
            start(lab, vm)
        for vm in lab.vms:
            vm.answered_after = wait_ssh(lab, vm)
            say(f"  {vm.name} ({vm.ip}) answers ssh {vm.answered_after:.1f} s after qemu "
                "started")
        lab.save()
    except BaseException:
        down(lab)
        raise
    return lab


def reboot(lab: Lab, vm: Vm, say: Callable[[str], None] = print) -> float:
    """`reboot` inside the VM (qemu restarts it with the same kernel); seconds until it
    answers ssh again."""
    ssh(lab, vm, "systemctl reboot", check=False, timeout=30)
    _forget_connection(lab, vm)
    vm.booted_at = time.time()
    time.sleep(3)  # the old sshd goes first
    return wait_ssh(lab, vm)


def _forget_connection(lab: Lab, vm: Vm) -> None:
    argv = ssh_argv(lab, vm, "")
    subprocess.run([*argv[:-1], "-O", "exit", argv[-1]], capture_output=True, check=False)
    (lab.dir / f"ssh-{vm.name}").unlink(missing_ok=True)


def down(lab: Lab) -> list[str]:
    """Stop every VM, remove the namespace and the lab's files; what was removed."""
    removed = []
    for vm in lab.vms:
        if vm.pid and alive(vm.pid):
            pid = vm.pid
            _forget_connection(lab, vm)
            stop(vm)
            removed.append(f"{vm.name} (qemu pid {pid})")
    for pidfile in lab.dir.glob("*.pid") if lab.dir.exists() else []:
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            continue
        if alive(pid):
            stop(Vm("leftover", 0, "", pid))
    if Path(f"/run/netns/{lab.netns}").exists():
        subprocess.run(["ip", "netns", "del", lab.netns], capture_output=True, check=False)
        removed.append(f"namespace {lab.netns} (its bridge and taps)")
    if lab.dir.exists():
        shutil.rmtree(lab.dir, ignore_errors=True)
        removed.append(str(lab.dir))
    return removed


def labs() -> Sequence[str]:
    return sorted(p.name for p in STATE_ROOT.iterdir()) if STATE_ROOT.is_dir() else []


def down_named(name: str) -> list[str]:
    """`down` of a lab by name, also one whose state file is gone or unreadable."""
    try:
        lab = Lab.load(name)
    except VmError:
        lab = Lab(name)
    return down(lab)
