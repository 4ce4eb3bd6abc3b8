"""Fixtures: two CRI nodes per module (cri_node.py), one with tartand up and one without,
and `cri`, one test's view of a node and a network on it, which removes the pods the test
left and fails the test when anything of its pods stays behind.

The machinery lives in importable modules (the tests and bench/cri.py use them; a conftest
is not importable): cri_proto.py (the CRI messages from cri_api.proto, the gRPC client),
pause_image.py (the sandbox image), containerd_env.py (containerd, sandbox configs),
cri_node.py (the node: namespace, plugins, conflists, tartand, pods) and cri_teardown.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from containerd_env import DEFAULT_HANDLER, CriError, Pod, missing_tools
from cri_node import (
    BUSYBOX_MISSING,
    REFERENCE_HANDLER,
    CriNode,
    install_plugins,
    uninstall_plugins,
)
from cri_teardown import leftovers, take_down

from harness import eventually

# kind -> (node fixture, CRI runtime handler)
KINDS = {
    "tartan-agent": ("agent_node", DEFAULT_HANDLER),
    "tartan-fallback": ("fallback_node", DEFAULT_HANDLER),
    "reference": ("fallback_node", REFERENCE_HANDLER),
}


@pytest.fixture(scope="module")
def cni_bin(tmp_path_factory) -> Iterator[Path]:
    """The bundle installed under a DESTDIR with the reference plugins beside it, once for
    both nodes."""
    missing = missing_tools() + BUSYBOX_MISSING
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed "
                    "(apt-get install containerd runc busybox-static)")
    assert os.geteuid() == 0, "CRI tests need root: containerd runs as root"
    destdir = tmp_path_factory.mktemp("cri-destdir")
    try:
        yield install_plugins(destdir)
    finally:
        uninstall_plugins(destdir)


def _node(tmp_path_factory: pytest.TempPathFactory, staged: Path,
          agent: bool) -> Iterator[CriNode]:
    node = CriNode(tmp_path_factory.mktemp("cri-agent" if agent else "cri-fallback"), agent,
                   staged=staged)
    try:
        node.up()
        yield node
    finally:
        problems = take_down(node)
        left = leftovers(node)
        if problems or left:
            pytest.fail("the CRI node was not removed cleanly:\n  "
                        + "\n  ".join(problems + [f"still there: {x}" for x in left]))


@pytest.fixture(scope="module")
def agent_node(tmp_path_factory, cni_bin) -> Iterator[CriNode]:
    """containerd + the installed bundle + the bundle's tartand on the node's socket."""
    yield from _node(tmp_path_factory, cni_bin, agent=True)


@pytest.fixture(scope="module")
def fallback_node(tmp_path_factory, cni_bin) -> Iterator[CriNode]:
    """containerd + the installed bundle, no agent: every plugin call runs in-process."""
    yield from _node(tmp_path_factory, cni_bin, agent=False)


@dataclass
class Cri:
    """One test on one node and network: the pods it ran, and what to check they left."""

    kind: str
    node: CriNode
    handler: str
    started: list[Pod] = field(default_factory=list)

    @property
    def client(self):
        assert self.node.containerd is not None
        return self.node.containerd.client()

    @property
    def gateway(self):
        return self.node.gateway(self.handler)

    def run_pod(self, name: str, ports: tuple[tuple[str, int, int], ...] = ()) -> Pod:
        pod = self.node.run_pod(f"{name}-{self.kind}", handler=self.handler, ports=ports)
        self.started.append(pod)
        return pod

    def remove(self, *pods: Pod) -> None:
        for pod in pods:
            self.node.remove_pod(pod)

    def assert_gone(self, *pods: Pod) -> None:
        """Nothing of `pods` on the node: sandbox, netns, veth, reservation, rules, chains,
        CNI cache, shim socket, mounts."""
        listed = set(self.node.sandbox_ids())
        assert [p.id for p in pods if p.id in listed] == [], "RemovePodSandbox kept them"
        assert [x for p in pods for x in self.node.left_of(p)] == []
        # tartand deletes a pod's veth pair right after it answered DEL (README).
        eventually(lambda: self.node.bridge_ports(self.handler) == [], 10,
                   what=lambda: f"veths on the bridge: {self.node.bridge_ports(self.handler)}")
        assert self.node.pod_chains() == []


def _cri(request: pytest.FixtureRequest, kind: str) -> Iterator[Cri]:
    fixture, handler = KINDS[kind]
    cri = Cri(kind, request.getfixturevalue(fixture), handler)
    yield cri
    problems = []
    for pod in cri.started:
        try:
            cri.node.remove_pod(pod)
        except CriError as exc:
            if exc.code.name != "NOT_FOUND":
                problems.append(f"removing {pod.name}: {exc}")
    left = [f"{p.name}: {x}" for p in cri.started for x in cri.node.left_of(p)]
    if problems or left:
        pytest.fail("the test's pods were not removed cleanly:\n  " + "\n  ".join(
            problems + left))


@pytest.fixture(params=list(KINDS))
def cri(request) -> Iterator[Cri]:
    """Tartan with tartand up, Tartan with it down, and the reference plugins (the baseline
    that proves the test and the setup)."""
    yield from _cri(request, request.param)


@pytest.fixture(params=[k for k in KINDS if k.startswith("tartan")])
def tartan_cri(request) -> Iterator[Cri]:
    yield from _cri(request, request.param)

