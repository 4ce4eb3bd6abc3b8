"""Shared fixtures (the helpers themselves live in harness.py, importable by every test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Netns, make_netns, remove_netns, unique


@pytest.fixture
def netns_factory() -> Iterator:
    """Make namespaces by calling the factory; all are deleted when the test ends."""
    made: list[str] = []

    def factory(prefix: str = "tt") -> Netns:
        name = unique(prefix)
        made.append(name)
        return make_netns(name)

    try:
        yield factory
    finally:
        for name in made:
            remove_netns(name)


@pytest.fixture
def host_ns(netns_factory) -> Netns:
    """A namespace that stands in for the node: plugins run inside it."""
    return netns_factory("th")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "cni-networks"
    path.mkdir()
    return path


