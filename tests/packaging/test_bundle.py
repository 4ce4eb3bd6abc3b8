"""The bundle's small CNI executable: what it carries, what it needs, what it loads to start."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from bundle_kit import FakeAgent, packaging_module

from tartan.cni import fastpath
from tartan.cni.versions import CURRENT_VERSION, SUPPORTED_VERSIONS

CONFIG = b'{"cniVersion": "1.1.0", "name": "n", "type": "tartan-bridge"}'


def call(exe: Path, role: str, folder: Path, env: dict[str, str],
         stdin: bytes = b"", wrapper: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `exe` through a symlink named `role` made in `folder`, as /opt/cni/bin does
    (under `wrapper`, e.g. strace, when given)."""
    link = folder / role
    if not link.is_symlink():
        link.symlink_to(exe)
    return subprocess.run([*wrapper, str(link)], input=stdin,
                          env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def socket_path_only(bundle, tmp_path_factory) -> Path:
    """A copy of the bundle with only tartan-cni, the shared libraries, and the .pyc files
    the socket path may import: whatever it runs here needs nothing else."""
    allowed = packaging_module("cni_modules").allowed
    root = tmp_path_factory.mktemp("cni-only") / "tartan"
    shutil.copytree(bundle, root, symlinks=True)
    (root / "tartan-full").unlink()
    internal = root / "_internal"
    for pyc in internal.rglob("*.pyc"):
        parts = list(pyc.relative_to(internal).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if not allowed(".".join(parts)):
            pyc.unlink()
    assert not (internal / "json").exists() and not (internal / "base_library.zip").exists()
    return root / "tartan-cni"


def test_cni_executable_runs_no_runtime_hook_and_has_no_archive(bundle):
    from PyInstaller.archive.readers import CArchiveReader

    toc = CArchiveReader(str(bundle / "tartan-cni")).toc
    assert not [name for name in toc if name.startswith("pyi_rth_")]
    assert "entry_cni" in toc
    full = CArchiveReader(str(bundle / "tartan-full")).toc
    assert "pyi_rth_pkgutil" in full  # pyroute2 lists its link kinds with pkgutil


def test_version_needs_nothing_beyond_the_socket_path(socket_path_only, tmp_path):
    for role in ("tartan", "tartan-bridge", "tartan-ipam"):
        proc = call(socket_path_only, role, tmp_path, {"CNI_COMMAND": "VERSION"})
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"cniVersion": CURRENT_VERSION,
                                           "supportedVersions": list(SUPPORTED_VERSIONS)}


@pytest.mark.parametrize("code", [0, 1])
def test_socket_path_relays_the_agent_answer_with_nothing_else(socket_path_only, tmp_path,
                                                               code):
    reply = b'{"code": 7, "msg": "from the agent"}' if code else FakeAgent.reply
    agent = FakeAgent(tmp_path / "agent.sock", code=code, reply=reply)
    try:
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
               "TARTAN_CNI_SOCKET": str(agent.path)}
        proc = call(socket_path_only, "tartan", tmp_path, env, CONFIG)
    finally:
        agent.close()
    assert (proc.returncode, proc.stdout, proc.stderr) == (code, reply, b"")
    [(plugin, sent_env, stdin)] = agent.requests
    assert (plugin, stdin) == ("tartan", CONFIG)
    assert sent_env["CNI_CONTAINERID"] == "c1"
    assert sent_env[fastpath.CALLER_NS] == fastpath.namespace_identity()
    assert "TARTAN_CNI_SOCKET" not in sent_env


def test_unknown_names_get_one_line_and_no_traceback(bundle, tmp_path):
    for exe, role in (("tartan-cni", "tartan-cni"), ("tartan-full", "tartan-full"),
                      ("tartan-full", "flannel")):
        proc = call(bundle / exe, role, tmp_path, {})
        assert proc.returncode == 1
        assert len(proc.stderr.splitlines()) == 1 and b"link me as one of" in proc.stderr


OPENED = re.compile(r'openat\(AT_FDCWD, "([^"]+)", [^)]*\) = \d+$')
EXECUTED = re.compile(r'execve\("([^"]+)", .*\) = 0$')
# C extension modules it may load: the socket path's two, and zlib for PyInstaller's own
# bootstrap modules (the small PYZ inside the executable).
EXTENSIONS = {"_socket", "_struct", "zlib"}


def traced(bundle: Path, role: str, folder: Path, env: dict[str, str],
           stdin: bytes = b"") -> tuple[subprocess.CompletedProcess, list[str], list[str]]:
    """The bundle's tartan-cni run as `role` under strace: (result, files it opened,
    programs it executed)."""
    strace = shutil.which("strace") or pytest.skip("strace is not installed")
    trace = folder / f"{role}.strace"
    proc = call(bundle / "tartan-cni", role, folder, env, stdin,
                wrapper=(strace, "-f", "-qq", "-e", "trace=openat,execve", "-o", str(trace)))
    lines = trace.read_text().splitlines()
    opened = [m[1] for m in map(OPENED.search, lines) if m]
    executed = [m[1] for m in map(EXECUTED.search, lines) if m]
    return proc, opened, executed


def loaded_modules(opened: list[str], internal: Path) -> tuple[set[str], set[str]]:
    """(Python modules read from .pyc files, C extension modules) under `internal`."""
    pyc, ext = set(), set()
    for path in map(Path, opened):
        if not path.is_relative_to(internal):
            continue
        if path.suffix == ".pyc":
            parts = list(path.relative_to(internal).with_suffix("").parts)
            pyc.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        elif ".cpython-" in path.name:
            ext.add(path.name.split(".")[0])
    return pyc, ext


def test_cni_executable_starts_with_the_socket_path_alone(bundle, tmp_path):
    """Why it starts about as fast as plain `python -I -S` on the same client (PyInstaller's
    default build took 2.4 times as long: run-time hooks, base_library.zip), as behaviour of
    the real bundle: besides no run-time hook (above), it reads no archive and no `site`,
    runs no other program, and loads the socket path's modules only, even where the full
    bundle has more. The time itself is measured by packaging/startup.py, not by a test."""
    allowed = packaging_module("cni_modules").allowed
    internal = (bundle / "_internal").resolve()
    agent = FakeAgent(tmp_path / "agent.sock")
    try:
        runs = {
            "VERSION": traced(bundle, "tartan-bridge", tmp_path, {"CNI_COMMAND": "VERSION"}),
            "ADD": traced(bundle, "tartan", tmp_path,
                          {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
                           "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
                           "CNI_PATH": "/opt/cni/bin", "TARTAN_CNI_SOCKET": str(agent.path)},
                          CONFIG),
        }
    finally:
        agent.close()
    assert len(agent.requests) == 1  # the ADD went the socket path, to the agent
    for command, (proc, opened, executed) in runs.items():
        assert proc.returncode == 0, (command, proc.stderr)
        pyc, ext = loaded_modules(opened, internal)
        # the trace sees the imports (else the checks below would pass on nothing)
        assert {"tartan.cni.fastpath", "tartan.cni.registry"} <= pyc, (command, pyc)
        assert sorted(m for m in pyc if not allowed(m)) == [], command
        assert "site" not in pyc and ext <= EXTENSIONS, (command, pyc, ext)
        assert not [p for p in opened if p.endswith(".zip") or "tartan-full" in p], command
        # PyInstaller's bootloader execs itself once; nothing else runs
        assert {os.path.realpath(p) for p in executed} == \
            {os.path.realpath(bundle / "tartan-cni")}, (command, executed)
