"""`make test-vagrant` (not in `make test`): a real `vagrant up` of the users' Vagrantfile
through vagrant-libvirt, from the box built here. Needs root, vagrant with vagrant-libvirt,
libvirtd, qemu and the bundle; `make test-vagrant` installs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "vagrant"))


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root"
    needed = ("vagrant", "libvirtd", "virtlogd", "virsh", "dnsmasq", "rsync",
              "qemu-system-x86_64", "qemu-img", "debootstrap")
    tools = [t for t in needed if shutil.which(t) is None]
    if tools:
        return f"{', '.join(tools)} not installed: run `make test-vagrant`"
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True,
                             check=False).stdout
    if "vagrant-libvirt" not in plugins:
        return "vagrant-libvirt is not installed: run `make test-vagrant`"
    if not (ROOT / "dist/tartan/tartan-full").exists():
        return "no bundle: run `make bundle`"
    return ""


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    if reason:
        for item in items:
            if "tests/vagrant/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))
