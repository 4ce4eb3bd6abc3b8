"""install then uninstall leaves the tree exactly as it was: in a DESTDIR with whatever an
operator already had there, and once for real on this host's own paths."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from pathlib import Path

import pytest
from bundle_kit import CNI_NAMES, PACKAGING, install_py, make, packaging_module, snapshot

from harness import requires_root

CONFLIST = "etc/cni/net.d/10-tartan.conflist"
MANIFEST = "opt/tartan/.installed"


def roundtrip(root: Path, bundle: Path) -> dict:
    """Install, check, uninstall; returns the manifest install wrote."""
    proc = install_py("install", root, bundle)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((root / MANIFEST).read_text())
    proc = install_py("uninstall", root)
    assert proc.returncode == 0, proc.stderr
    return manifest


def test_make_install_and_uninstall_into_an_empty_destdir(bundle, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    before = snapshot(root)
    assert make("install", env={"DESTDIR": str(root)}).returncode == 0
    assert (root / CONFLIST).read_bytes() == (PACKAGING / "10-tartan.conflist").read_bytes()
    unit = (root / "etc/systemd/system/tartand.service").read_text()
    assert "ExecStart=/usr/local/bin/tartand --ip-masq" in unit and "Restart=always" in unit
    for name in CNI_NAMES:
        assert os.path.realpath(root / "opt/cni/bin" / name) == str(root / "opt/tartan/tartan-cni")
    assert make("uninstall", env={"DESTDIR": str(root)}).returncode == 0
    assert snapshot(root) == before


def test_an_existing_conflist_is_left_alone(bundle, tmp_path):
    mine = tmp_path / CONFLIST
    mine.parent.mkdir(parents=True)
    mine.write_text('{"cniVersion": "0.4.0", "name": "operators-own", "plugins": []}\n')
    before = snapshot(tmp_path)
    proc = install_py("install", tmp_path, bundle)
    assert proc.returncode == 0, proc.stderr
    assert "operators-own" in mine.read_text()
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert "/" + CONFLIST in manifest["kept"]
    assert not [e for e in manifest["created"] if e["path"] == "/" + CONFLIST]
    assert install_py("uninstall", tmp_path).returncode == 0
    assert snapshot(tmp_path) == before


def test_other_plugins_and_their_folder_stay(bundle, tmp_path):
    cni_bin = tmp_path / "opt/cni/bin"
    cni_bin.mkdir(parents=True)
    (cni_bin / "bridge").write_bytes(b"\x7fELF reference bridge")
    (cni_bin / "bridge").chmod(0o755)
    (cni_bin / "loopback").symlink_to("/usr/lib/cni/loopback")
    before = snapshot(tmp_path)
    manifest = roundtrip(tmp_path, bundle)
    created = {entry["path"] for entry in manifest["created"]}
    assert "/opt/cni/bin" not in created and "/opt" not in created
    assert snapshot(tmp_path) == before


def test_a_symlinked_plugin_folder_gets_working_links(bundle, tmp_path):
    real = tmp_path / "usr/lib/cni"
    real.mkdir(parents=True)
    (tmp_path / "opt/cni").mkdir(parents=True)
    (tmp_path / "opt/cni/bin").symlink_to("../../usr/lib/cni")
    before = snapshot(tmp_path)
    assert install_py("install", tmp_path, bundle).returncode == 0
    assert os.path.realpath(real / "tartan-bridge") == str(tmp_path / "opt/tartan/tartan-cni")
    assert install_py("uninstall", tmp_path).returncode == 0
    assert snapshot(tmp_path) == before


def test_a_name_that_is_not_ours_stops_install_before_any_change(bundle, tmp_path):
    cni_bin = tmp_path / "opt/cni/bin"
    cni_bin.mkdir(parents=True)
    (cni_bin / "tartan-bridge").write_text("#!/bin/sh\n# a pip-installed console script\n")
    before = snapshot(tmp_path)
    proc = install_py("install", tmp_path, bundle)
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1 and "/opt/cni/bin/tartan-bridge" in proc.stderr
    assert snapshot(tmp_path) == before


def test_install_twice_is_an_upgrade_and_one_uninstall_removes_it(bundle, tmp_path):
    before = snapshot(tmp_path)
    for _ in range(2):
        proc = install_py("install", tmp_path, bundle)
        assert proc.returncode == 0, proc.stderr
    assert install_py("uninstall", tmp_path).returncode == 0
    assert snapshot(tmp_path) == before
    again = install_py("uninstall", tmp_path)
    assert again.returncode == 0 and "nothing to uninstall" in again.stderr


def test_an_edited_default_conflist_survives_uninstall(bundle, tmp_path):
    assert install_py("install", tmp_path, bundle).returncode == 0
    (tmp_path / CONFLIST).write_text('{"edited": true}\n')
    proc = install_py("uninstall", tmp_path)
    assert proc.returncode == 0
    assert "10-tartan.conflist (edited since install)" in proc.stderr
    assert (tmp_path / CONFLIST).read_text() == '{"edited": true}\n'
    assert not (tmp_path / "opt/tartan").exists() and not (tmp_path / "opt/cni/bin").exists()


def test_systemd_is_told_about_the_unit_when_it_runs(bundle, tmp_path, monkeypatch):
    """This machine has no systemd; where there is one, install reloads it, an upgrade
    restarts a running agent, uninstall stops and disables it first."""
    install = packaging_module("install")
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(install, "systemd_running", lambda root: True)
    monkeypatch.setattr(install, "systemctl", lambda *args: calls.append(args))
    root = install.Root(str(tmp_path))
    install.install(root, bundle)
    install.install(root, bundle)
    install.uninstall(root)
    assert calls == [("daemon-reload",), ("daemon-reload",), ("try-restart", "tartand.service"),
                     ("disable", "--now", "tartand.service"), ("daemon-reload",)]


def test_a_missing_systemctl_is_a_note_not_an_error(tmp_path, monkeypatch, capsys):
    install = packaging_module("install")
    assert not install.systemd_running(install.Root(str(tmp_path)))  # staged: never systemd
    monkeypatch.setenv("PATH", str(tmp_path))  # no systemctl to be found
    install.systemctl("daemon-reload")
    assert "note: systemctl daemon-reload" in capsys.readouterr().err


# --- the real host ---------------------------------------------------------------------------

# Everything install may touch on the host, and the folders above it.
HOST_PATHS = ("/opt/tartan", "/opt/cni", "/etc/cni", "/usr/local/bin", "/etc/systemd/system")
HOST_PARENTS = ("/opt", "/etc", "/usr/local")
LOCK = "/run/lock/tartan-host-install.lock"


def host_snapshot() -> dict:
    shallow = {p: sorted(os.listdir(p)) if os.path.isdir(p) else None for p in HOST_PARENTS}
    return {"tree": snapshot(*HOST_PATHS), "parents": shallow}


@pytest.fixture
def real_host(bundle):
    """The host's own paths, locked against another test run doing the same; whatever this
    test installed is uninstalled at the end, also when it failed half-way."""
    Path(LOCK).parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.lexists("/opt/tartan"):
            pytest.skip("/opt/tartan exists: Tartan is installed on this host; not touching it")
        before = host_snapshot()
        try:
            yield before
        finally:
            if os.path.exists("/" + MANIFEST):
                install_py("uninstall", "/")


@pytest.mark.host
@requires_root
def test_make_install_then_uninstall_leaves_the_host_as_it_was(real_host):
    installed = make("install")
    assert installed.returncode == 0, installed.stdout
    for name in CNI_NAMES:
        proc = subprocess.run([f"/opt/cni/bin/{name}"], env={"CNI_COMMAND": "VERSION"},
                              capture_output=True, text=True, timeout=30, check=False)
        assert proc.returncode == 0 and "supportedVersions" in proc.stdout, proc.stderr
    proc = subprocess.run(["/usr/local/bin/tartanctl", "--help"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    uninstalled = make("uninstall")
    assert uninstalled.returncode == 0, uninstalled.stdout
    assert host_snapshot() == real_host
