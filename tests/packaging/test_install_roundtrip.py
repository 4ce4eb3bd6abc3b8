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

from tartan.backends import agent

from harness import eventually, requires_root, stop_process

CONFLIST = "etc/cni/net.d/10-tartan.conflist"
NET_CONF = "etc/tartan/net-conf.json"
UNIT = "etc/systemd/system/tartand.service"
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
    assert (root / NET_CONF).read_bytes() == (PACKAGING / "net-conf.json").read_bytes()
    unit = (root / UNIT).read_text()
    assert "ExecStart=/usr/local/bin/tartand --ip-masq --net-config /etc/tartan/net-conf.json" \
        in unit and "Restart=always" in unit
    for name in CNI_NAMES:
        assert os.path.realpath(root / "opt/cni/bin" / name) == str(root / "opt/tartan/tartan-cni")
    assert make("uninstall", env={"DESTDIR": str(root)}).returncode == 0
    assert snapshot(root) == before


@pytest.mark.parametrize("path, text", [
    (CONFLIST, '{"cniVersion": "0.4.0", "name": "operators-own", "plugins": []}\n'),
    (NET_CONF, '{"Network": "10.42.0.0/16", "Backend": {"Type": "host-gw"}, "operators-own": 1}\n'),
])
def test_an_existing_config_is_left_alone(bundle, tmp_path, path, text):
    mine = tmp_path / path
    mine.parent.mkdir(parents=True)
    mine.write_text(text)
    before = snapshot(tmp_path)
    proc = install_py("install", tmp_path, bundle)
    assert proc.returncode == 0, proc.stderr
    assert f"kept /{path}: it exists" in proc.stderr
    assert mine.read_text() == text
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert "/" + path in manifest["kept"]
    assert not [e for e in manifest["created"] if e["path"] == "/" + path]
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


@pytest.mark.parametrize("path", [CONFLIST, NET_CONF])
def test_an_edited_default_config_survives_uninstall(bundle, tmp_path, path):
    assert install_py("install", tmp_path, bundle).returncode == 0
    (tmp_path / path).write_text('{"edited": true}\n')
    proc = install_py("uninstall", tmp_path)
    assert proc.returncode == 0
    assert f"/{path} (edited since install)" in proc.stderr
    assert (tmp_path / path).read_text() == '{"edited": true}\n'
    assert not (tmp_path / "opt/tartan").exists() and not (tmp_path / "opt/cni/bin").exists()
    assert sorted(os.listdir(tmp_path / path.split("/")[0])) == [path.split("/")[1]]


def test_the_units_tartand_starts_on_the_installed_net_conf(staged):
    """What `systemctl start tartand` runs: its flags are tartand's, and the file its
    --net-config names is installed and valid (so a fresh store gets the network from it)."""
    unit = (staged.root / UNIT).read_text()
    argv = next(line.split("=", 1)[1] for line in unit.splitlines()
                if line.startswith("ExecStart=")).split()
    assert argv[0] == "/usr/local/bin/tartand"
    args = agent.parse_args(argv[1:])
    assert args.ip_masq and str(args.net_config) == "/" + NET_CONF
    raw = json.loads((staged.root / NET_CONF).read_text())
    assert str(agent.parse_net_conf(raw).network) == "10.244.0.0/16"
    assert raw["Backend"]["Type"] == "vxlan"


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
HOST_PATHS = ("/opt/tartan", "/opt/cni", "/etc/cni", "/etc/tartan", "/usr/local/bin",
              "/etc/systemd/system")
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
    assert json.loads(Path("/" + NET_CONF).read_text())["Network"] == "10.244.0.0/16"
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


@pytest.mark.kernel
@requires_root
def test_tartand_as_the_unit_runs_it_starts_on_a_fresh_node(staged, host_ns, tmp_path):
    """A fresh node: an empty store and only what install wrote. tartand started with the
    unit's command line (in a node namespace, its state files in the test's tmp) takes the
    network from the installed net-conf.json, leases a subnet and starts."""
    unit = (staged.root / UNIT).read_text()
    argv = next(line.split("=", 1)[1] for line in unit.splitlines()
                if line.startswith("ExecStart=")).split()
    argv = [str(staged.root / arg.lstrip("/")) if arg.startswith(("/usr/", "/etc/")) else arg
            for arg in argv]
    host_ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    host_ns.run("ip", "addr", "add", "198.18.9.2/24", "dev", "eth0")
    for link in ("eth0", "eth0p"):
        host_ns.run("ip", "link", "set", link, "up")
    subnet_file, log = tmp_path / "subnet.env", tmp_path / "tartand.log"
    argv += ["--store", f"sqlite:{tmp_path / 'leases.db'}", "--iface", "eth0",
             "--subnet-file", str(subnet_file), "--cni-socket", str(tmp_path / "cni.sock"),
             "--cni-journal", str(tmp_path / "journal"), "--no-network-policy"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(["nsenter", f"--net={host_ns.path}", *argv],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out)
    try:
        eventually(lambda: "agent.started" in log.read_text(), 30, process=proc,
                   what=lambda: f"tartand started:\n{log.read_text()}")
        assert "FLANNEL_NETWORK=10.244.0.0/16" in subnet_file.read_text()
    finally:
        stop_process(proc)
