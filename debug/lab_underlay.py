"""The lab's underlay: a router namespace, L2 segments, and node namespaces with holders.

Each segment is a bridge `seg<k>` (a switch) inside the router namespace; the router is
plugged into it by a veth of its own (`gw<k>`, carrying the segment's gateway address, its
peer `gw<k>p` a port of the bridge), like a router cabled to a switch. The router must not
route out of the bridge device itself: a bridge does not offer tunnel segmentation to
encapsulated packets, so every 64 KB VXLAN packet would be cut into MTU-sized ones on the
way through, and cross-segment VXLAN would measure the lab instead of Tartan. A node is a
network namespace joined to its segment by a veth (`n<i>` on the router, `eth0` in the
node) with a default route via the router. Nothing is created in
the host's network namespace, and the router has no route out.

Each node also gets a mount namespace of its own, kept alive by a holder process
(`unshare --mount --propagation slave sleep infinity`, started inside the node's network
namespace). Slave propagation: the node sees the pod namespaces the host mounts under
/run/netns later, while the node's own mounts (its /run/tartan, /var/lib/cni,
/var/lib/tartan, /etc/cni and a /sys that shows its own interfaces) never reach the host.
A mount point the host lacks is made inside an overlay of its parent in the node (so
/var/lib/cni never appears on the host), except under /run, whose submounts (/run/netns)
an overlay would hide: /run/tartan is created on the host, empty, and removed by `down`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from tartan.debug import lab_plan as plan
from tartan.debug.lab_state import NODE_MOUNTS
from tartan.debug.lab_sys import LabError, Sys, in_netns, in_node, netns_path
from tartan.kernel import gso
from tartan.kernel.files import write_atomic
from tartan.kernel.netns import entered

MOUNTPOINTS_FILE = ".created-mountpoints.json"


def host_overlaps(sys: Sys, segments: int) -> list[str]:
    """Host routes and addresses that overlap the lab's ranges (the lab refuses to start)."""
    routes = json.loads(sys.run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout)
    addrs = json.loads(sys.run(["ip", "-j", "-4", "addr", "show"]).stdout)
    for link in addrs:
        routes += [{"dst": f"{a['local']}/{a['prefixlen']}", "dev": link.get("ifname")}
                   for a in link.get("addr_info", [])]
    return plan.overlaps(plan.lab_ranges(segments), routes)


def add_netns(sys: Sys, name: str) -> None:
    sys.ip("netns", "add", name, what=f"create namespace {name}")
    sys.ip("link", "set", "lo", "up", netns=name)


def sysctl(sys: Sys, netns: str, key: str, value: str) -> None:
    sys.run(in_netns(netns, ["sysctl", "-q", "-w", f"{key}={value}"]), what=f"{key} in {netns}")


BIG_TCP_SIZE = 196608  # 192 KiB, the size Cilium's BIG TCP uses


def big_tcp(netns: str, links: list[str]) -> None:
    """Let `links` in `netns` carry IPv4 packets of BIG_TCP_SIZE (iproute2 6.1 cannot)."""
    with entered(netns_path(netns)):
        for name in links:
            if not gso.set_ipv4_max(socket.if_nametoindex(name), BIG_TCP_SIZE):
                raise LabError("--big-tcp: this kernel has no IPv4 BIG TCP (Linux 6.3+)")


def make_router(sys: Sys, lab: str, segments: int, big: bool = False) -> None:
    router = plan.router_netns(lab)
    add_netns(sys, router)
    sysctl(sys, router, "net.ipv4.ip_forward", "1")
    # Only a router leg answers ARP for its address. By default the segment bridge answers
    # too, with the bridge's MAC, which changes when a node with a lower MAC joins: nodes
    # that cached the old one lose their gateway (and the store) until the entry expires.
    sysctl(sys, router, "net.ipv4.conf.all.arp_ignore", "1")
    for seg in range(1, segments + 1):
        add_segment(sys, router, seg)
        if big:
            big_tcp(router, [plan.bridge_name(seg), f"gw{seg}", f"gw{seg}p"])


def add_segment(sys: Sys, router: str, seg: int) -> None:
    bridge, leg = plan.bridge_name(seg), f"gw{seg}"
    sys.ip("link", "add", bridge, "type", "bridge", netns=router, what=f"bridge {bridge}")
    sys.ip("link", "set", bridge, "up", netns=router)
    sys.ip("link", "add", leg, "type", "veth", "peer", "name", f"{leg}p", netns=router,
           what=f"router leg {leg}")
    sys.ip("link", "set", f"{leg}p", "master", bridge, "up", netns=router)
    sys.ip("addr", "add", str(plan.gateway(seg)), "dev", leg, netns=router)
    sys.ip("link", "set", leg, "up", netns=router)


def wire_node(sys: Sys, node: plan.NodePlan, big: bool = False) -> None:
    """The node's namespace, its veth to the segment, address and default route."""
    router = plan.router_netns(node.lab)
    add_netns(sys, node.netns)
    sys.ip("link", "add", node.router_port, "type", "veth", "peer", "name", "eth0", "netns",
           node.netns, netns=router, what=f"veth for {node.name}")
    sys.ip("link", "set", node.router_port, "master", plan.bridge_name(node.segment), "up",
           netns=router)
    sys.ip("addr", "add", str(node.address), "dev", "eth0", netns=node.netns)
    sys.ip("link", "set", "eth0", "up", netns=node.netns)
    sys.ip("route", "add", "default", "via", node.gateway, netns=node.netns)
    if big:
        big_tcp(plan.router_netns(node.lab), [node.router_port])
        big_tcp(node.netns, ["eth0"])


def start_holder(sys: Sys, netns: str, timeout: float = 5.0) -> int:
    """The process that keeps the node's mount namespace; its pid once it is in it."""
    pid = sys.spawn(["nsenter", f"--net={netns_path(netns)}", "unshare", "--mount",
                     "--propagation", "slave", "sleep", "infinity"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _own_mount_ns(pid) and _comm(pid) == "sleep":
            return pid
        time.sleep(0.02)
    raise LabError(f"the holder of {netns} (pid {pid}) did not start")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _own_mount_ns(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    except OSError:
        return False


def mount_node_dirs(sys: Sys, holder: int, node_dir: Path) -> None:
    """The node's /sys and its own folders, mounted inside its mount namespace only."""
    sys.run(in_node(holder, ["umount", "-l", "/sys"]), what="unmount /sys in the node")
    sys.run(in_node(holder, ["mount", "-t", "sysfs", "sysfs", "/sys"]), what="node /sys")
    for folder, target in NODE_MOUNTS:
        source = node_dir / folder
        source.mkdir(parents=True, exist_ok=True)
        if not os.path.isdir(target) and _overlaid_parent(target):
            _overlay_parent(sys, holder, node_dir, target)
        sys.run(in_node(holder, ["mount", "--bind", str(source), target]),
                what=f"bind {source} on {target} in the node")


def _overlaid_parent(target: str) -> bool:
    """Missing mount points under /run are made on the host (see ensure_mountpoints);
    the others (/var/lib/cni, /var/lib/tartan, /etc/cni) inside an overlay of the parent."""
    return os.path.dirname(target) != "/run"


def _overlay_parent(sys: Sys, holder: int, node_dir: Path, target: str) -> None:
    """Overlay the target's parent in the node (host files below, the node's changes in
    node_dir), then make the mount point in it: the host's own parent stays untouched."""
    parent = os.path.dirname(target)
    if parent not in _mount_targets(f"/proc/{holder}/mountinfo"):
        layer = node_dir / ("overlay" + parent.replace("/", "-"))
        (layer / "upper").mkdir(parents=True, exist_ok=True)
        (layer / "work").mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={parent},upperdir={layer / 'upper'},workdir={layer / 'work'}"
        sys.run(in_node(holder, ["mount", "-t", "overlay", "overlay", "-o", options, parent]),
                what=f"overlay on {parent} in the node")
    sys.run(in_node(holder, ["mkdir", "-p", target]), what=f"mount point {target} in the node")


def node_mounts(holder: int) -> list[str]:
    """Mount points in the holder's mount namespace that belong to the node."""
    targets = {target for _, target in NODE_MOUNTS}
    return [t for t in _mount_targets(f"/proc/{holder}/mountinfo") if t in targets]


def host_lab_mounts(root: Path = plan.LAB_ROOT) -> list[str]:
    """Mounts in the host's mount namespace coming from the lab (there must be none)."""
    targets = {target for _, target in NODE_MOUNTS}
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in mountinfo if str(root) in line
            or line.split()[4] in targets]


def _mount_targets(mountinfo: str) -> list[str]:
    try:
        return [line.split()[4] for line in Path(mountinfo).read_text().splitlines()]
    except OSError:
        return []


def ensure_mountpoints(root: Path = plan.LAB_ROOT,
                       say: Callable[[str], None] = print) -> None:
    """Create the missing mount points under /run on the host (empty dirs: /run/tartan),
    remembered for `down`."""
    record = root / MOUNTPOINTS_FILE
    created = json.loads(record.read_text()) if record.exists() else []
    for _, target in NODE_MOUNTS:
        if not os.path.isdir(target) and not _overlaid_parent(target):
            os.makedirs(target)
            created.append(target)
            say(f"  created the empty mount point {target} on the host (removed by `down`)")
    write_atomic(record, json.dumps(sorted(set(created))))


def remove_mountpoints(root: Path = plan.LAB_ROOT) -> list[str]:
    """Remove the mount points the labs created, once no lab is left; what was removed."""
    record = root / MOUNTPOINTS_FILE
    if not record.exists() or any(p.is_dir() for p in root.iterdir()):
        return []
    removed = []
    for target in reversed(json.loads(record.read_text())):
        try:
            os.rmdir(target)
            removed.append(target)
        except OSError:
            pass  # not empty (someone else uses it now) or already gone
    record.unlink()
    return removed
