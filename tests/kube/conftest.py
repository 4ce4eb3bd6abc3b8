"""The test Kubernetes API server (tests/kube_api_server.py) and the official client on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_api_server import KubeApiServer

from tartan.ipam.kube_client import KubeApi, connect


@pytest.fixture
def api_server() -> Iterator[KubeApiServer]:
    server = KubeApiServer(bookmark_interval=0.2).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kubeconfig(api_server: KubeApiServer, tmp_path: Path) -> Path:
    return api_server.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kube(kubeconfig: Path) -> Iterator[KubeApi]:
    api = connect(str(kubeconfig), None)
    try:
        yield api
    finally:
        api.close()
