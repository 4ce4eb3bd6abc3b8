"""`tartanctl reset`: remove what Tartan put on this node, and nothing else.

The clean-up flannel users paste from blog posts (delete cni0 and flannel.1, rm -rf
/var/lib/cni /etc/cni, restart), done exactly. What is Tartan's:
- links: the VXLAN devices `tartan.<VNI>`, the bridge named in Tartan's network config
  (cni0 by default) and the host ends of the pods' veths on it;
- routes tagged with Tartan's protocol (152), both families;
- iptables chains named `TARTAN-*` in the filter and nat tables, both families, on each
  backend (nf_tables and legacy) whose tools are here, with the rules that jump to them; and
  the hostPort chains (`CNI-DN-<hash>`) of pods on Tartan's network, found by the network
  name in their rules' comments (the shared `CNI-HOSTPORT-*` chains stay: the reference
  portmap uses them too);
- ipsets named `TARTAN-*`, destroyed once no rule uses them;
- the IPAM reservations of Tartan's network (`<ipam dataDir>/<network name>`), the plugin's
  own data dir, and the contents of /run/tartan (the subnet file, the socket, the journal).
Other components' links, routes, chains and sets are never touched; neither is the lease
store (the node's lease is cluster state: a fresh tartand takes it back). While tartand runs
in this network namespace reset refuses, unless --force: tartand would put it all back.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from tartan.backends.routes import PROTO_TARTAN
from tartan.backends.vxlan import is_device
from tartan.cni.plugins import portmap_rules
from tartan.debug.node import CNI_CONF_DIR, RUN_DIR, Network, agents_here, find_network
from tartan.kernel import link, route
from tartan.kernel.errors import Gone, TartanError
from tartan.kernel.ipset import Ipsets
from tartan.kernel.iptables import BACKENDS, Iptables, Table

PREFIX = "TARTAN-"
TABLES = ("filter", "nat")


@dataclass(frozen=True)
class Item:
    """One thing reset removes: what it is, and how."""

    kind: str  # link, route, chain, ipset, files
    name: str
    remove: Callable[[], None]

    def text(self) -> str:
        return f"{self.kind:<6} {self.name}"


# -- what there is ------------------------------------------------------------------------


def plan(network: Network, run_dir: str = RUN_DIR) -> list[Item]:
    """Everything of Tartan's on this node, in the order it is removed: rules before the
    sets they match, routes before links, links, then files."""
    return [*_chains(network), *_ipsets(), *_routes_and_links(network),
            *_files(network, run_dir)]


def _chains(network: Network) -> Iterator[Item]:
    for family in (4, 6):
        for backend in BACKENDS:
            tool = f"{'ip6tables' if family == 6 else 'iptables'}-{backend}-save"
            if shutil.which(tool) is None:
                continue
            ipt = Iptables(family, backend=backend)
            for table in TABLES:
                try:
                    live = ipt.read(table)
                except TartanError:
                    continue  # the table is not there on this backend
                doomed = sorted(name for name in live.chains if name.startswith(PREFIX))
                doomed += sorted(portmap_rules.chain_name(network.name, container)
                                 for container in portmap_rules.containers(live, network.name))
                if not doomed:
                    continue
                jumps = sum(len(live.jumps_to(name)) for name in doomed)
                state = Table(table, delete_chains=tuple(doomed))
                yield Item("chain", f"{tool.removesuffix('-save')} -t {table}: "
                                    f"{', '.join(doomed)} ({jumps} jump(s) to them)",
                           functools.partial(_apply, ipt, state))


def _apply(ipt: Iptables, state: Table) -> None:
    ipt.apply(state, ipt.read(state.name))


def _ipsets() -> Iterator[Item]:
    if shutil.which("ipset") is None:
        return
    sets = Ipsets(prefix=PREFIX)
    try:
        names = sorted(sets.read())
    except TartanError:
        return
    if names:
        yield Item("ipset", ", ".join(names), lambda: _prune(sets))


def _prune(sets: Ipsets) -> None:
    sets.prune(())  # after the chains: SetInUse names a set another component still uses


def _routes_and_links(network: Network) -> Iterator[Item]:
    with contextlib.closing(IPRoute()) as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for spec in route.by_protocol(ipr, PROTO_TARTAN, family):
                via = f" via {spec.gw}" if spec.gw else ""
                dev = link.by_index(ipr, spec.oif).name if spec.oif else "?"
                yield Item("route", f"{spec.dst}{via} dev {dev} proto {PROTO_TARTAN}",
                           functools.partial(_with_ipr, functools.partial(
                               _delete_route, spec=spec)))
        links = link.all_links(ipr)
        bridge = next((li for li in links if li.name == network.bridge and li.kind == "bridge"),
                      None)
        for li in links:
            ours = is_device(li) or (
                bridge is not None and li.kind == "veth" and li.master == bridge.index)
            if ours:
                what = "a pod's host veth on " + network.bridge if li.kind == "veth" else "vxlan"
                yield Item("link", f"{li.name} ({what})",
                           functools.partial(_with_ipr, functools.partial(
                               _delete_link, name=li.name)))
        if bridge is not None:
            yield Item("link", f"{bridge.name} (bridge of network {network.name})",
                       lambda: _with_ipr(lambda i: link.delete(i, network.bridge)))


def _delete_route(ipr: IPRoute, spec: route.RouteSpec) -> None:
    route.delete(ipr, spec)


def _delete_link(ipr: IPRoute, name: str) -> None:
    link.delete(ipr, name)


def _with_ipr(call: Callable[[IPRoute], object]) -> None:
    with contextlib.closing(IPRoute()) as ipr, contextlib.suppress(Gone):
        call(ipr)


def _files(network: Network, run_dir: str) -> Iterator[Item]:
    reservations = Path(network.ipam_dir) / network.name
    for folder, what in ((reservations, "IPAM reservations of network " + network.name),
                         (Path(network.data_dir), "the tartan plugin's data")):
        if folder.is_dir():
            yield Item("files", f"{folder} ({what})", functools.partial(shutil.rmtree, folder))
    run = Path(run_dir)
    inside = sorted(run.iterdir()) if run.is_dir() else []
    if inside:  # the folder itself may be a mount point: only what is in it goes
        yield Item("files", f"{run}/* ({', '.join(p.name for p in inside)})",
                   lambda: _empty(run))
    subnet = Path(network.subnet_file)
    if subnet.exists() and subnet.parent != run:
        yield Item("files", f"{subnet} (the subnet file)", lambda: subnet.unlink(missing_ok=True))


def _empty(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# -- the command --------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reset", help="remove everything Tartan put on this node, only that",
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    p.add_argument("--force", action="store_true", help="even while tartand runs here")
    p.add_argument("--cni-conf-dir", default=CNI_CONF_DIR,
                   help=f"where Tartan's network config is (default {CNI_CONF_DIR})")
    p.add_argument("--run-dir", default=RUN_DIR, help=f"tartand's run folder (default {RUN_DIR})")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        network = find_network(args.cni_conf_dir)
        agents = agents_here()
        if agents and not args.force and not args.dry_run:
            print(f"tartanctl reset: tartand runs here (pid {', '.join(map(str, agents))}) and "
                  "would put everything back: stop it first (systemctl stop tartand), or pass "
                  "--force", file=sys.stderr)
            return 1
        items = plan(network, args.run_dir)
    except (TartanError, Gone, OSError) as exc:
        print(f"tartanctl reset: {exc}", file=sys.stderr)
        return 1
    print(f"network: {network.name} ({network.source})")
    if not items:
        print("nothing of Tartan's is on this node")
        return 0
    print("would remove:" if args.dry_run else "removing:")
    failed = 0
    for item in items:
        print(f"  {item.text()}", flush=True)
        if args.dry_run:
            continue
        try:
            item.remove()
        except (TartanError, Gone, OSError) as exc:
            failed += 1
            print(f"tartanctl reset: {item.kind} {item.name}: {exc}", file=sys.stderr)
    if args.dry_run:
        print(f"{len(items)} item(s); nothing removed (--dry-run)")
        return 0
    print(f"removed {len(items) - failed} of {len(items)} item(s)")
    return 1 if failed else 0
