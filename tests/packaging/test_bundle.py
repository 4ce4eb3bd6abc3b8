"""The bundle's small CNI executable: what it carries, what it needs, how fast it starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_kit import FakeAgent, packaging_module

from tartan.cni import fastpath
from tartan.cni.versions import CURRENT_VERSION, SUPPORTED_VERSIONS

CONFIG = b'{"cniVersion": "1.1.0", "name": "n", "type": "tartan-bridge"}'


def call(exe: Path, role: str, folder: Path, env: dict[str, str],
         stdin: bytes = b"") -> subprocess.CompletedProcess:
    """Run `exe` through a symlink named `role` made in `folder`, as /opt/cni/bin does."""
    link = folder / role
    if not link.is_symlink():
        link.symlink_to(exe)
    return subprocess.run([str(link)], input=stdin, env={"PATH": os.environ["PATH"], **env},
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


def test_cni_executable_starts_about_as_fast_as_plain_python(bundle, tmp_path):
    """The same client under `python -I -S` is the floor; PyInstaller's default build of it
    took 2.4 times as long here (run-time hooks), this one about 1.1 times."""
    script = tmp_path / "plain-client"
    site = Path(fastpath.__file__).resolve().parents[2]
    script.write_text(f"#!{os.path.realpath(sys.executable)} -IS\n"
                      f"import sys\nsys.path.append({str(site)!r})\n"
                      "from tartan.cni.fastpath import bundle_main\n"
                      "sys.exit(bundle_main('/nonexistent'))\n")
    script.chmod(0o755)
    startup = packaging_module("startup")
    stats = startup.measure([str(bundle / "tartan-cni"), str(script)], runs=30)
    cni, plain = (stats[str(p)]["median_ms"] for p in (bundle / "tartan-cni", script))
    assert cni < 1.5 * plain, stats
