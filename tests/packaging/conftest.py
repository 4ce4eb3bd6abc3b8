"""The bundle, built once per session (`make bundle` rebuilds only when sources changed), and
installed into a staging root (DESTDIR) that is removed at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from bundle_kit import REPO, Staged, install_py, make


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "host: installs into the real host's paths (root) and uninstalls again")


@pytest.fixture(scope="session")
def bundle() -> Path:
    """dist/tartan, up to date with the sources."""
    proc = make("bundle")
    assert proc.returncode == 0, f"make bundle failed:\n{proc.stdout[-3000:]}"
    path = REPO / "dist" / "tartan"
    assert (path / "tartan-cni").is_file() and (path / "tartan-full").is_file()
    return path


@pytest.fixture(scope="session")
def staged(bundle, tmp_path_factory) -> Iterator[Staged]:
    """The bundle installed under a DESTDIR, as `make install` lays it out."""
    root = tmp_path_factory.mktemp("destdir")
    proc = install_py("install", root, bundle)
    assert proc.returncode == 0, proc.stderr
    try:
        yield Staged(root)
    finally:
        install_py("uninstall", root)


@pytest.fixture
def no_agent(tmp_path) -> dict[str, str]:
    """Environment that makes sure no agent answers: the CNI executable falls back."""
    return {"TARTAN_CNI_SOCKET": str(tmp_path / "no-agent.sock")}
