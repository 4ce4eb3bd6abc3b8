"""The Kubernetes image and its init container's step.

`install.py install-cni` on its own first (no podman: upgrades, a second run, a bad
ConfigMap), then the image itself: packaging/kubernetes/Containerfile built with podman on a
local base (no registry is reachable here) imported from the Debian 12 tree the VM lab makes
with debootstrap (vagrant/vmlab/image.py, cached in /var/cache/tartan-vm), and the DaemonSet's
init container run from it exactly as kube-tartan.yml describes it, with the host's folders
in a temporary one. podman keeps everything (storage, run state, its locks, the containers'
cgroups) in places of the test's own, which the fixture removes, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from bundle_kit import PACKAGING, REPO, packaging_module, snapshot

from tartan.cni import registry

sys.path.insert(0, str(REPO / "vagrant"))
from vmlab import image as vm_image

PODMAN = shutil.which("podman")
RUNC = shutil.which("runc")
KUBE = PACKAGING / "kubernetes"
CGROUPS = Path("/sys/fs/cgroup")
# What of the VM lab's system an image has no use for: its kernel and modules, udev's
# hardware database, the reference plugins, etcd, documentation, apt's lists.
BASE_EXCLUDES = ("./boot", "./usr/lib/modules", "./usr/lib/udev", "./usr/lib/cni",
                 "./usr/bin/etcd", "./usr/bin/etcdctl", "./usr/share/doc", "./usr/share/man",
                 "./usr/share/locale", "./var/lib/apt/lists", "./var/cache", "./root/.ssh")

install = packaging_module("install")


# --- install-cni, without a container ---------------------------------------------------------


def fake_bundle(path: Path, text: str = "v1") -> Path:
    (path / "_internal").mkdir(parents=True)
    for exe in (install.CNI_EXE, install.FULL_EXE):
        (path / exe).write_text(f"#!/bin/sh\necho {text}\n")
        (path / exe).chmod(0o755)
    (path / "_internal" / "libpython3.11.so.1.0").write_text(text)
    (path / "_internal" / "libpython3.so").symlink_to("libpython3.11.so.1.0")
    return path


@dataclass
class Node:
    """A node's /opt/cni/bin and /etc/cni/net.d, and a ConfigMap's cni-conf.json."""

    root: Path

    @property
    def cni_bin(self) -> Path:
        return self.root / "opt/cni/bin"

    @property
    def conflist(self) -> Path:
        return self.root / "etc/cni/net.d/10-tartan.conflist"

    @property
    def source(self) -> Path:
        return self.root / "configmap/cni-conf.json"

    def install_cni(self, bundle: Path) -> list[Path]:
        return install.install_cni(bundle, self.cni_bin, self.source, self.conflist)


CONFLIST = json.dumps({"name": "tartan", "cniVersion": "1.0.0",
                       "plugins": [{"type": "tartan"}, {"type": "tartan-portmap",
                                                        "capabilities": {"portMappings": True}}]})


@pytest.fixture
def node(tmp_path) -> Node:
    node = Node(tmp_path / "node")
    node.source.parent.mkdir(parents=True)
    node.source.write_text(CONFLIST)
    return node


def test_install_cni_places_the_bundle_links_and_conflist(node, tmp_path):
    node.cni_bin.mkdir(parents=True)
    (node.cni_bin / "bridge").write_bytes(b"\x7fELF reference bridge")
    bundle = fake_bundle(tmp_path / "bundle")
    node.install_cni(bundle)
    placed = f"{install.BUNDLE_PREFIX}{install.bundle_hash(bundle)}"
    assert sorted(os.listdir(node.cni_bin)) == sorted([*registry.NAMES, placed, "bridge"])
    for name in registry.NAMES:
        assert os.readlink(node.cni_bin / name) == f"{placed}/tartan-cni"
    assert install.bundle_hash(node.cni_bin / placed) == install.bundle_hash(bundle)
    assert node.conflist.read_text() == CONFLIST
    assert os.listdir(node.conflist.parent) == ["10-tartan.conflist"]


def test_install_cni_again_changes_nothing(node, tmp_path):
    bundle = fake_bundle(tmp_path / "bundle")
    node.install_cni(bundle)
    before = snapshot(node.root)
    node.install_cni(bundle)
    assert snapshot(node.root) == before


def test_a_new_image_replaces_the_old_bundle_and_conflist(node, tmp_path):
    """The bundle the links left stays until install-cni runs again: a plugin call that
    started on it (its modules are loose files, read as it imports them) finishes on it."""
    bundles = [fake_bundle(tmp_path / f"v{i}", f"v{i}") for i in (1, 2, 3)]
    names = [f"{install.BUNDLE_PREFIX}{install.bundle_hash(b)}" for b in bundles]
    node.install_cni(bundles[0])
    node.source.write_text(CONFLIST.replace("1.0.0", "1.1.0"))
    (node.cni_bin / ".tartan-bundle-0123.77.tmp").mkdir()  # a killed init container's copy
    (node.cni_bin / ".tartan-ipam.77.tmp").symlink_to("nowhere")
    node.install_cni(bundles[1])
    assert sorted(os.listdir(node.cni_bin)) == sorted([*registry.NAMES, *names[:2]])
    proc = subprocess.run([node.cni_bin / "tartan"], capture_output=True, text=True,
                          check=True)
    assert proc.stdout == "v2\n"
    assert '"1.1.0"' in node.conflist.read_text()
    node.install_cni(bundles[2])
    assert sorted(os.listdir(node.cni_bin)) == sorted([*registry.NAMES, *names[1:]])
    node.install_cni(bundles[2])  # the same image again: the one before it may go now
    assert sorted(os.listdir(node.cni_bin)) == sorted([*registry.NAMES, names[2]])


def test_files_of_those_names_are_replaced_by_links(node, tmp_path):
    """As flannel's `cp -f`: the DaemonSet owns the names (a copied binary, a make-install
    link into /opt/tartan)."""
    node.cni_bin.mkdir(parents=True)
    (node.cni_bin / "tartan").write_text("an old copy\n")
    (node.cni_bin / "tartan-bridge").symlink_to("../../tartan/tartan-cni")
    node.install_cni(fake_bundle(tmp_path / "bundle"))
    for name in ("tartan", "tartan-bridge"):
        assert os.readlink(node.cni_bin / name).startswith(install.BUNDLE_PREFIX)


@pytest.mark.parametrize("text, says", [
    ("{not json", "Expecting property name"),
    ('{"name": "tartan", "cniVersion": "1.0.0", "plugins": []}', '"plugins" must be'),
    ('{"cniVersion": "1.0.0", "plugins": [{"type": "tartan"}]}', '"name" and "cniVersion"'),
    ('[{"type": "tartan"}]', '"name" and "cniVersion"'),
])
def test_a_bad_configmap_stops_install_cni_before_any_change(node, tmp_path, text, says):
    node.source.write_text(text)
    bundle = fake_bundle(tmp_path / "bundle")
    before = snapshot(node.root)
    proc = subprocess.run([sys.executable, str(PACKAGING / "install.py"), "install-cni",
                           "--bundle", str(bundle), "--cni-bin", str(node.cni_bin),
                           "--conflist-source", str(node.source), "--conflist",
                           str(node.conflist)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1 and says in proc.stderr, proc.stderr
    assert snapshot(node.root) == before


def test_not_a_bundle_is_refused(node, tmp_path):
    with pytest.raises(install.InstallError, match="not a Tartan bundle"):
        node.install_cni(tmp_path)


# --- the image ------------------------------------------------------------------------------


def manifest() -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBE / "kube-tartan.yml").read_text()) if d]


def daemonset_pod() -> dict:
    return next(d for d in manifest() if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]


def configmap_data() -> dict[str, str]:
    return next(d for d in manifest() if d["kind"] == "ConfigMap")["data"]


@dataclass
class Podman:
    """podman configured only by files of its own, its state in `state`, every container's
    cgroups under `cgroup_parent`, no network (nothing on the host's firewall)."""

    state: Path
    cgroup_parent: str

    def write_config(self) -> None:
        for sub in ("root", "runroot", "tmp", "net.d"):
            (self.state / sub).mkdir(parents=True)
        (self.state / "containers.conf").write_text(f"""\
[containers]
default_ulimits = []

[network]
network_backend = "cni"
network_config_dir = "{self.state / 'net.d'}"

[engine]
lock_type = "file"
tmp_dir = "{self.state / 'tmp'}"
events_logger = "file"
cgroup_manager = "cgroupfs"
runtime = "runc"
""")
        (self.state / "storage.conf").write_text(f"""\
[storage]
driver = "overlay"
graphroot = "{self.state / 'root'}"
runroot = "{self.state / 'runroot'}"
""")

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.state / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.state / "storage.conf"),
                "TMPDIR": str(self.state / "tmp")}

    def argv(self, *args: str) -> list[str]:
        assert PODMAN
        return [PODMAN, "--root", str(self.state / "root"), "--runroot",
                str(self.state / "runroot"), "--tmpdir", str(self.state / "tmp"),
                "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
                "--events-backend", "file", *args]

    def __call__(self, *args: str, check: bool = True, timeout: float = 300,
                 stdin: int | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(*args), env=self.env, stdin=stdin, capture_output=True,
                              text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])} ... failed "
                                 f"({proc.returncode}):\n{proc.stderr[-3000:]}{proc.stdout[-2000:]}")
        return proc

    def run(self, image: str, *command: str, volumes: list[str] = (),
            entrypoint: list[str] | None = None) -> subprocess.CompletedProcess:
        args = ["run", "--rm", "--network", "none", "--cgroup-parent", self.cgroup_parent]
        for volume in volumes:
            args += ["--volume", volume]
        if entrypoint is not None:
            args += ["--entrypoint", json.dumps(entrypoint)]
        return self(*args, image, *command, check=False, timeout=120)

    def cgroups(self) -> list[Path]:
        return [d / self.cgroup_parent.lstrip("/") for d in CGROUPS.iterdir()
                if (d / self.cgroup_parent.lstrip("/")).is_dir()]

    def mounts(self) -> list[str]:
        return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4].startswith(str(self.state))]

    def remove(self) -> list[str]:
        """Everything it made goes; returns what could not."""
        self("rmi", "--all", "--force", check=False)
        for mount in reversed(self.mounts()):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.state, ignore_errors=True)
        for cgroup in self.cgroups():
            for path in sorted(cgroup.rglob("*/"), key=lambda p: -len(p.parts)) + [cgroup]:
                if path.is_dir():
                    with contextlib.suppress(OSError):
                        path.rmdir()
        return ([f"mounted: {m}" for m in self.mounts()]
                + [f"cgroup: {c}" for c in self.cgroups()]
                + ([f"left: {self.state}"] if self.state.exists() else []))


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    if not PODMAN or not RUNC:
        pytest.skip("podman and runc are not installed (apt-get install podman runc)")
    if os.geteuid() != 0:
        pytest.skip("needs root: podman builds and runs the image rootful here")
    token = uuid.uuid4().hex[:6]
    # podman refuses a runroot path longer than 50 characters: not under pytest's tmp_path
    state = Path(tempfile.mkdtemp(prefix=f"tki{token}-", dir="/tmp"))
    box = Podman(state, f"/tartan-kube-image-{token}")
    try:
        box.write_config()
        yield box
    finally:
        left = box.remove()
        assert not left, f"the host was not left as found: {left}"


@pytest.fixture(scope="module")
def base_image(podman) -> str:
    """The VM lab's Debian 12 tree (built by debootstrap once and cached), as a local image."""
    try:
        tree, key = vm_image.system(say=print)
    except vm_image.ImageError as exc:
        pytest.skip(f"no Debian 12 tree for a base image: {exc}")
    name = f"localhost/tartan-base:{key}"
    excludes = [f"--exclude={path}" for path in BASE_EXCLUDES]
    tar = subprocess.Popen(["tar", "-C", str(tree), *excludes, "-cf", "-", "."],
                           stdout=subprocess.PIPE)
    try:
        assert tar.stdout is not None
        podman("import", "-", name, stdin=tar.stdout.fileno())
    finally:
        if tar.stdout:
            tar.stdout.close()
        assert tar.wait(timeout=120) == 0
    return name


@pytest.fixture(scope="module")
def tartan_image(podman, base_image, bundle) -> str:
    name = "localhost/tartan:test"
    podman("build", "--network", "none", "--cgroup-parent", podman.cgroup_parent,
           "--file", str(KUBE / "Containerfile"), "--ignorefile", str(KUBE / "containerignore"),
           "--build-arg", f"BASE={base_image}", "--tag", name, str(REPO))
    return name


def as_the_daemonset_mounts(container: dict, host: Path, configmap: Path) -> list[str]:
    """podman --volume for each of the container's mounts: a hostPath from `host`, the
    ConfigMap as a folder of its keys."""
    volumes = {v["name"]: v for v in daemonset_pod()["volumes"]}
    out = []
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            source = host / volume["hostPath"]["path"].lstrip("/")
            source.mkdir(parents=True, exist_ok=True)  # DirectoryOrCreate
            mode = "ro" if mount.get("readOnly") else "rw"
        else:
            assert "configMap" in volume, volume
            source, mode = configmap, "ro"
        out.append(f"{source}:{mount['mountPath']}:{mode}")
    return out


def run_init_container(podman: Podman, image: str, host: Path,
                       configmap: Path) -> subprocess.CompletedProcess:
    init = next(c for c in daemonset_pod()["initContainers"] if c["name"] == "install-cni")
    return podman.run(image, *init["args"], entrypoint=init["command"],
                      volumes=as_the_daemonset_mounts(init, host, configmap))


@pytest.fixture
def configmap(tmp_path) -> Path:
    folder = tmp_path / "configmap"
    folder.mkdir()
    for key, text in configmap_data().items():
        (folder / key).write_text(text)
    return folder


def test_install_cni_writes_exactly_what_the_daemonset_promises(podman, tartan_image, bundle,
                                                                tmp_path, configmap):
    host = tmp_path / "host"
    proc = run_init_container(podman, tartan_image, host, configmap)
    assert proc.returncode == 0, proc.stderr
    net_d, cni_bin = host / "etc/cni/net.d", host / "opt/cni/bin"
    assert os.listdir(net_d) == ["10-tartan.conflist"]
    assert (net_d / "10-tartan.conflist").read_text() == configmap_data()["cni-conf.json"]
    placed = f"{install.BUNDLE_PREFIX}{install.bundle_hash(bundle)}"
    assert sorted(os.listdir(cni_bin)) == sorted([*registry.NAMES, placed])
    assert install.bundle_hash(cni_bin / placed) == install.bundle_hash(bundle)
    for name in registry.NAMES:
        assert os.readlink(cni_bin / name) == f"{placed}/tartan-cni"
        version = subprocess.run([cni_bin / name], env={"CNI_COMMAND": "VERSION"},
                                 capture_output=True, text=True, timeout=30, check=False)
        assert version.returncode == 0, version.stderr
        assert "1.0.0" in json.loads(version.stdout)["supportedVersions"]
    # no agent: the CNI executable execs tartan-full beside it, inside the copied bundle
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
           "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": "eth0", "CNI_PATH": str(cni_bin),
           "TARTAN_CNI_SOCKET": str(tmp_path / "no-agent.sock")}
    fallback = subprocess.run([cni_bin / "tartan-bridge"], input='{"cniVersion": "1.1.0",',
                              env=env, capture_output=True, text=True, timeout=60, check=False)
    assert fallback.returncode == 1 and json.loads(fallback.stdout)["code"] == 6, \
        fallback.stdout + fallback.stderr
    # the init container runs again on every pod restart: nothing changes
    before = snapshot(host)
    again = run_init_container(podman, tartan_image, host, configmap)
    assert again.returncode == 0, again.stderr
    assert snapshot(host) == before


def test_the_image_runs_tartand_and_has_what_it_runs(podman, tartan_image):
    main = next(c for c in daemonset_pod()["containers"] if c["name"] == "kube-tartan")
    proc = podman.run(tartan_image, *main["command"], "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: tartand"), proc.stderr
    ctl = podman.run(tartan_image, "/usr/local/bin/tartanctl", "--help")
    assert ctl.returncode == 0, ctl.stderr
    tools = podman.run(tartan_image, "/usr/bin/which", "iptables-restore", "iptables-save",
                       "ipset", "modprobe", "python3")
    assert tools.returncode == 0 and len(tools.stdout.split()) == 5, tools.stdout


def test_the_images_tartand_knows_the_daemonsets_flags(podman, tartan_image):
    """The bundle in the image, not only the source: a stale `make bundle` shows here."""
    main = next(c for c in daemonset_pod()["containers"] if c["name"] == "kube-tartan")
    help_text = podman.run(tartan_image, *main["command"], "--help").stdout
    missing = [arg for arg in main["args"] if arg.startswith("--") and arg not in help_text]
    assert not missing, f"the image's tartand --help has no {missing}"
