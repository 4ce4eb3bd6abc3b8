"""A Vagrant box for the libvirt provider, built here from the VM lab's Debian 12 system
(image.py), so that `vagrant up` works without Vagrant Cloud.

It holds what a public Debian 12 box holds (the `vagrant` user with Vagrant's insecure key and
password-less sudo, sshd, DHCP on the first NIC, rsync for synced folders) and no Tartan: the
Vagrantfile's provisioner installs the bundle, as it does on a public box. The disk has no boot
loader; the box's own Vagrantfile boots its kernel and initrd directly, from the box's folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmlab import image
from vmlab.image import CACHE, DISK_SIZE, ImageError

NAME = "tartan/debian12"
VERSION = "1"  # bump when the set-up below changes
# where Debian's vagrant package and HashiCorp's keep Vagrant's insecure key pair
INSECURE_KEYS = ("/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",
                 "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub")
BOX_VAGRANTFILE = """# The Tartan VM lab's Debian 12 box: its kernel and initrd are booted directly.
Vagrant.configure("2") do |config|
  config.vm.provider "libvirt" do |libvirt|
    libvirt.kernel = File.join(__dir__, "vmlinux")
    libvirt.initrd = File.join(__dir__, "initrd")
    libvirt.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
    libvirt.disk_bus = "virtio"
  end
end
"""
DHCP_NETWORK = "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n"
SUDOERS = "vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n"


@dataclass(frozen=True)
class Box:
    name: str  # NAME-<key>: a box of other inputs is another box
    path: Path  # the .box file, for `vagrant box add`
    key: str


def insecure_key() -> Path:
    for pattern in INSECURE_KEYS:
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return found[-1]
    raise ImageError("Vagrant's insecure key is not here: install vagrant (`make test-vagrant` "
                     "does)")


def build(say: Callable[[str], None] = print) -> Box:
    """The box for the current system, built if missing."""
    tree, system_key = image.system(say)
    public = insecure_key().read_text()
    key = image.digest(system_key, VERSION, public)
    path = CACHE / f"box-{key}.box"
    if path.exists():
        return Box(f"{NAME}-{key}", path, key)
    say(f"vagrant box: building {NAME} from the VM lab's system")
    kernel, initrd, _ = image.boot_files(tree, system_key)
    work = Path(tempfile.mkdtemp(prefix="box-", dir=CACHE))
    partial = path.with_suffix(".partial")
    try:
        root, parts = work / "root", work / "box"
        root.mkdir(mode=0o755)
        parts.mkdir()
        image.run(["cp", "-a", "--reflink=auto", f"{tree}/.", str(root)], "copying the system")
        _set_up(root, public)
        raw = work / "disk.raw"
        image.run(["mkfs.ext4", "-q", "-F", "-L", "tartan-box", "-d", str(root), str(raw),
                   DISK_SIZE], "mkfs.ext4 -d")
        image.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(parts / "box.img")],
                  "qemu-img convert")
        shutil.copyfile(kernel, parts / "vmlinux")
        shutil.copyfile(initrd, parts / "initrd")
        size_gb = int(DISK_SIZE.rstrip("G"))
        (parts / "metadata.json").write_text(json.dumps(
            {"provider": "libvirt", "format": "qcow2", "virtual_size": size_gb}) + "\n")
        (parts / "Vagrantfile").write_text(BOX_VAGRANTFILE)
        image.run(["tar", "-C", str(parts), "-cf", str(partial), "metadata.json", "Vagrantfile",
                   "box.img", "vmlinux", "initrd"], "tar of the box")
        partial.rename(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        partial.unlink(missing_ok=True)
    image.prune("box-", keep=path.name)
    return Box(f"{NAME}-{key}", path, key)


def _set_up(root: Path, public_key: str) -> None:
    """What a Vagrant box has and the VM lab's system lacks; the lab's own key goes."""
    (root / "root/.ssh/authorized_keys").unlink(missing_ok=True)
    image.run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash",
               "--user-group", "vagrant"], "useradd vagrant in the box")
    ssh = root / "home/vagrant/.ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "authorized_keys").write_text(public_key)
    (ssh / "authorized_keys").chmod(0o600)
    image.run(["chroot", str(root), "chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh"],
              "chown of vagrant's .ssh")
    sudoers = root / "etc/sudoers.d/vagrant"
    sudoers.write_text(SUDOERS)
    sudoers.chmod(0o440)
    (root / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/network/80-dhcp-eth0.network").write_text(DHCP_NETWORK)
    (root / "etc/hostname").write_text("debian12\n")
    # sshd's host keys are the box's own, not the lab's
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    subprocess.run(["chroot", str(root), "ssh-keygen", "-A"], capture_output=True, check=True)
