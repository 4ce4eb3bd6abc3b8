"""tartand at scale: N simulated peers and one real agent, the installed bundle's tartand,
programming a real kernel in a node namespace.

    .venv/bin/python bench/scale.py [--peers 100,1000,5000] [--backends vxlan,host-gw]
                                    [--idle-seconds 60] [--report PATH]

The peers are leases in the agent's SQLite store (no namespaces of their own), with public
IPs on the node's segment (192.168.0.0/16, a veth to a namespace of its own), so host-gw
programs every one. The agent is the bundle's tartand with its normal background work: the
NetworkPolicy enforcer, the CNI socket, metrics, the reconcile loop. Figures:

- programmed: from the agent's `lease.acquired` to its `agent.ready` (the first pass, every
  peer in the kernel), from its own log's timestamps; the kernel's counts are checked after.
- baseline: the same kernel objects (routes; for vxlan also the device, neighbours and FDB
  entries) written by `ip -batch` (iproute2, in C) into a fresh namespace, in the same run:
  what the kernel itself takes. The ratio is programmed / baseline.
- join / leave: one lease written to / deleted from the store, until the kernel's route to
  that subnet is there / gone (polled every 2 ms by a route lookup).
- idle CPU: the agent's user + system time (its children's too) over --idle-seconds with no
  change, as a share of one core; RSS at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

import report
from pngchart import Bar, Panel, bar_chart
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tartan.ipam.lease import LeaseAttrs
from tartan.ipam.lease_sqlite import SqliteLeaseStore
from tartan.kernel import netns

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "dist/tartan/tartan-full"
NODE, UPLINK = "tartan-scale", "tartan-scale-up"
NODE_IP, SEGMENT = "192.168.0.1", 16
VNI, PORT = 1, 8472
TTL = 24 * 3600.0
GOALS = {"programmed": 2.0, "join": 0.1, "leave": 0.1, "cpu": 1.0, "rss": 100.0}
JOIN_SUBNET = IPv4Network("10.250.0.0/24")
JOIN_IP = "192.168.250.1"


@dataclass
class Row:
    backend: str
    peers: int
    programmed: float = 0.0
    baseline: float = 0.0
    join: float = 0.0
    leave: float = 0.0
    cpu: float = 0.0  # % of one core
    rss: float = 0.0  # MiB


def ip(*argv: str, check: bool = True) -> None:
    run = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if check and run.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {run.stderr.strip()}")


def peer_subnet(i: int) -> IPv4Network:
    return IPv4Network(f"10.{i // 256}.{i % 256}.0/24")


def peer_ip(i: int) -> str:
    return f"192.168.{1 + i // 250}.{1 + i % 250}"


def peer_mac(i: int) -> str:
    return f"02:5c:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:01"


def attrs(backend: str, public_ip: str, mac: str) -> LeaseAttrs:
    if backend == "vxlan":
        return LeaseAttrs(public_ip=public_ip, backend_type="vxlan",
                          backend_data={"VNI": VNI, "VtepMAC": mac})
    return LeaseAttrs(public_ip=public_ip, backend_type="host-gw", backend_data={})


@contextmanager
def node_namespaces() -> Iterator[None]:
    """The node's namespace, its uplink a veth to a namespace of its own (never the host's)."""
    for name in (NODE, UPLINK):
        ip("netns", "del", name, check=False)
        ip("netns", "add", name)
    try:
        ip("-n", NODE, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
           "netns", UPLINK)
        ip("-n", NODE, "addr", "add", f"{NODE_IP}/{SEGMENT}", "dev", "eth0")
        ip("-n", UPLINK, "addr", "add", f"192.168.0.2/{SEGMENT}", "dev", "eth0")
        for name in (NODE, UPLINK):
            ip("-n", name, "link", "set", "lo", "up")
            ip("-n", name, "link", "set", "eth0", "up")
        yield
    finally:
        for name in (NODE, UPLINK):
            ip("netns", "del", name, check=False)


def seed(store: SqliteLeaseStore, backend: str, peers: int) -> None:
    store.put_config({"Network": "10.0.0.0/8", "SubnetLen": 24,
                      "Backend": {"Type": backend, **({"VNI": VNI} if backend == "vxlan"
                                                      else {})}})
    for i in range(1, peers + 1):
        store.create(peer_subnet(i), attrs(backend, peer_ip(i), peer_mac(i)), TTL)


class Agent:
    """The bundle's tartand in the node namespace, its files in `work`."""

    def __init__(self, work: Path, backend: str) -> None:
        self.work, self.backend = work, backend
        (work / "bin").mkdir()
        (work / "bin/tartand").symlink_to(BUNDLE)
        self.log = work / "tartand.log"
        argv = ["ip", "netns", "exec", NODE, str(work / "bin/tartand"),
                "--store", f"sqlite:{work / 'leases.db'}", "--iface", "eth0",
                "--subnet-file", str(work / "subnet.env"), "--cni-socket", str(work / "cni.sock"),
                "--cni-journal", str(work / "journal"), "--http-addr", "127.0.0.1:9808",
                "--node-name", "scale-node", "--ip-masq"]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def wait_for(self, event: str, timeout: float = 300) -> float:
        """The epoch time of the log's first `event` line."""
        deadline = time.monotonic() + timeout
        pattern = re.compile(rf"time=(\S+) level=\w+ event={re.escape(event)}\b")
        while time.monotonic() < deadline:
            found = pattern.search(self.log.read_text())
            if found:
                stamp = found[1].rstrip("Z")
                whole, _, millis = stamp.partition(".")
                return time.mktime(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) - time.timezone \
                    + int(millis or 0) / 1000
            if self.proc.poll() is not None:
                raise RuntimeError(f"tartand exited {self.proc.returncode}: "
                                   f"{self.log.read_text()[-800:]}")
            time.sleep(0.05)
        raise RuntimeError(f"no {event} from tartand in {timeout:g} s")

    @property
    def pid(self) -> int:
        """tartand's own PID (`ip netns exec` execs it, so it is the child's)."""
        return self.proc.pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        text = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", text)[1]) / 1024  # type: ignore[index]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def kernel_counts(backend: str) -> tuple[int, int, int]:
    """Tartan's routes, and the VXLAN device's permanent neighbours and FDB entries."""
    from tartan.backends.routes import PROTO_TARTAN
    from tartan.kernel import link, neigh, route

    with netns.netlink_in(f"/run/netns/{NODE}") as ipr:
        routes = len(route.by_protocol(ipr, PROTO_TARTAN))
        if backend != "vxlan":
            return routes, 0, 0
        dev = link.require(ipr, f"tartan.{VNI}")
        return (routes, len(neigh.permanent_neighbours(ipr, dev.index)),
                len(neigh.remote_fdb(ipr, dev.index)))


def until(condition: Callable[[], bool], timeout: float = 60) -> float:
    """Seconds until `condition` holds, checked every 2 ms."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"not in the kernel after {timeout:g} s")
        time.sleep(0.002)
    return time.perf_counter() - started


def routed(ipr: IPRoute, address: str) -> bool:
    """Whether the kernel routes `address` as a peer's pod (not by the segment's route)."""
    try:
        msg = ipr.route("get", dst=address)[0]
    except NetlinkError:  # no route at all
        return False
    return msg.get("RTA_GATEWAY") in (JOIN_IP, str(JOIN_SUBNET.network_address))


def join_and_leave(store: SqliteLeaseStore, backend: str) -> tuple[float, float]:
    pod = str(JOIN_SUBNET.network_address + 5)
    with netns.netlink_in(f"/run/netns/{NODE}") as ipr:
        started = time.perf_counter()
        store.create(JOIN_SUBNET, attrs(backend, JOIN_IP, "02:5c:ff:ff:ff:01"), TTL)
        until(lambda: routed(ipr, pod))
        join = time.perf_counter() - started
        started = time.perf_counter()
        store.delete(JOIN_SUBNET)
        until(lambda: not routed(ipr, pod))
        leave = time.perf_counter() - started
    return join, leave


def baseline(backend: str, peers: int, work: Path) -> float:
    """`ip -batch` (and `bridge -batch` for the FDB) writing the same objects into the
    (fresh) node namespace."""
    lines, fdb = [], []
    if backend == "vxlan":
        lines += [f"link add tartan.{VNI} type vxlan id {VNI} local {NODE_IP} dev eth0 "
                  f"dstport {PORT} nolearning", f"link set tartan.{VNI} up"]
    for i in range(1, peers + 1):
        subnet, gateway = peer_subnet(i), str(peer_subnet(i).network_address)
        if backend == "vxlan":
            lines += [f"neigh replace {gateway} lladdr {peer_mac(i)} dev tartan.{VNI} "
                      "nud permanent",
                      f"route replace {subnet} via {gateway} dev tartan.{VNI} onlink proto 152"]
            fdb.append(f"fdb append {peer_mac(i)} dev tartan.{VNI} dst {peer_ip(i)} self "
                       "permanent")
        else:
            lines.append(f"route replace {subnet} via {peer_ip(i)} dev eth0 proto 152")
    (work / "ip.batch").write_text("\n".join(lines) + "\n")
    (work / "bridge.batch").write_text("\n".join(fdb) + "\n")
    with node_namespaces():
        started = time.perf_counter()
        ip("-n", NODE, "-batch", str(work / "ip.batch"))
        if fdb:
            run = subprocess.run(["bridge", "-n", NODE, "-batch", str(work / "bridge.batch")],
                                 capture_output=True, text=True, check=False)
            if run.returncode != 0:
                raise RuntimeError(f"bridge -batch: {run.stderr.strip()}")
        took = time.perf_counter() - started
        counts = kernel_counts(backend)
    expected = (peers, *(2 * [peers if backend == "vxlan" else 0]))
    if counts != expected:
        raise RuntimeError(f"ip -batch made {counts}, not {expected}")
    return took


def measure(backend: str, peers: int, idle_seconds: float) -> Row:
    row = Row(backend, peers)
    work = Path(tempfile.mkdtemp(prefix="tartan-scale-"))
    try:
        row.baseline = baseline(backend, peers, work)
        with node_namespaces():
            store = SqliteLeaseStore(work / "leases.db")
            seed(store, backend, peers)
            agent = Agent(work, backend)
            try:
                acquired = agent.wait_for("lease.acquired")
                ready = agent.wait_for("agent.ready")
                row.programmed = ready - acquired
                counts = kernel_counts(backend)
                expected = (peers, *(2 * [peers if backend == "vxlan" else 0]))
                if counts != expected:
                    raise RuntimeError(f"the kernel holds {counts}, not {expected}")
                row.join, row.leave = join_and_leave(store, backend)
                time.sleep(5)  # what the join and the leave set off settles
                before, started = agent.cpu_seconds(), time.monotonic()
                time.sleep(idle_seconds)
                row.cpu = 100 * (agent.cpu_seconds() - before) / (time.monotonic() - started)
                row.rss = agent.rss_mib()
            finally:
                agent.stop()
                store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return row


def table(rows: list[Row]) -> str:
    out = ["| backend | peers | programmed | ip -batch (baseline) | ratio | one join → kernel "
           "| one leave → kernel | idle CPU (% of a core) | RSS |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r.backend} | {r.peers:,} | {r.programmed:.2f} s | {r.baseline:.2f} s | "
                   f"{r.programmed / r.baseline:.1f}x | {r.join * 1000:.0f} ms | "
                   f"{r.leave * 1000:.0f} ms | {r.cpu:.1f} % | {r.rss:.0f} MiB |")
    out += ["", f"Goals at 5,000 peers: programmed ≤ {GOALS['programmed']:g} s, one join or "
                f"leave ≤ {GOALS['join'] * 1000:.0f} ms, idle CPU ≤ {GOALS['cpu']:g} % of a "
                f"core, RSS ≤ {GOALS['rss']:.0f} MiB."]
    return "\n".join(out)


def chart(rows: list[Row], png: Path) -> None:
    def bars(value: Callable[[Row], float], unit: str) -> list[Bar]:
        return [Bar(f"{r.backend} {r.peers}", (value(r),), note=f"{value(r):.2f} {unit}")
                for r in rows]

    bar_chart([Panel("PROGRAMMED FROM THE LEASE, S", bars(lambda r: r.programmed, "s")),
               Panel("ONE JOIN INTO THE KERNEL, MS", bars(lambda r: r.join * 1000, "ms")),
               Panel("IDLE CPU, % OF A CORE", bars(lambda r: r.cpu, "%"))], png)


def numbers(text: str) -> list[int]:
    try:
        counts = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use counts, e.g. 100,1000,5000") from None
    if not counts or not all(0 < n < 60_000 for n in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: each count from 1 to 59,999")
    return counts


def backends(text: str) -> list[str]:
    chosen = [b.strip() for b in text.split(",") if b.strip()]
    if not chosen or any(b not in ("vxlan", "host-gw") for b in chosen):
        raise argparse.ArgumentTypeError(f"{text!r}: use vxlan, host-gw or both")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=numbers, default=[100, 1000, 5000])
    parser.add_argument("--backends", type=backends, default=["vxlan", "host-gw"])
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/scale.py: run as root (it makes network namespaces)", file=sys.stderr)
        return 2
    if not BUNDLE.exists():
        print("bench/scale.py: no bundle: run `make bundle`", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the namespaces go
    rows = []
    for backend in args.backends:
        for peers in args.peers:
            row = measure(backend, peers, args.idle_seconds)
            print(f"  {backend} {peers}: programmed {row.programmed:.2f} s (ip -batch "
                  f"{row.baseline:.2f} s), join {row.join * 1000:.0f} ms, leave "
                  f"{row.leave * 1000:.0f} ms, idle {row.cpu:.1f} %, RSS {row.rss:.0f} MiB",
                  flush=True)
            rows.append(row)
    text = table(rows)
    print(text)
    if args.report:
        png = args.report.with_suffix(".png")
        chart(rows, png)
        report.write(args.report, "tartand at scale", __doc__, text, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
