"""`tartanctl lab capture` on a 2-node lab, VXLAN and host-gw: a ping between pods of two
nodes seen at every hop in the path's order, VXLAN decoded with the lab's VNI, the file read
back by tcpdump and tshark with the hops' names, a filter that narrows it, Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_env import VENV_BIN, ctl, down_clean, lab_name

from tartan.debug.lab import Lab, UpOptions

pytestmark = pytest.mark.kernel

OUT = ["pod", "veth", "bridge", "vxlan", "uplink"]  # a node's hops, from its pod outwards


def path(backend: str) -> list[tuple[str, str]]:
    """(hop, direction) of one echo request from node1's pod to node2's, then its reply."""
    mine = [h for h in OUT if backend == "vxlan" or h != "vxlan"]
    leaving = [(h, "in" if h in ("veth", "bridge") else "out") for h in mine]
    arriving = [(h, "out" if h in ("veth", "bridge") else "in") for h in reversed(mine)]
    request = [(f"node1/{h}", d) for h, d in leaving] + [(f"node2/{h}", d) for h, d in arriving]
    reply = [(f"node2/{h}", d) for h, d in leaving] + [(f"node1/{h}", d) for h, d in arriving]
    return request + reply


@pytest.fixture(scope="module", params=["vxlan", "host-gw"])
def lab(request) -> Iterator[Lab]:
    lab = Lab(lab_name(), say=print)
    try:
        lab.up(UpOptions(request.param, "sqlite", nodes=2, pods_per_node=1))
        yield lab
    finally:
        down_clean(lab)


def pods(lab: Lab):
    state = lab.load()
    return state.pods_of("node1")[0], state.pods_of("node2")[0]


def capture_while_pinging(lab: Lab, *args: str, pings: int = 1,
                          stop: bool = False) -> subprocess.CompletedProcess:
    """Start a capture, ping node2's pod from node1's once it listens, and wait for it (or
    Ctrl-C it, with `stop`)."""
    src, dst = pods(lab)
    capture = subprocess.Popen([str(VENV_BIN / "tartanctl"), "lab", "capture", "--name",
                                lab.name, src.key, "--to", dst.key, *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert capture.stderr is not None
    first = capture.stderr.readline()
    assert first.startswith("capture: listening on node1/pod"), first
    subprocess.run(["ip", "netns", "exec", src.netns, "ping", "-c", str(pings), "-i", "0.2",
                    "-W", "1", dst.ip], check=True, capture_output=True)
    if stop:
        capture.send_signal(signal.SIGINT)
    out, err = capture.communicate(timeout=30)
    return subprocess.CompletedProcess(capture.args, capture.returncode, out, first + err)


def tcpdump_read(file: Path) -> list[str]:
    """The packets of `file` as tcpdump -r prints them (a line each: it prints VXLAN's inner
    packet on a line of its own, without a time)."""
    out = subprocess.run(["tcpdump", "-r", str(file), "-nn"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if re.match(r"\d\d:\d\d:\d\d\.", line)]


def hops_of(stdout: str) -> list[tuple[str, str]]:
    return [(line.split()[1], line.split()[2]) for line in stdout.splitlines()]


def test_a_ping_is_seen_at_every_hop_in_order(lab: Lab, tmp_path: Path):
    backend = lab.load().backend
    expected = path(backend)
    file = tmp_path / "ping.pcapng"
    run = capture_while_pinging(lab, "-w", str(file), "--count", str(len(expected)), "icmp")
    assert run.returncode == 0, run.stderr
    assert hops_of(run.stdout) == expected, run.stdout
    src, dst = pods(lab)
    lines = run.stdout.splitlines()
    assert all(f"{src.ip} > {dst.ip} ICMP echo-request" in line
               for line in lines[:len(lines) // 2])
    tunnelled = [line for line in lines if "/uplink" in line]
    if backend == "vxlan":
        assert tunnelled and all(" vxlan vni 1 | " in line for line in tunnelled)
    else:
        assert tunnelled and not any("vxlan" in line for line in tunnelled)
    assert run.stderr.splitlines()[-1] == (f"capture: {len(expected)} packet(s) on "
                                           f"{len(expected) // 2} hop(s), written to {file}")

    # the file, read by tcpdump and by tshark (with the hops' names; VXLAN on 8472)
    assert len(tcpdump_read(file)) == len(expected)
    fields = subprocess.run(["tshark", "-r", str(file), "-d", "udp.port==8472,vxlan",
                             "-T", "fields", "-e", "frame.interface_name", "-e", "vxlan.vni",
                             "-e", "icmp.type"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    rows = [line.split("\t") for line in fields]
    assert [row[0] for row in rows] == [hop for hop, _ in expected]
    assert {row[1] for row in rows if row[0].endswith("/uplink")} == (
        {"1"} if backend == "vxlan" else {""})
    assert [row[2].split(",")[-1] for row in rows] == ["8"] * (len(rows) // 2) + ["0"] * (
        len(rows) // 2)


def test_a_filter_narrows_the_capture_to_the_inner_packets_it_names(lab: Lab):
    expected = path(lab.load().backend)
    run = capture_while_pinging(lab, "--count", str(len(expected) // 2),
                                "icmp[icmptype] = icmp-echoreply")
    assert run.returncode == 0, run.stderr
    assert hops_of(run.stdout) == expected[len(expected) // 2:]
    assert all("echo-reply" in line for line in run.stdout.splitlines())


def test_ctrl_c_stops_it_and_the_file_is_complete(lab: Lab, tmp_path: Path):
    file = tmp_path / "stopped.pcapng"
    run = capture_while_pinging(lab, "-w", str(file), "icmp", pings=2, stop=True)
    assert run.returncode == 0, run.stderr
    seen = len(run.stdout.splitlines())
    assert seen == 2 * len(path(lab.load().backend))
    assert len(tcpdump_read(file)) == seen
    assert run.stderr.splitlines()[-1].startswith(f"capture: {seen} packet(s) on ")


def test_bad_input_is_one_line(lab: Lab):
    src, _ = pods(lab)
    bad_filter = ctl(lab, "capture", src.key, "--count", "1", "tcp", "prot", "80")
    assert bad_filter.returncode == 1
    assert bad_filter.stderr.splitlines() == [
        "tartanctl lab capture: error: bad capture filter 'tcp prot 80': can't parse filter "
        "expression: syntax error"]
    assert ctl(lab, "capture", "x/nope", "--count", "1").stderr.startswith(
        f"tartanctl lab capture: error: lab {lab.name} has no pod x/nope (pods: ")
    hops = ctl(lab, "capture", src.key, "--hops", "pod,tunnel")
    assert hops.returncode == 2 and "unknown hop tunnel" in hops.stderr
