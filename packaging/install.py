"""Install the bundle the way operators install CNI plugins, and take it away again.

    install.py install --bundle dist/tartan [--destdir DIR]
    install.py uninstall [--destdir DIR]
    install.py install-cni [--bundle /opt/tartan] [--cni-bin DIR] [--conflist-source FILE]

install puts the bundle in /opt/tartan/, links the CNI names in /opt/cni/bin to its small
CNI executable and the commands in /usr/local/bin to its full one, adds the systemd unit
for tartand and, each only when no file of that name exists, the default
/etc/cni/net.d/10-tartan.conflist and tartand's /etc/tartan/net-conf.json (10.244.0.0/16,
vxlan; the unit passes it with --net-config). Every path it creates (directories included)
is recorded in /opt/tartan/.installed, and uninstall removes exactly those, newest first: a
directory only when it is empty again, a link only while it still points into the bundle, a
config file only while it still has the content install wrote (an operator's edit is kept).

Installing over an earlier install of this script replaces it (an upgrade). An existing
/opt/tartan or link name that is not its own is an error, and nothing is changed; an existing
unit, conflist or net-conf.json is kept (and recorded as kept).
Links are relative, so a tree staged under --destdir works where it is and once copied to /.

install-cni is what the Kubernetes DaemonSet's init container runs (packaging/kubernetes/):
the node has no /opt/tartan, so the bundle itself goes into the CNI folder, as
/opt/cni/bin/tartan-bundle-<hash of its content>/, the CNI names become links into it, and the
conflist from the ConfigMap replaces /etc/cni/net.d/10-tartan.conflist; each step atomic
(a rename), the conflist last, so a runtime never sees a config whose plugins are not there
yet. The bundle the links named before stays until install-cni runs again (a plugin call
that started on it finishes on it); older ones, and half-made copies, are removed. A run
with the image already in place changes nothing else.

Standard library only: uninstall must run without the venv or the bundle.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent


def _from_source(name: str, relative: str) -> ModuleType:
    """A Tartan module that imports only the standard library, loaded from the source tree
    (install and uninstall run without the venv)."""
    spec = importlib.util.spec_from_file_location(name, HERE.parent / relative)
    assert spec is not None and spec.loader is not None, relative
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REGISTRY = _from_source("tartan_registry", "cni/registry.py")  # the CNI names
FILES = _from_source("tartan_files", "kernel/files.py")  # write_atomic


BUNDLE_DIR = "/opt/tartan"
MANIFEST = f"{BUNDLE_DIR}/.installed"
CNI_BIN = "/opt/cni/bin"
COMMAND_BIN = "/usr/local/bin"
UNIT = "/etc/systemd/system/tartand.service"
CONFLIST = "/etc/cni/net.d/10-tartan.conflist"
NET_CONF = "/etc/tartan/net-conf.json"  # the unit's --net-config

CNI_EXE = "tartan-cni"
FULL_EXE = "tartan-full"
LINKS = {
    **{f"{CNI_BIN}/{name}": f"{BUNDLE_DIR}/{CNI_EXE}"
       for name in REGISTRY.NAMES},
    **{f"{COMMAND_BIN}/{name}": f"{BUNDLE_DIR}/{FULL_EXE}" for name in ("tartand", "tartanctl")},
}
# Config files (installed path, source in packaging/): written only where none exists.
CONFIGS = ((UNIT, "tartand.service"), (CONFLIST, "10-tartan.conflist"),
           (NET_CONF, "net-conf.json"))
UNIT_NAME = "tartand.service"


class InstallError(Exception):
    """Stops install or uninstall with one line; nothing is left half-done."""


@dataclass
class Manifest:
    """What one install created, in creation order: {path, kind[, target | sha256]}."""

    entries: list[dict] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # files that existed and were left alone

    def add(self, path: str, kind: str, **extra: str) -> None:
        self.entries.append({"path": path, "kind": kind, **extra})

    def dump(self) -> str:
        return json.dumps({"version": 1, "created": self.entries, "kept": self.kept},
                          indent=1) + "\n"

    @classmethod
    def load(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("version") != 1:
            raise InstallError(f"{MANIFEST}: unknown manifest version {data.get('version')!r}")
        return cls(list(data["created"]), list(data.get("kept", [])))

    def owns(self, path: str) -> bool:
        return any(entry["path"] == path for entry in self.entries)


class Root:
    """The tree install writes into: / or a staging directory (DESTDIR)."""

    def __init__(self, destdir: str) -> None:
        self.base = Path(destdir or "/").resolve()

    def __call__(self, path: str) -> Path:
        return self.base / path.lstrip("/")

    def relative_link(self, link: str, target: str) -> str:
        """Link text for `link` -> `target` that holds wherever the tree is mounted; taken
        from the link's real directory, so a symlinked /opt/cni/bin works too."""
        return os.path.relpath(self(target), os.path.realpath(self(link).parent))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def systemd_running(root: Root) -> bool:
    return root.base == Path("/") and Path("/run/systemd/system").is_dir()


def systemctl(*args: str) -> None:
    """Best effort: a host without systemd, or a unit systemd does not know, is not an error."""
    try:
        proc = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"note: systemctl {' '.join(args)}: {exc}", file=sys.stderr)
        return
    if proc.returncode != 0:
        print(f"note: systemctl {' '.join(args)}: {proc.stderr.strip()}", file=sys.stderr)


# --- install --------------------------------------------------------------------------------


def make_dirs(root: Root, path: str, manifest: Manifest) -> None:
    """mkdir -p, recording each directory that did not exist."""
    missing = []
    current = Path(path)
    while not root(str(current)).exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        root(str(directory)).mkdir(mode=0o755)
        manifest.add(str(directory), "dir")


def conflicts(root: Root, previous: Manifest | None) -> list[str]:
    """Names install would create that exist and are not its own."""
    found = []
    for path in [*LINKS, BUNDLE_DIR]:
        if os.path.lexists(root(path)) and not (previous and previous.owns(path)):
            found.append(path)
    return found


def copy_bundle(root: Root, bundle: Path, manifest: Manifest) -> None:
    for exe in (CNI_EXE, FULL_EXE):
        if not (bundle / exe).is_file():
            raise InstallError(f"{bundle} has no {exe}: build it with `make bundle`")
    make_dirs(root, str(Path(BUNDLE_DIR).parent), manifest)
    shutil.copytree(bundle, root(BUNDLE_DIR), symlinks=True)
    root(BUNDLE_DIR).chmod(0o755)
    manifest.add(BUNDLE_DIR, "tree")


def make_links(root: Root, manifest: Manifest) -> None:
    for link, target in LINKS.items():
        make_dirs(root, str(Path(link).parent), manifest)
        text = root.relative_link(link, target)
        os.symlink(text, root(link))
        manifest.add(link, "link", target=text)


def write_configs(root: Root, manifest: Manifest) -> None:
    for path, source in CONFIGS:
        if os.path.lexists(root(path)):
            manifest.kept.append(path)
            print(f"kept {path}: it exists", file=sys.stderr)
            continue
        make_dirs(root, str(Path(path).parent), manifest)
        # whole or not at all: a half-written file would be "kept" by the next install
        FILES.write_atomic(root(path), (HERE / source).read_bytes(), mode=0o644)
        manifest.add(path, "file", sha256=sha256(root(path)))


def install(root: Root, bundle: Path) -> Manifest:
    previous = read_manifest(root)
    found = conflicts(root, previous)
    if found:
        raise InstallError(f"not installing over files that are not Tartan's: "
                           f"{', '.join(found)} (remove them, or run make uninstall first)")
    if previous is not None:
        remove(root, previous)  # an upgrade: the old install goes first, exactly
    root.base.mkdir(parents=True, exist_ok=True)
    manifest = Manifest()
    try:
        copy_bundle(root, bundle, manifest)
        make_links(root, manifest)
        write_configs(root, manifest)
        FILES.write_atomic(root(MANIFEST), manifest.dump())
    except BaseException:
        remove(root, manifest)  # undo what this attempt made
        raise
    if systemd_running(root):
        systemctl("daemon-reload")
        if previous is not None:
            systemctl("try-restart", UNIT_NAME)  # a running agent moves to the new bundle
    return manifest


# --- uninstall ------------------------------------------------------------------------------


def read_manifest(root: Root) -> Manifest | None:
    try:
        return Manifest.load(root(MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise InstallError(f"{root(MANIFEST)} is unreadable ({exc}); remove by hand") from None


def remove_entry(root: Root, entry: dict) -> str | None:
    """Remove one recorded path; returns why it was left in place, or None."""
    path, kind = root(entry["path"]), entry["kind"]
    if kind == "link":
        if not path.is_symlink():
            return None if not os.path.lexists(path) else "no longer Tartan's link"
        if os.readlink(path) != entry["target"]:
            return "now points elsewhere"
        path.unlink()
    elif kind == "file":
        if not path.exists():
            return None
        if sha256(path) != entry["sha256"]:
            return "edited since install"
        path.unlink()
    elif kind == "tree":
        shutil.rmtree(path, ignore_errors=True)
    elif kind == "dir":
        try:
            path.rmdir()
        except FileNotFoundError:
            return None
        except OSError:
            return "not empty"
    return None


def remove(root: Root, manifest: Manifest) -> list[str]:
    """Remove what `manifest` lists, newest first; returns what was left in place, and why."""
    left = []
    for entry in reversed(manifest.entries):
        why = remove_entry(root, entry)
        if why:
            left.append(f"{entry['path']} ({why})")
    return left


def uninstall(root: Root) -> list[str]:
    manifest = read_manifest(root)
    if manifest is None:
        print(f"nothing to uninstall: no {root(MANIFEST)}", file=sys.stderr)
        return []
    service = manifest.owns(UNIT) and systemd_running(root)
    if service:
        systemctl("disable", "--now", UNIT_NAME)  # also drops an operator's enable links
    left = remove(root, manifest)
    if service:
        systemctl("daemon-reload")
    for line in left:
        print(f"left {line}", file=sys.stderr)
    return left


# --- install-cni (the DaemonSet's init container) -------------------------------------------

BUNDLE_PREFIX = "tartan-bundle-"  # /opt/cni/bin/tartan-bundle-<hash>/, what the links name
KUBE_CONFLIST_SOURCE = "/etc/kube-tartan/cni-conf.json"  # the ConfigMap's key, mounted


def bundle_hash(bundle: Path) -> str:
    """The bundle's content (names, modes, bytes, link targets): the same image, the same
    hash, so a restarted init container finds its copy in place."""
    digest = hashlib.sha256()
    for path in sorted(bundle.rglob("*")):
        digest.update(str(path.relative_to(bundle)).encode() + b"\0")
        if path.is_symlink():
            digest.update(b"link\0" + os.readlink(path).encode())
        elif path.is_file():
            digest.update(oct(path.stat().st_mode & 0o777).encode() + b"\0")
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def read_conflist(source: Path) -> str:
    """The conflist's text, once it parses as one (a typo in the ConfigMap stops here, with
    the host's config untouched)."""
    try:
        text = source.read_text()
        conf = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InstallError(f"{source}: {exc}") from None
    plugins = conf.get("plugins") if isinstance(conf, dict) else None
    if not isinstance(conf, dict) or not isinstance(conf.get("name"), str) \
            or not isinstance(conf.get("cniVersion"), str):
        raise InstallError(f"{source}: a conflist needs \"name\" and \"cniVersion\" strings")
    if not isinstance(plugins, list) or not plugins or \
            not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins):
        raise InstallError(f"{source}: \"plugins\" must be a non-empty list of objects "
                           f"with a \"type\"")
    return text


def place_bundle(bundle: Path, cni_bin: Path) -> Path:
    """The bundle copied to cni_bin/tartan-bundle-<hash>/ unless it is there already; the
    copy is made under a temporary name and renamed, so the folder is whole or absent."""
    for exe in (CNI_EXE, FULL_EXE):
        if not (bundle / exe).is_file():
            raise InstallError(f"{bundle} has no {exe}: not a Tartan bundle")
    target = cni_bin / f"{BUNDLE_PREFIX}{bundle_hash(bundle)}"
    if target.is_dir():
        return target
    temp = cni_bin / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(temp, ignore_errors=True)
    try:
        shutil.copytree(bundle, temp, symlinks=True)
        temp.chmod(0o755)
        temp.rename(target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return target


def link_atomic(link: Path, text: str) -> None:
    """`link` -> `text`, replacing whatever link or file had the name, in one rename."""
    if link.is_symlink() and os.readlink(link) == text:
        return
    if link.is_dir() and not link.is_symlink():
        raise InstallError(f"{link} is a folder: remove it, then restart the pod")
    temp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    os.symlink(text, temp)
    try:
        os.replace(temp, link)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def linked_bundle(cni_bin: Path) -> str | None:
    """The bundle folder the node plugin's link names now (before an upgrade moves it)."""
    link = cni_bin / REGISTRY.NODE_PLUGIN
    if not link.is_symlink():
        return None
    top = os.readlink(link).split("/", 1)[0]
    return top if top.startswith(BUNDLE_PREFIX) else None


def prune_bundles(cni_bin: Path, keep: set[str]) -> None:
    """Older images' bundles, and what a killed init container left half-made (a bundle
    copy or a link under a temporary name)."""
    for path in cni_bin.iterdir():
        name = path.name
        leftover = name.startswith(".tartan") and name.endswith(".tmp")
        if name in keep or not (leftover or name.startswith(BUNDLE_PREFIX)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def install_cni(bundle: Path, cni_bin: Path, source: Path, conflist: Path) -> list[Path]:
    """What the init container does; returns the paths it wrote (or found right)."""
    text = read_conflist(source)  # before anything changes on the host
    cni_bin.mkdir(parents=True, exist_ok=True)
    previous = linked_bundle(cni_bin)
    placed = place_bundle(bundle, cni_bin)
    links = [cni_bin / name for name in REGISTRY.NAMES]
    for link in links:
        link_atomic(link, f"{placed.name}/{CNI_EXE}")
    prune_bundles(cni_bin, keep={placed.name, previous or placed.name})
    conflist.parent.mkdir(parents=True, exist_ok=True)
    if not conflist.is_file() or conflist.read_text(errors="replace") != text:
        FILES.write_atomic(conflist, text, mode=0o644)
    return [placed, *links, conflist]


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="install.py", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("install", "uninstall", "install-cni"))
    p.add_argument("--bundle", type=Path,
                   help="the built onedir bundle (default: dist/tartan; for install-cni, "
                   f"the image's {BUNDLE_DIR})")
    p.add_argument("--destdir", default=os.environ.get("DESTDIR", ""),
                   help="staging root (default: $DESTDIR, else /)")
    p.add_argument("--cni-bin", type=Path, default=Path(CNI_BIN),
                   help=f"install-cni: the host's CNI folder, mounted (default: {CNI_BIN})")
    p.add_argument("--conflist-source", type=Path, default=Path(KUBE_CONFLIST_SOURCE),
                   help="install-cni: the conflist to install (default: "
                   f"{KUBE_CONFLIST_SOURCE}, the ConfigMap's cni-conf.json)")
    p.add_argument("--conflist", type=Path, default=Path(CONFLIST),
                   help=f"install-cni: where it goes (default: {CONFLIST})")
    args = p.parse_args(argv)
    if args.bundle is None:
        args.bundle = Path(BUNDLE_DIR if args.action == "install-cni" else "dist/tartan")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Root(args.destdir)
    try:
        if args.action == "install":
            manifest = install(root, args.bundle.resolve())
            print(f"installed {len(manifest.entries)} paths under {root.base} "
                  f"(record: {MANIFEST})")
        elif args.action == "install-cni":
            for path in install_cni(args.bundle, args.cni_bin, args.conflist_source,
                                    args.conflist):
                print(f"installed {path}")
        else:
            uninstall(root)
    except (InstallError, OSError) as exc:
        print(f"install.py {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
