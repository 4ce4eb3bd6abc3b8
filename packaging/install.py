"""Install the bundle the way operators install CNI plugins, and take it away again.

    install.py install --bundle dist/tartan [--destdir DIR]
    install.py uninstall [--destdir DIR]

install puts the bundle in /opt/tartan/, links the CNI names in /opt/cni/bin to its small
CNI executable and the commands in /usr/local/bin to its full one, adds the systemd unit
for tartand and, only when no file of that name exists, the default
/etc/cni/net.d/10-tartan.conflist. Every path it creates (directories included) is recorded
in /opt/tartan/.installed, and uninstall removes exactly those, newest first: a directory
only when it is empty again, a link only while it still points into the bundle, a config
file only while it still has the content install wrote (an operator's edit is kept).

Installing over an earlier install of this script replaces it (an upgrade). An existing
/opt/tartan or link name that is not its own is an error, and nothing is changed; an existing
unit or conflist is kept (and recorded as kept).
Links are relative, so a tree staged under --destdir works where it is and once copied to /.
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

CNI_EXE = "tartan-cni"
FULL_EXE = "tartan-full"
LINKS = {
    **{f"{CNI_BIN}/{name}": f"{BUNDLE_DIR}/{CNI_EXE}"
       for name in REGISTRY.NAMES},
    **{f"{COMMAND_BIN}/{name}": f"{BUNDLE_DIR}/{FULL_EXE}" for name in ("tartand", "tartanctl")},
}
# Config files (installed path, source in packaging/): written only where none exists.
CONFIGS = ((UNIT, "tartand.service"), (CONFLIST, "10-tartan.conflist"))
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
        shutil.copyfile(HERE / source, root(path))
        root(path).chmod(0o644)
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


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="install.py", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("install", "uninstall"))
    p.add_argument("--bundle", type=Path, default=Path("dist/tartan"),
                   help="the built onedir bundle (default: dist/tartan)")
    p.add_argument("--destdir", default=os.environ.get("DESTDIR", ""),
                   help="staging root (default: $DESTDIR, else /)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Root(args.destdir)
    try:
        if args.action == "install":
            manifest = install(root, args.bundle.resolve())
            print(f"installed {len(manifest.entries)} paths under {root.base} "
                  f"(record: {MANIFEST})")
        else:
            uninstall(root)
    except (InstallError, OSError) as exc:
        print(f"install.py {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
