"""The VM lab's disk image: Debian 12 with its own kernel, and Tartan installed in it by Tartan's
installer, built once and cached by what went into it.

Two layers, each in CACHE under a key made of its inputs:
- the system (`system-<key>`): debootstrap of bookworm with systemd, sshd, iproute2, iptables,
  ipset, etcd and Debian's kernel (linux-image-amd64, its initramfs made by initramfs-tools
  as on any Debian machine), then set up for the lab (below). Key: the suite, the package
  list, the kernel package's version and this module's SYSTEM_VERSION.
- the disk (`disk-<key>.raw`): the system with the bundle installed (`install.py install
  --destdir`, what `make install DESTDIR=` runs), as an ext4 file system. Key: the system's
  key and the bundle's hash.

Set up for the lab: root logs in with the lab's own key (made once, in CACHE); the address
and hostname come from the kernel command line (`tartan.ip=`, `tartan.hostname=`), written
by a unit before systemd-networkd starts, so one image serves every VM; /etc/machine-id is
empty, so each VM's overlay gets its own; timers and units a lab VM does not need are masked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("TARTAN_VM_CACHE", "/var/cache/tartan-vm"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
KERNEL_PACKAGE = "linux-image-amd64"
PACKAGES = ("systemd", "systemd-sysv", "udev", "dbus", "openssh-server", "iproute2",
            "iptables", "ipset", "python3", "kmod", "iputils-ping", "procps", "conntrack",
            "iperf3", "etcd-server", "containernetworking-plugins", "initramfs-tools",
            "rsync", "sudo",  # what Vagrant needs in a box (rsync folders, its user's sudo)
            KERNEL_PACKAGE)
SYSTEM_VERSION = "1"  # bump when the set-up below changes
DISK_SIZE = "3G"
MASKED = ("e2scrub_reap.service", "systemd-firstboot.service", "apt-daily.timer",
          "apt-daily-upgrade.timer", "man-db.timer", "e2scrub_all.timer", "fstrim.timer",
          "systemd-timesyncd.service", "modprobe@drm.service", "systemd-logind.service",
          "getty@tty1.service")
DISABLED = ("etcd.service",)  # provision.sh enables it on the node that runs it
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "ext4")  # what mounting the root takes

NET_SCRIPT = """#!/bin/sh
# The VM's address and name, from the kernel command line (tartan.ip=, tartan.hostname=).
for word in $(cat /proc/cmdline); do
    case "$word" in
    tartan.ip=*) ip="${word#tartan.ip=}" ;;
    tartan.hostname=*) name="${word#tartan.hostname=}" ;;
    esac
done
mkdir -p /etc/systemd/network
if [ -n "$ip" ]; then
    printf '[Match]\\nName=eth0\\n\\n[Network]\\nAddress=%s\\nLinkLocalAddressing=no\\n' \\
        "$ip" >/etc/systemd/network/10-eth0.network
fi
if [ -n "$name" ]; then
    echo "$name" >/etc/hostname
    hostname "$name"
fi
"""
NET_UNIT = """[Unit]
Description=Tartan VM lab: address and hostname from the kernel command line
DefaultDependencies=no
Before=systemd-networkd.service network-pre.target
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/tartan-vm-net

[Install]
WantedBy=sysinit.target
"""


class ImageError(Exception):
    """The image cannot be built (the message says why)."""


@dataclass(frozen=True)
class Image:
    disk: Path  # raw ext4, the base of every VM's overlay
    kernel: Path
    initrd: Path
    key: Path  # the lab's ssh private key
    kernel_version: str


def run(argv: list[str], what: str) -> str:
    run = subprocess.run(argv, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-5:])
        raise ImageError(f"{what} failed ({' '.join(argv[:3])} ...): {tail}")
    return str(run.stdout)


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def kernel_version() -> str:
    """The version of the kernel package apt would install (the system's key holds it)."""
    out = run(["apt-cache", "policy", KERNEL_PACKAGE], "apt-cache policy")
    for line in out.splitlines():
        if line.strip().startswith("Candidate:"):
            return line.split(":", 1)[1].strip()
    raise ImageError(f"apt knows no {KERNEL_PACKAGE}: is Debian's archive in the sources?")


def lab_key() -> Path:
    key = CACHE / "id_ed25519"
    if not key.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tartan-vm-lab", "-f",
              str(key)], "ssh-keygen")
    return key


@contextlib.contextmanager
def _building(name: str) -> Iterator[None]:
    """Exclusive against every other process building `name` in the cache (the VM suite and
    the image test run at once in `make test`): the second waits, then finds it built."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def system(say: Callable[[str], None] = print) -> tuple[Path, str]:
    """The system tree for the current inputs, built if missing; (tree, its key)."""
    key = digest(SUITE, " ".join(PACKAGES), kernel_version(), SYSTEM_VERSION)
    tree = CACHE / f"system-{key}"
    if (tree / ".built").exists():
        return tree, key
    with _building("system"):
        return _build_system(tree, key, say)


def _build_system(tree: Path, key: str, say: Callable[[str], None]) -> tuple[Path, str]:
    if (tree / ".built").exists():  # built while this process waited for the lock
        return tree, key
    shutil.rmtree(tree, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="system-", dir=CACHE))
    work.chmod(0o755)  # it becomes the VMs' `/` (mkdtemp makes it 0700)
    try:
        say(f"vm image: debootstrap {SUITE} with {len(PACKAGES)} packages (a few minutes, once)")
        run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
              str(work), MIRROR], "debootstrap")
        _set_up(work)
        (work / ".built").write_text(key + "\n")
        work.rename(tree)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    prune("system-", keep=tree.name)
    return tree, key


def _set_up(root: Path) -> None:
    public = lab_key().with_suffix(".pub").read_text()
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(public)
    (ssh / "authorized_keys").chmod(0o600)
    # the kernel mounts / read-write (`rw`): no fstab line, so no wait for udev's dev-vda
    (root / "etc/fstab").write_text("# / is /dev/vda, mounted by the kernel (root=/dev/vda rw)\n")
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"  # systemd would copy it: one id for every VM
    if dbus_id.exists() or dbus_id.is_symlink():
        _link(dbus_id, "/etc/machine-id")
    (root / "etc/hostname").write_text("tartan-vm\n")
    script = root / "usr/local/sbin/tartan-vm-net"
    script.write_text(NET_SCRIPT)
    script.chmod(0o755)
    unit = root / "etc/systemd/system/tartan-vm-net.service"
    unit.write_text(NET_UNIT)
    wants = root / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    _link(wants / unit.name, f"/etc/systemd/system/{unit.name}")
    units = root / "etc/systemd/system"
    for name in MASKED:
        _link(units / name, "/dev/null")
    for name in DISABLED:
        (units / "multi-user.target.wants" / name).unlink(missing_ok=True)
    _small_initramfs(root)
    network_wants = root / "etc/systemd/system/multi-user.target.wants"
    _link(network_wants / "systemd-networkd.service",
          "/lib/systemd/system/systemd-networkd.service")
    # sshd's host keys once for the image (a lab VM is reached with StrictHostKeyChecking off)
    run(["chroot", str(root), "ssh-keygen", "-A"], "ssh-keygen -A in the image")
    (root / "etc/ssh/sshd_config.d/tartan-vm.conf").write_text(
        "PermitRootLogin prohibit-password\nUseDNS no\n")
    (root / "etc/systemd/journald.conf.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/journald.conf.d/tartan-vm.conf").write_text(
        "[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n")
    # apt caches and docs are not needed in the lab's disks
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


def _small_initramfs(root: Path) -> None:
    """An initramfs with only what mounting /dev/vda takes, gzip'd: Debian's default (most
    modules, zstd) is 36 MB, and unpacking it under emulation costs seconds of every boot."""
    conf = root / "etc/initramfs-tools"
    (conf / "conf.d/tartan-vm.conf").write_text("MODULES=list\nCOMPRESS=gzip\n")
    (conf / "modules").write_text("\n".join(INITRAMFS_MODULES) + "\n")
    mounts = [root / "proc", root / "sys", root / "dev"]
    try:
        for fs, target in zip(("proc", "sysfs", "devtmpfs"), mounts, strict=True):
            run(["mount", "-t", fs, fs, str(target)], f"mount {fs} in the image")
        run(["chroot", str(root), "update-initramfs", "-u", "-k", "all"],
             "update-initramfs in the image")
    finally:
        for target in reversed(mounts):
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def vmlinux(bzimage: Path, out: Path) -> None:
    """The uncompressed kernel inside a bzImage (its xz payload), which qemu boots through
    its PVH entry: no decompression under emulation."""
    import lzma

    data = bzimage.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise ImageError(f"{bzimage}: no xz payload (a kernel compressed otherwise?)")
    kernel = lzma.LZMADecompressor().decompress(data[start:])
    if kernel[:4] != b"\x7fELF":
        raise ImageError(f"{bzimage}: its payload is not an ELF kernel")
    out.write_bytes(kernel)


def _link(path: Path, target: str) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def bundledigest(bundle: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(bundle)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def boot_files(tree: Path, key: str) -> tuple[Path, Path, str]:
    """The system's kernel (uncompressed) and initrd, cached beside it; and its version."""
    version = next(p.name for p in (tree / "lib/modules").iterdir())
    kernel, initrd = CACHE / f"vmlinux-{key}", CACHE / f"initrd-{key}"
    if not kernel.exists() or not initrd.exists():
        vmlinux(tree / f"boot/vmlinuz-{version}", kernel)
        shutil.copyfile(tree / f"boot/initrd.img-{version}", initrd)
        prune("vmlinux-", keep=kernel.name)
        prune("initrd-", keep=initrd.name)
    return kernel, initrd, version


def build(bundle: Path, source: Path, say: Callable[[str], None] = print) -> Image:
    """The image for the current system inputs and this bundle, built if missing."""
    if not (bundle / "tartan-full").exists():
        raise ImageError(f"no bundle in {bundle}: run `make bundle` first")
    tree, key = system(say)
    kernel, initrd, version = boot_files(tree, key)
    disk_key = digest(key, bundledigest(bundle))
    disk = CACHE / f"disk-{disk_key}.raw"
    if not disk.exists():
        say(f"vm image: installing the bundle ({bundle}) into a disk of {DISK_SIZE}")
        staged = Path(tempfile.mkdtemp(prefix="disk-", dir=CACHE))
        staged.chmod(0o755)
        partial = disk.with_suffix(".partial")
        try:
            run(["cp", "-a", "--reflink=auto", f"{tree}/.", str(staged)], "copying the system")
            run(["python3", str(source / "packaging/install.py"), "install", "--bundle",
                  str(bundle), "--destdir", str(staged)], "install.py install")
            run(["mkfs.ext4", "-q", "-F", "-L", "tartan-vm", "-d", str(staged), str(partial),
                  DISK_SIZE], "mkfs.ext4 -d")
            partial.rename(disk)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
            partial.unlink(missing_ok=True)
        prune("disk-", keep=disk.name)
    return Image(disk, kernel, initrd, lab_key(), version)


def prune(prefix: str, keep: str) -> None:
    """Older builds of a layer go: the cache holds the current one of each."""
    for path in CACHE.glob(f"{prefix}*"):
        if path.name != keep and not path.name.endswith(".partial"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
