"""The users' Vagrantfile and the provisioning script it shares with the VM lab: `vagrant
validate` (offline, a second), its settings' errors, and provision.sh's own."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"


def vagrant(tmp_path: Path, *argv: str, **settings: str) -> subprocess.CompletedProcess:
    # Vagrant keeps its state in VAGRANT_HOME and the project's .vagrant: both in tmp_path
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "home"),
           "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"), **settings}
    return subprocess.run(["vagrant", *argv], cwd=VAGRANT_DIR, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant not installed: make deps")
def test_the_vagrantfile_validates_and_refuses_a_bad_setting(tmp_path: Path):
    run = vagrant(tmp_path, "validate")
    assert run.returncode == 0 and "validated successfully" in run.stdout, run.stderr
    for setting, message in (({"TARTAN_BACKEND": "ipip"}, "TARTAN_BACKEND=ipip: use vxlan, "
                               "host-gw or directrouting"),
                             ({"TARTAN_NODES": "0"}, "TARTAN_NODES=0: use 1 to 50")):
        run = vagrant(tmp_path, "validate", **setting)
        assert run.returncode != 0 and message in run.stderr, run.stderr
    assert not (VAGRANT_DIR / ".vagrant").exists()


def test_provision_sh_says_what_is_wrong_with_its_arguments():
    script = str(VAGRANT_DIR / "provision.sh")
    assert subprocess.run(["bash", "-n", script], check=False).returncode == 0
    for argv, message in (([], "--node-ip and --etcd-ip are required"),
                          (["--node-ip", "192.0.2.1", "--etcd-ip", "192.0.2.1", "--backend",
                            "ipip"], "--backend ipip: use vxlan, host-gw or directrouting"),
                          (["--bogus"], "unknown argument --bogus"),
                          (["--node-ip", "192.0.2.250", "--etcd-ip", "192.0.2.1"],
                           "no interface here has 192.0.2.250")):
        run = subprocess.run(["bash", script, *argv], capture_output=True, text=True,
                             check=False)
        assert run.returncode == 2 and message in run.stderr, (argv, run.stderr)
