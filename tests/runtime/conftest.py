"""The `podman_net` fixture: podman + a network of the test's own, the host left as found.

The machinery lives in podman_env.py (importable by the tests, unlike a conftest).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from podman_env import PLUGINS, PODMAN, RUNC, TRACE, HostSnapshot, PodmanNet, free_subnet

from harness import REFERENCE_CNI, plugin_dir


@pytest.fixture(params=sorted(PLUGINS), ids=sorted(PLUGINS))
def podman_net(request, tmp_path: Path) -> Iterator[PodmanNet]:
    """podman + a network of the test's own on the reference or the Tartan plugins."""
    if not PODMAN or not RUNC:
        missing = " and ".join(n for n, p in (("podman", PODMAN), ("runc", RUNC)) if not p)
        pytest.skip(f"{missing} not installed (apt-get install podman runc)")
    assert os.geteuid() == 0, "runtime tests need root: podman's CNI backend runs as root"
    token = uuid.uuid4().hex[:6]
    net = PodmanNet(
        kind=request.param,
        tmp=tmp_path,
        name=f"tpm{token}",
        subnet=free_subnet(),
        snapshot=HostSnapshot.take(),
        cgroup_parent=f"/tartan-rt-{token}",
        state=Path(tempfile.mkdtemp(prefix=f"tpm{token}-", dir="/tmp")),
        plugin_dirs=[str(plugin_dir()), str(REFERENCE_CNI)],
    )
    try:
        if TRACE:
            net.install_trace_shims()
        net.write_config()
        net.check_network_loaded()
        yield net
    finally:
        problems = net.cleanup()
        left = net.leftovers()
        if problems or left:
            pytest.fail("the host was not left as found:\n  "
                        + "\n  ".join(problems + [f"still there: {x}" for x in left]))
