"""A lab never touches the host: up/down leaves it exactly as before, also after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from lab_env import VENV_BIN, HostSnapshot, down_clean, lab_name, lab_namespaces, sh

from tartan.debug import lab_state
from tartan.debug.lab import Lab, UpOptions
from tartan.debug.lab_state import NODE_MOUNTS
from tartan.debug.lab_sys import LabError, Sys, in_node

pytestmark = pytest.mark.kernel


def tartanctl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "tartanctl"), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def node_ls(holder: int, path: str) -> list[str]:
    return sh(*in_node(holder, ["ls", "-A", path])).split()


def assert_isolated(name: str, before: HostSnapshot) -> None:
    """While the lab is up: the host's network and mounts are untouched, the nodes' not."""
    during = HostSnapshot.take()
    for key in ("links", "addresses", "routes", "rules", "iptables", "ip_forward", "mounts"):
        assert during.parts[key] == before.parts[key], f"the lab changed the host's {key}"
    for _, target in NODE_MOUNTS:  # only /run/tartan may have been created, empty
        now, then = during.parts["paths"][target], before.parts["paths"][target]
        assert now == then or (target == "/run/tartan" and then == "missing" and now == ""), (
            f"{target} on the host: {then!r} before the lab, {now!r} while it is up")
    router = sh("ip", "-n", f"{name}-router", "route", "show")
    assert "default" not in router and "10.244." not in router  # nothing routed out
    state = lab_state.load(name)
    for node in state.nodes:
        assert "subnet.env" in node_ls(node.holder_pid, "/run/tartan")
        assert "tartan" in node_ls(node.holder_pid, "/var/lib/cni")
        assert "eth0" in node_ls(node.holder_pid, "/sys/class/net")


def assert_not_pinned(name: str, foreign: str) -> None:
    """A namespace deleted on the host also goes from the nodes' mount namespaces."""
    sh("ip", "netns", "del", foreign)
    for node in lab_state.load(name).nodes:
        assert foreign not in Path(f"/proc/{node.holder_pid}/mountinfo").read_text()


def test_up_and_down_leave_the_host_exactly_as_before():
    name = lab_name()
    foreign = f"{name}other"
    sh("ip", "netns", "add", foreign)
    before = HostSnapshot.take()
    try:
        up = tartanctl("lab", "up", "--nodes", "2", "--pods-per-node", "1", "--name", name)
        assert up.returncode == 0, up.stdout + up.stderr
        assert_isolated(name, before)
        assert_not_pinned(name, foreign)
        status = tartanctl("lab", "status", "--name", name)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count(" yes ") == 2
    finally:
        down = tartanctl("lab", "down", "--name", name)
        sh("ip", "netns", "del", foreign, check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not lab_namespaces(name)
    assert not before.differences(HostSnapshot.take())
    again = tartanctl("lab", "down", "--name", name)
    assert (again.returncode, again.stdout) == (0, f"lab {name}: nothing to remove\n")


def test_demo_runs_up_status_ping_matrix_and_always_down():
    name = lab_name()
    before = HostSnapshot.take()
    try:
        demo = tartanctl("lab", "demo", "--nodes", "2", "--pods-per-node", "1", "--name", name)
    finally:
        Lab(name, say=lambda line: None).down()
    assert demo.returncode == 0, demo.stdout + demo.stderr
    for expected in ("---- tartanctl lab status", "leases in the store (2)", "all 2 pairs ok",
                     "---- tartan-portmap ADD: hostPort 30080", "(answered by office/laptop)",
                     f"lab {name} removed", "lab demo: done"):
        assert expected in demo.stdout
    assert not before.differences(HostSnapshot.take())


class TartandFails(Sys):
    """Starting tartand fails: `up` stops half-way, with the underlay and store made."""

    def spawn(self, argv, log=None, env=None):
        if any(a.endswith("/tartand") for a in argv):
            raise LabError("injected: tartand cannot start")
        return super().spawn(argv, log, env)


def test_down_after_a_crash_half_way_through_up():
    name = lab_name()
    before = HostSnapshot.take()
    lab = Lab(name, sys=TartandFails(), say=lambda line: None)
    try:
        with pytest.raises(LabError, match="injected"):
            lab.up(UpOptions(nodes=2, store="etcd", pods_per_node=1))
        state = lab_state.load(name)
        assert len(state.nodes) == 2 and state.etcd_pid
        os.kill(state.nodes[0].holder_pid, signal.SIGKILL)  # a holder died too
        lab_state.state_path(name).unlink()  # and the state file is lost
    finally:
        down_clean(Lab(name, say=lambda line: None))
    assert not before.differences(HostSnapshot.take())


class HostUsesTheRange(Sys):
    """The host has a route into the lab's underlay."""

    def run(self, argv, **kw):
        if argv[:4] == ["ip", "-j", "-4", "route"]:
            route = {"dst": "198.18.0.0/16", "dev": "eth9"}
            return subprocess.CompletedProcess(argv, 0, json.dumps([route]), "")
        return super().run(argv, **kw)


def test_up_refuses_ranges_the_host_uses_and_creates_nothing():
    name = lab_name()
    before = HostSnapshot.take()
    lab = Lab(name, sys=HostUsesTheRange(), say=lambda line: None)
    with pytest.raises(LabError, match="198.18.1.0/24 overlaps the host's route to "
                                       "198.18.0.0/16 .dev eth9."):
        lab.up(UpOptions())
    assert not lab.made_something and not lab_namespaces(name)
    assert not before.differences(HostSnapshot.take())
