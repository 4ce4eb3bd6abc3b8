"""Every name `make install` puts on the host answers, called by that name (in a DESTDIR)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from bundle_kit import CNI_NAMES, COMMAND_NAMES

from tartan.cni.versions import CURRENT_VERSION, SUPPORTED_VERSIONS

VERSION_REPLY = {"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def run(path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(path), *args], env={"PATH": os.environ["PATH"], **env},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize("name", CNI_NAMES)
def test_cni_names_answer_version(staged, name):
    link = staged.cni(name)
    assert os.path.realpath(link) == str(staged.root / "opt/tartan/tartan-cni")
    proc = run(link, {"CNI_COMMAND": "VERSION"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == VERSION_REPLY


@pytest.mark.parametrize("name", CNI_NAMES)
def test_full_executable_answers_version_in_process(staged, tmp_path, name):
    """What the CNI names exec into when no agent answers."""
    link = tmp_path / name
    link.symlink_to(staged.root / "opt/tartan/tartan-full")
    proc = run(link, {"CNI_COMMAND": "VERSION"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["supportedVersions"] == list(SUPPORTED_VERSIONS)


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_commands_answer_help(staged, name):
    link = staged.command(name)
    assert os.path.realpath(link) == str(staged.root / "opt/tartan/tartan-full")
    proc = run(link, {}, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {name}")


def test_cni_error_from_the_fallback_is_cni_json(staged, no_agent):
    """No agent: the small executable execs tartan-full with stdin handed over; a bad
    config still comes back as the CNI error, not a traceback."""
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/none",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(staged.cni_bin), **no_agent}
    proc = subprocess.run([str(staged.cni("tartan-bridge"))], input='{"cniVersion": "1.1.0",',
                          env={"PATH": os.environ["PATH"], **env}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["code"] == 6, proc.stdout
    assert "Traceback" not in proc.stderr
