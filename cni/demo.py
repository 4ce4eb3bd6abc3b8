"""`make demo`: two pods on a Tartan bridge, wired by the real plugins as a runtime would.

A throwaway "node" network namespace stands in for the host; two pod namespaces stand in for
containers. `tartan-bridge` (with `tartan-ipam`) is executed inside the node namespace with
the CNI environment and the network config on stdin, exactly as a container runtime does.
The pods ping each other, both are deleted, the demo shows that nothing of them is left, and
every namespace and the IPAM data dir are removed, also on failure or Ctrl-C.

Nothing leaves the node namespace: it has no uplink, and 10.250.0.0/24 is checked against
the host's routes first.

    python -m tartan.cni.demo
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.250.0.0/24"
BRIDGE = "cni0"
NETWORK = "tartan-demo"
CNI_VERSION = "1.1.0"
NETNS_DIR = Path("/run/netns")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class DemoError(Exception):
    """A step failed; the message is the one line the user sees."""


def say(message: str) -> None:
    print(message, flush=True)


def run(argv: list[str], *, netns: str | None = None, stdin: bytes | None = None,
        env: dict[str, str] | None = None, what: str = "") -> subprocess.CompletedProcess:
    """Run argv (inside `netns` when given); DemoError naming `what` when it fails."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else argv
    proc = subprocess.run(full, input=stdin, env=env, capture_output=True, check=False,
                          timeout=60)
    if proc.returncode != 0:
        detail = (proc.stdout or proc.stderr).decode(errors="replace").strip().splitlines()
        raise DemoError(f"{what or argv[0]} failed (exit {proc.returncode})"
                        + (f": {detail[0]}" if detail else ""))
    return proc


def output(argv: list[str], netns: str | None = None) -> str:
    return run(argv, netns=netns).stdout.decode(errors="replace")


def check_range_unused(subnet: str) -> None:
    """Refuse to run when a host route (other than the default) overlaps the demo's range."""
    ours = ipaddress.ip_network(subnet)
    for route in json.loads(output(["ip", "-j", "-4", "route", "show", "table", "all"])):
        dst = route.get("dst", "default")
        if dst == "default" or route.get("type") in ("broadcast", "local"):
            continue
        theirs = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        if ours.overlaps(theirs):
            raise DemoError(f"{subnet} overlaps the host's route to {dst}; not touching it")


@dataclass
class Pod:
    name: str
    netns: str
    container_id: str
    address: str = ""

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.netns)

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


@dataclass
class Demo:
    plugin_dir: Path
    data_dir: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    made: list[str] = field(default_factory=list)

    @property
    def node(self) -> str:
        return f"tdemo-{self.token}-node"

    def config(self) -> bytes:
        return json.dumps({
            "cniVersion": CNI_VERSION,
            "name": NETWORK,
            "type": "tartan-bridge",
            "bridge": BRIDGE,
            "isGateway": True,
            "ipMasq": True,
            "ipam": {"type": "tartan-ipam", "subnet": SUBNET, "dataDir": str(self.data_dir)},
        }).encode()

    def add_netns(self, name: str) -> None:
        run(["ip", "netns", "add", name], what=f"ip netns add {name}")
        self.made.append(name)
        run(["ip", "link", "set", "lo", "up"], netns=name, what=f"lo up in {name}")

    def remove_namespaces(self) -> None:
        for name in reversed(self.made):
            if (NETNS_DIR / name).exists():
                subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self.made.clear()

    def cni(self, command: str, pod: Pod) -> subprocess.CompletedProcess:
        """Execute tartan-bridge inside the node namespace: CNI env + config on stdin."""
        env = {
            "PATH": PATH,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": pod.container_id,
            "CNI_NETNS": pod.path,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(self.plugin_dir),
        }
        plugin = str(self.plugin_dir / "tartan-bridge")
        return run([plugin], netns=self.node, stdin=self.config(), env=env,
                   what=f"{command} {pod.name}")

    def add(self, pod: Pod) -> None:
        start = time.perf_counter()
        result = json.loads(self.cni("ADD", pod).stdout or b"{}")
        ms = (time.perf_counter() - start) * 1000
        ips = result.get("ips") or []
        if not ips:
            raise DemoError(f"ADD {pod.name} returned no addresses")
        pod.address = ips[0]["address"]
        say(f"  ADD {pod.name}: eth0 {pod.address}, gateway {ips[0].get('gateway', '-')} "
            f"({ms:.0f} ms)")

    def delete(self, pod: Pod) -> None:
        start = time.perf_counter()
        self.cni("DEL", pod)
        say(f"  DEL {pod.name} ({(time.perf_counter() - start) * 1000:.0f} ms)")

    def ping(self, src: Pod, dst: Pod) -> None:
        say(f"  ping from {src.name} ({src.ip}) to {dst.name} ({dst.ip}):")
        text = output(["ping", "-c", "3", "-W", "2", dst.ip], netns=src.netns)
        for line in text.strip().splitlines():
            say(f"    {line}" if line else "")

    def leftovers(self, pods: list[Pod]) -> dict[str, list[str]]:
        """What the pods still hold: host veths, pod eth0s, reservations, masquerade rules."""
        veths = output(["ip", "-o", "link", "show", "type", "veth"], netns=self.node)
        nat = output(["iptables-save", "-t", "nat"], netns=self.node)
        folder = self.data_dir / NETWORK
        reserved = [p.name for p in folder.iterdir()
                    if p.is_file() and _is_reservation(p.name)] if folder.exists() else []
        return {
            "veths on the node": [line.split(":")[1].strip() for line in veths.splitlines()],
            "pod interfaces": [f"{p.name}/eth0" for p in pods if _has_eth0(p)],
            "address reservations": reserved,
            "masquerade rules": [line for line in nat.splitlines()
                                 if line.startswith("-A") and "MASQUERADE" in line],
        }

    def show_state(self, title: str, pods: list[Pod]) -> dict[str, list[str]]:
        state = self.leftovers(pods)
        say(f"  {title}: " + "; ".join(f"{k}: {len(v) or 'none'}" for k, v in state.items()))
        return state


def _is_reservation(name: str) -> bool:
    """host-local's layout: one file per reserved address, named by the address."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _has_eth0(pod: Pod) -> bool:
    return "eth0" in output(["ip", "-o", "link", "show"], netns=pod.netns)


def walk(demo: Demo) -> None:
    """The demo's steps, in order; raises DemoError at the first that fails."""
    say(f"tartan demo: plugins from {demo.plugin_dir}, IPAM data in {demo.data_dir}")
    check_range_unused(SUBNET)
    say(f"[1/5] namespaces: node {demo.node} (stands in for the host), two pods")
    demo.add_netns(demo.node)
    pods = [Pod(f"pod-{x}", f"tdemo-{demo.token}-pod-{x}", f"demo-{demo.token}-{x}")
            for x in "ab"]
    for pod in pods:
        demo.add_netns(pod.netns)
    say(f"[2/5] CNI ADD: tartan-bridge + tartan-ipam, bridge {BRIDGE}, {SUBNET}, ipMasq")
    for pod in pods:
        demo.add(pod)
    demo.show_state("after ADD", pods)
    say("[3/5] traffic between the pods, through the bridge")
    demo.ping(pods[0], pods[1])
    say("[4/5] CNI DEL")
    for pod in pods:
        demo.delete(pod)
    if any(demo.show_state("after DEL", pods).values()):
        raise DemoError("DEL left something behind (see the line above)")
    say(f"  (the bridge {BRIDGE} stays on the node, as with the reference plugin)")


def tartan_plugins() -> Path:
    folder = Path(sys.executable).parent
    for name in ("tartan-bridge", "tartan-ipam"):
        if not os.access(folder / name, os.X_OK):
            raise DemoError(f"{folder / name} not found: run `make venv` first")
    return folder


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo() -> None:
    """Run the steps; the namespaces and the data dir go away whatever happens."""
    if os.geteuid() != 0:
        raise DemoError("needs root: it creates network namespaces")
    demo = Demo(tartan_plugins(), Path(tempfile.mkdtemp(prefix="tartan-demo-")))
    try:
        walk(demo)
    finally:
        demo.remove_namespaces()
        shutil.rmtree(demo.data_dir, ignore_errors=True)
        say("[5/5] cleanup: namespaces and IPAM data removed")


def main() -> int:
    # Ctrl-C and SIGTERM unwind through run_demo's cleanup (SIGINT too when a shell started
    # the demo in the background with it ignored).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_demo()
    except DemoError as exc:
        print(f"tartan demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tartan demo: interrupted", file=sys.stderr)
        return 130
    say("tartan demo: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
