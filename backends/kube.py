"""tartand on the Kubernetes API: the client from flannel's flags, the Node reflector behind
the leases (--kube-subnet-mgr), and the NetworkPolicy source (--policy-source kube).

The `kubernetes` client is imported only from here (through ipam/kube_client.py), only in
these modes.
"""

from __future__ import annotations

import argparse

from tartan.backends.log import Log
from tartan.ipam.kube_client import KubeApi, KubeConfigError, connect
from tartan.ipam.kube_watch import Cache, Reflector, WatchSettings
from tartan.ipam.lease_kube import Annotations, KubeLeaseManager, KubeLeaseStore
from tartan.ipam.netconf import NetworkConfig
from tartan.netpol.source_kube import KubeSource

WARNINGS = frozenset({"kube.unavailable", "kube.watch_stalled", "kube.relist",
                      "kube.publish_unseen"})


class KubeMode:
    """One client for every watch tartand keeps (the Node reflector of --kube-subnet-mgr, the
    policy source's), and their state for /status; `close` stops them and the client."""

    def __init__(self, api: KubeApi, node: str, keys: Annotations, log: Log,
                 settings: WatchSettings | None = None) -> None:
        self.api, self.node, self.keys, self.log = api, node, keys, log
        self.settings = settings or WatchSettings()
        self.reflectors: list[Reflector] = []

    @classmethod
    def connect(cls, args: argparse.Namespace, log: Log) -> KubeMode:
        from tartan.backends.agent import StartupError

        try:
            keys = Annotations.parse(args.kube_annotation_prefix)
            api = connect(args.kubeconfig_file, args.kube_api_url)
        except (KubeConfigError, ValueError) as exc:
            raise StartupError(str(exc)) from None
        return cls(api, args.node_name, keys, log,
                   WatchSettings(stall_timeout=args.kube_stall_timeout))

    def report(self, event: str, fields: dict[str, object]) -> None:
        level = self.log.warn if event in WARNINGS else self.log.info
        level(event, api=self.api.url, **fields)

    def node_leases(self, net: NetworkConfig) -> tuple[KubeLeaseStore, KubeLeaseManager]:
        """The Node reflector, started, and the leases over it."""
        cache = Cache()
        reflector = Reflector("nodes", self.api.core().list_node, cache,
                              settings=self.settings, report=self.report).start()
        self.reflectors.append(reflector)
        leases = KubeLeaseStore(self.api.core(), self.node, self.keys, cache, reflector,
                                self.api.url, report=self.report)
        return leases, KubeLeaseManager(leases, net)

    def policy_source(self) -> KubeSource:
        """Pods, Namespaces and NetworkPolicies, each listed and watched (started by the
        policy host)."""
        source = KubeSource(self.api.core(), self.api.networking(), self.api.url,
                            settings=self.settings, report=self.report)
        self.reflectors.extend(source.reflectors)
        return source

    def status(self) -> dict[str, object]:
        watches = [r.state() for r in self.reflectors]
        errors = [str(w["error"]) for w in watches if w.get("error")]
        return {"apiServer": self.api.url, "nodeName": self.node,
                "annotationPrefix": self.keys.prefix, "reachable": not errors,
                "error": errors[0] if errors else None, "watches": watches}

    def close(self) -> None:
        for reflector in self.reflectors:
            reflector.stop()
        self.api.close()
