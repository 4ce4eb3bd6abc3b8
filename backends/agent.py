"""tartand: the node agent. Parses flags, opens the store, and runs the loop in daemon.py.

Failures an operator can cause (bad config, bad flags, no interface, exhausted network)
stop it with one line naming the field, before anything is programmed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tartan.backends.log import Log
from tartan.backends.startup import NoNetConfig, Startup, retrying
from tartan.cni import fastpath, journal, subnet_env
from tartan.ipam import lease as lease_defaults
from tartan.netpol import defaults as netpol_defaults

if TYPE_CHECKING:  # the modules behind these load only once the flags are read
    from http.server import ThreadingHTTPServer

    from tartan.backends.daemon import Agent, LeaseHolder, LeaseReader
    from tartan.backends.kube import KubeMode
    from tartan.backends.metrics import Metrics
    from tartan.backends.monitor import KernelMonitor
    from tartan.backends.policy import PolicyHost
    from tartan.cni.server import CniServer
    from tartan.ipam.lease import ClusterStore, LeaseStore
    from tartan.ipam.netconf import NetworkConfig
    from tartan.ipam.objects import ObjectStore
    from tartan.netpol.source import PolicySource

DEFAULT_HTTP_ADDR = "127.0.0.1:9808"  # also where tartanctl and the lab ask
KUBE_NET_CONFIG = "/etc/kube-flannel/net-conf.json"  # flannel's --net-config-path default
# a full pass reads every entry of every peer: at 5,000 peers about 0.3 s of CPU, so one a
# minute (Calico refreshes its routes every 90 s); changes and damage do not wait for it
DEFAULT_RECONCILE_INTERVAL = 60.0
# A CNI request waits for the interpreter lock while a background thread (the kernel monitor
# reading the links a pod ADD changes, the store watch) holds it: Python hands it over every
# 5 ms by default. At 1 ms each request is 5-6 ms shorter on the installed agent (pod ADD
# 31.9 -> 25.6 ms, DEL 27.5 -> 21.7 ms; bench/reports/cni_latency_tartand.md).
SWITCH_INTERVAL = 0.001


def add_store_flags(p: argparse.ArgumentParser) -> None:
    """--store, --etcd-endpoints, --etcd-prefix: tartand's, and tartanctl's, which reads and
    writes the same store; `open_store` opens what they name."""
    p.add_argument("--store", default=f"sqlite:{lease_defaults.DEFAULT_SQLITE_PATH}",
                   help="sqlite:/path/to/leases.db (default) or etcd")
    p.add_argument("--etcd-endpoints", default=lease_defaults.DEFAULT_ETCD_ENDPOINT,
                   help="comma-separated etcd endpoints (with --store etcd)")
    p.add_argument("--etcd-prefix", default=lease_defaults.DEFAULT_ETCD_PREFIX,
                   help="key prefix; flannel's default reads an existing flannel tree")


def seconds(text: str) -> float:
    """A flag's number of seconds, above 0 (0 would make the loop spin)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be above 0")
    return value


def default_node_name() -> str:
    """flannel's: $NODE_NAME (the DaemonSet sets it from spec.nodeName), else the hostname."""
    return os.environ.get("NODE_NAME") or socket.gethostname()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from tartan.ipam.kube_watch import WatchSettings
    from tartan.ipam.lease_kube import DEFAULT_ANNOTATION_PREFIX

    p = argparse.ArgumentParser(prog="tartand", description="Tartan node agent")
    add_store_flags(p)
    p.add_argument("--net-config", "--net-config-path", type=Path,
                   help="flannel net-conf.json: written into the store when it has none; "
                   f"with --kube-subnet-mgr the config itself (default {KUBE_NET_CONFIG})")
    p.add_argument("--iface", help="external interface (default: the default route's)")
    p.add_argument("--public-ip", help="this node's IP for peers (default: first on --iface)")
    p.add_argument("--subnet-file", type=Path, default=Path(subnet_env.DEFAULT_PATH))
    p.add_argument("--ip-masq", action="store_true",
                   help="masquerade pod traffic leaving the cluster network")
    p.add_argument("--http-addr", default=DEFAULT_HTTP_ADDR,
                   help="HOST:PORT for /healthz, /readyz, /metrics, /status")
    p.add_argument("--reconcile-interval", type=seconds, default=DEFAULT_RECONCILE_INTERVAL,
                   help="seconds between full passes over the datapath; store changes and "
                   "hand-made damage are applied at once (default: %(default)g)")
    p.add_argument("--lease-ttl", type=float, default=lease_defaults.DEFAULT_TTL,
                   help="seconds a subnet lease lasts without renewal (flannel's: 24 h)")
    p.add_argument("--cni-socket", default=fastpath.SOCKET_PATH,
                   help="unix socket the CNI plugins hand their requests to ('' to disable)")
    p.add_argument("--cni-journal", default=journal.DEFAULT_DIR,
                   help="folder where the plugins leave the pod requests they answered while "
                   "no agent ran, recorded at start")
    p.add_argument("--node-name", default=default_node_name(),
                   help="this node's name, as pods' spec.nodeName gives it (default: "
                   "$NODE_NAME, else the hostname)")
    p.add_argument("--kube-subnet-mgr", action="store_true",
                   help="the node's subnet is its Node's spec.podCIDR and the peers are the "
                   "other Nodes (flannel's annotations), from the Kubernetes API")
    p.add_argument("--kubeconfig-file",
                   help="kubeconfig for the Kubernetes API (default: the in-cluster config)")
    p.add_argument("--kube-api-url", help="the Kubernetes API server's URL (overrides the "
                   "kubeconfig's)")
    p.add_argument("--kube-annotation-prefix", default=DEFAULT_ANNOTATION_PREFIX,
                   help="prefix of the Node annotations (default: flannel's, %(default)s)")
    p.add_argument("--kube-stall-timeout", type=seconds, default=WatchSettings.stall_timeout,
                   help="seconds a watch may send nothing, not even a bookmark (the API "
                   "server sends one about every minute), before it is opened again "
                   "(default: %(default)g)")
    p.add_argument("--policy-source", choices=("kube", "store"),
                   help="where NetworkPolicy comes from: the Kubernetes API (the default "
                   "with --kube-subnet-mgr) or the lease store (the default otherwise)")
    p.add_argument("--network-policy", action=argparse.BooleanOptionalAction, default=True,
                   help="enforce NetworkPolicy (default: on)")
    p.add_argument("--policy-resync", type=float, default=netpol_defaults.RESYNC_INTERVAL,
                   help="seconds between NetworkPolicy resyncs when nothing changed")
    p.add_argument("--policy-log-denied", action="store_true",
                   help=f"NFLOG (group {netpol_defaults.NFLOG_GROUP}) every packet "
                   "NetworkPolicy drops")
    args = p.parse_args(argv)
    if args.policy_source is None:
        args.policy_source = "kube" if args.kube_subnet_mgr else "store"
    if args.kube_subnet_mgr and args.net_config is None:
        args.net_config = Path(KUBE_NET_CONFIG)
    return args


class StartupError(Exception):
    """Stops the agent with one line."""


def open_store(args: argparse.Namespace) -> ClusterStore:
    """The flags name a store; tartan.ipam.lease.open_store opens it."""
    from tartan.ipam.lease import open_store as open_lease_store

    if args.store == "etcd":
        url = ",".join(e.strip() for e in args.etcd_endpoints.split(",") if e.strip())
    elif args.store.startswith("sqlite:"):
        url = args.store
    else:
        raise StartupError(f"--store {args.store!r}: use sqlite:/path/to/leases.db or etcd")
    try:
        return open_lease_store(url, prefix=args.etcd_prefix)
    except ValueError as exc:
        raise StartupError(f"--etcd-endpoints: {exc}") from None


def parse_net_conf(raw: dict[str, Any]) -> NetworkConfig:
    """The top level for the leases, and the Backend section for its backend: both are
    checked before anything is stored or programmed."""
    from tartan.backends import registry
    from tartan.ipam.netconf import parse_network_config

    net = parse_network_config(raw)
    registry.parse_config(net)
    return net


def read_net_conf(path: Path) -> dict[str, Any]:
    """The --net-config file, checked; StartupError with one line naming the file."""
    from tartan.ipam.netconf import NetConfError

    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise StartupError(f"--net-config {path}: no such file; write flannel's "
                           'net-conf.json there, e.g. {"Network": "10.244.0.0/16", '
                           '"Backend": {"Type": "vxlan"}}') from None
    except (OSError, ValueError) as exc:
        raise StartupError(f"--net-config {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise StartupError(f"--net-config {path}: not a JSON object")
    try:
        parse_net_conf(raw)
    except NetConfError as exc:
        raise StartupError(f"--net-config {path}: {exc}") from None
    return raw


def config_location(args: argparse.Namespace) -> str:
    """Where the store keeps net-conf.json, in words."""
    if args.store == "etcd":
        return f"key {args.etcd_prefix}/config in etcd {args.etcd_endpoints}"
    return f"the store {args.store}"


def load_network_config(store: LeaseStore, path: Path | None,
                        where: str = "the store") -> NetworkConfig:
    from tartan.ipam.netconf import NetConfError

    raw = store.get_config()
    if raw is None:
        if path is None:
            raise NoNetConfig(f"no network config in {where}: write flannel's net-conf.json "
                              "there, or pass --net-config FILE")
        raw = read_net_conf(path)
        store.put_config(raw)
    try:
        return parse_net_conf(raw)
    except NetConfError as exc:
        raise StartupError(f"network config in the store: {exc}") from None


def build(args: argparse.Namespace, log: Log, metrics: Metrics, startup: Startup,
          stop: threading.Event) -> Agent | None:
    """The agent, once what it needs is there (None when stopped while waiting)."""
    from tartan.backends import registry
    from tartan.backends.daemon import Agent, Settings
    from tartan.backends.node import NodeError, discover

    try:
        node = discover(args.iface, args.public_ip)
    except (NodeError, ValueError) as exc:
        raise StartupError(str(exc)) from None
    leases = open_leases(args, log, startup, stop)
    if leases is None:
        return None
    store, manager, net, kube = leases
    backend = registry.create(net, node)
    settings = Settings(args.subnet_file, args.ip_masq, args.reconcile_interval)
    agent = Agent(store, manager, net, node, backend, settings, log, metrics)
    agent.kube = kube
    if kube is not None:
        agent.status_parts["kube"] = kube.status
    return agent


def open_leases(args: argparse.Namespace, log: Log, startup: Startup, stop: threading.Event
                ) -> tuple[LeaseReader, LeaseHolder, NetworkConfig, KubeMode | None] | None:
    """Where the leases come from: the Kubernetes API's Nodes (--kube-subnet-mgr), or the
    lease store with its network config (waited for when it has none)."""
    from tartan.ipam.lease import LeaseManager

    if args.kube_subnet_mgr:
        from tartan.backends.kube import KubeMode

        kube_net = parse_net_conf(read_net_conf(args.net_config))
        kube = KubeMode.connect(args, log)
        startup.parts["kube"] = kube.status
        nodes, holder = kube.node_leases(kube_net)
        return nodes, holder, kube_net, kube
    store = open_store(args)
    net = retrying(lambda: load_network_config(store, args.net_config, config_location(args)),
                   stop, startup, args)
    if net is None:
        return None
    return store, LeaseManager(store, net, ttl=args.lease_ttl), net, None


def serve(startup: Startup, address: str) -> ThreadingHTTPServer:
    from tartan.backends.http import Probes, serve

    probes = Probes(startup.healthy, startup.ready, startup.status, startup.metrics)
    return serve(address, probes)


def serve_cni(agent: Agent, path: str, log: Log, policy: PolicyHost | None) -> CniServer:
    """The plugins' fast path: their requests run here, warm, with the same code."""
    from tartan.cni.server import CniServer

    def observe(plugin: str, container: str, command: str, outcome: str,
                seconds: float) -> None:
        agent.metrics.cni_requests.labels(command or "none", outcome).observe(seconds)
        event = "cni.request" if command else "cni.refused"
        log.info(event, plugin=plugin or None, container=container or None,
                 command=command or None, ms=round(seconds * 1000, 1), outcome=outcome)

    recorder = policy.recorder if policy else None
    server = CniServer(Path(path), observe, served=recorder.served if recorder else None)
    server.start()
    return server


def start_monitor(agent: Agent, log: Log) -> KernelMonitor | None:
    """Hand-made damage to the datapath repaired at once (backends/monitor.py); without the
    kernel's announcements, at the next full pass."""
    from tartan.backends.monitor import KernelMonitor

    try:
        return KernelMonitor(agent.backend.desired, agent.kernel_changed_by_hand).start()
    except OSError as exc:
        log.warn("monitor.unavailable", error=str(exc),
                 note="hand-made damage is repaired at each full pass only")
        return None


def kube_client(agent: Agent, args: argparse.Namespace, log: Log) -> KubeMode | None:
    """tartand's one Kubernetes client (main closes it at exit): the leases'
    (--kube-subnet-mgr), else, for NetworkPolicy from the API alone, one made here and shown
    in /status as "kube" just the same; None when nothing reads the API."""
    if agent.kube is not None:
        return cast("KubeMode", agent.kube)
    if not (args.network_policy and args.policy_source == "kube"):
        return None
    from tartan.backends.kube import KubeMode

    kube = KubeMode.connect(args, log)
    agent.status_parts["kube"] = kube.status
    return kube


def start_policy(agent: Agent, args: argparse.Namespace, log: Log, stop: threading.Event,
                 kube: KubeMode | None = None) -> PolicyHost | None:
    """The NetworkPolicy enforcer beside the routing loop: on the Kubernetes API's objects
    (--policy-source kube, through `kube`: kube_client's), or on the lease store's, whose
    pods this node's CNI ADDs record."""
    if not args.network_policy:
        return None
    from tartan.backends.policy import PolicyHost

    objects: ObjectStore | None = None
    source: PolicySource
    if args.policy_source == "kube":
        assert kube is not None, "kube_client's client, for --policy-source kube"
        source = kube.policy_source()
    else:
        from tartan.netpol.source import StoreSource

        objects = object_store(agent, args)
        source = StoreSource(objects)
    policy = PolicyHost(objects, args.node_name, log, interval=args.policy_resync,
                        log_denied=args.policy_log_denied, metrics=agent.metrics,
                        journal_dir=args.cni_journal, source=source)
    agent.status_parts["networkPolicy"] = policy.status
    policy.start(stop)
    return policy


def object_store(agent: Agent, args: argparse.Namespace) -> ObjectStore:
    """The lease store holds the objects; with --kube-subnet-mgr it is opened for them."""
    if args.kube_subnet_mgr:
        return open_store(args)
    return cast("ClusterStore", agent.store)  # what open_leases opened for the leases


def main(argv: list[str] | None = None) -> int:
    from tartan.backends.metrics import Metrics
    from tartan.ipam.lease import StoreUnusable
    from tartan.ipam.lease_kube import PodCidrOutsideNetwork

    args = parse_args(argv)
    log = Log()
    sys.setswitchinterval(SWITCH_INTERVAL)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    startup = Startup(log, Metrics(), args.node_name)
    server: ThreadingHTTPServer | None = None
    try:
        server = serve(startup, args.http_addr)
        agent = retrying(lambda: build(args, log, startup.metrics, startup, stop), stop,
                         startup, args)
        if agent is None:
            return 0
        startup.agent = agent
        retrying(agent.start, stop, startup, args)
        if stop.is_set():
            return 0
        monitor = start_monitor(agent, log)
        kube = kube_client(agent, args, log)
        policy = start_policy(agent, args, log, stop, kube)
        cni = serve_cni(agent, args.cni_socket, log, policy) if args.cni_socket else None
    except (StartupError, StoreUnusable, PodCidrOutsideNetwork) as exc:
        print(f"tartand: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the edge: one line, never a traceback
        print(f"tartand: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if stop.is_set() and server is not None:
            server.shutdown()
    log.info("agent.started", http=args.http_addr,
             store="kube" if args.kube_subnet_mgr else args.store.split(":")[0])
    agent.run(stop)
    if monitor:
        monitor.stop()
    if cni:
        cni.stop()
    if kube is not None:
        kube.close()
    server.shutdown()
    log.info("agent.stopped", note="datapath left in place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
