"""The VM lab's tests: they need root, qemu, debootstrap and the bundle (`make bundle`).
The image is built once per input and cached (vagrant/vmlab/image.py)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "vagrant"))

from vmlab import image, machines  # noqa: E402


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root"
    tools = [t for t in ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4", "ssh")
             if shutil.which(t) is None]
    if tools:
        return f"{', '.join(tools)} not installed: run `make deps`"
    if not (ROOT / "dist/tartan/tartan-full").exists():
        return "no bundle: run `make bundle`"
    return ""


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    if not reason:
        return
    for item in items:
        if "tests/vm/" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def vm_image() -> Iterator[image.Image]:
    for name in machines.labs():  # left by a run that was killed before its finalizers
        machines.down_named(name)
    yield image.build(ROOT / "dist/tartan", ROOT, say=print)
    # nothing of a VM lab is left: every lab a test made was taken down by its fixture
    assert not machines.labs(), f"VM labs left behind: {machines.labs()}"
