"""Node subnet leases from the Kubernetes API, as flannel's kube subnet manager keeps them.

A node's subnet is its `spec.podCIDR` (the IPv4 one of `spec.podCIDRs`), which
kube-controller-manager (`--allocate-node-cidrs`) assigns: Tartan never allocates one. What
the other nodes need to reach it is published on its Node as flannel's annotations (prefix
`--kube-annotation-prefix`, default `flannel.alpha.coreos.com`):

    flannel.alpha.coreos.com/backend-type:        vxlan
    flannel.alpha.coreos.com/backend-data:        {"VNI":1,"VtepMAC":"8a:..."}  (host-gw: null)
    flannel.alpha.coreos.com/public-ip:           198.18.1.11
    flannel.alpha.coreos.com/kube-subnet-manager: "true"

written with one strategic-merge PATCH of the node's status subresource (as flannel does, so
the same RBAC rule, `nodes/status: patch`, suffices). A node with a podCIDR and those
annotations is a lease, written by Tartan or by flanneld alike, so a cluster can move from
flannel to Tartan node by node. Peers come from a list + watch of Nodes (ipam/kube_watch.py).

Why not the `LeaseStore` protocol of lease.py: its writes are a compare-and-set allocation of
a free subnet with a TTL, renewed by the holder. Here nothing is allocated, nothing expires
and the only write is the own node's annotations. So `KubeLeaseStore` gives the read half of
it (`list_leases`, `lease_changes`, `wait`, `close`: daemon.LeaseReader, all the agent's loop
reads; net-conf.json comes from --net-config, flannel keeps none in the API), and
`KubeLeaseManager` stands where `LeaseManager` stands: `acquire` waits for the podCIDR and
publishes the annotations, `renew` has nothing to do.

The PATCH comes back through the Node watch, usually within milliseconds, but a lagging
watch must not make the agent think its lease lost (and PATCH again on every pass): from a
PATCH the API accepted until the watch shows it (or `PUBLISHED_TRUST` seconds, after which
the cache is believed again), the own lease is the node's podCIDR with what was published.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from tartan.ipam.kube_watch import Cache, CacheChanges, Reflector, Report, describe_error
from tartan.ipam.lease import Lease, LeaseAttrs, LeaseChanges, LeaseError, StoreUnavailable
from tartan.ipam.netconf import NetworkConfig

DEFAULT_ANNOTATION_PREFIX = "flannel.alpha.coreos.com"  # flannel's --kube-annotation-prefix
PUBLISHED_WAIT = 5.0  # seconds acquire waits to see its PATCH come back through the watch
PUBLISHED_TRUST = 60.0  # seconds an accepted PATCH stands for the annotations not yet seen
FIRST_LIST_WAIT = 2.0  # seconds acquire gives the first list before it says it waits
_PREFIX = re.compile(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?")


class KubeUnavailable(StoreUnavailable):
    """The Kubernetes API cannot be reached or has not been listed yet."""


class NodeNotReady(LeaseError):
    """This node's Node object does not exist yet ("node"), or has no podCIDR yet
    ("podCIDR"): wait."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what


class PodCidrOutsideNetwork(LeaseError):
    """The node's podCIDR is not inside net-conf.json's Network."""


@dataclass(frozen=True)
class Annotations:
    """The annotation keys under one prefix, named as flannel names them."""

    prefix: str

    @classmethod
    def parse(cls, prefix: str) -> Annotations:
        """flannel's rules: `fqdn`, `fqdn/` or `fqdn/name` (then `name-` is prepended to each
        key); ValueError with the rule otherwise."""
        if prefix.count("/") > 1:
            raise ValueError(f"--kube-annotation-prefix {prefix!r}: at most one '/'")
        full = prefix if "/" in prefix else prefix + "/"
        if not full.endswith(("/", "-")):
            full += "-"
        if not _PREFIX.fullmatch(full):
            raise ValueError(f"--kube-annotation-prefix {prefix!r}: use a lower-case domain "
                             "name, optionally followed by /name (flannel.alpha.coreos.com)")
        return cls(full)

    @property
    def managed(self) -> str:
        return self.prefix + "kube-subnet-manager"

    @property
    def backend_data(self) -> str:
        return self.prefix + "backend-data"

    @property
    def backend_type(self) -> str:
        return self.prefix + "backend-type"

    @property
    def public_ip(self) -> str:
        return self.prefix + "public-ip"

    def of(self, attrs: LeaseAttrs) -> dict[str, str]:
        """What a node holding `attrs` carries, in flannel's exact text (Go's compact JSON;
        `null` for a backend without data, as flannel's host-gw writes)."""
        data = json.dumps(attrs.backend_data, separators=(",", ":")) if attrs.backend_data \
            else "null"
        return {self.backend_data: data, self.backend_type: attrs.backend_type,
                self.public_ip: attrs.public_ip, self.managed: "true"}


def pod_cidr(node: Mapping[str, Any]) -> IPv4Network | None:
    """The node's IPv4 pod subnet: of spec.podCIDRs (dual-stack lists one of each family),
    else spec.podCIDR; None when there is none (yet) or it does not parse."""
    spec = node.get("spec") or {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    for text in cidrs:
        try:
            net = ipaddress.ip_network(str(text), strict=False)
        except ValueError:
            continue
        if isinstance(net, IPv4Network):
            return net
    return None


def node_name(node: Mapping[str, Any]) -> str:
    return str((node.get("metadata") or {}).get("name") or "")


def node_attrs(node: Mapping[str, Any], keys: Annotations) -> LeaseAttrs | None:
    """What the node's annotations say, if they make a lease (flannel's test: the
    kube-subnet-manager annotation is "true"); None otherwise."""
    notes = (node.get("metadata") or {}).get("annotations") or {}
    if notes.get(keys.managed) != "true" or not notes.get(keys.backend_type):
        return None
    try:
        data = json.loads(notes.get(keys.backend_data) or "null")
        if data is not None and not isinstance(data, dict):
            return None
        return LeaseAttrs.from_dict({"PublicIP": notes.get(keys.public_ip),
                                     "BackendType": notes[keys.backend_type],
                                     "BackendData": data or {}})
    except ValueError:
        return None


def node_lease(node: Mapping[str, Any], keys: Annotations, version: int) -> Lease | None:
    subnet, attrs = pod_cidr(node), node_attrs(node, keys)
    if subnet is None or attrs is None:
        return None
    return Lease(subnet, attrs, math.inf, version)


class KubeLeaseStore:
    """The leases of a Node reflector's cache (see the module's docstring)."""

    def __init__(self, core: Any, node: str, keys: Annotations, cache: Cache,
                 reflector: Reflector, url: str, report: Report | None = None) -> None:
        self.core, self.node, self.keys = core, node, keys
        self.cache, self.reflector, self.url = cache, reflector, url
        self.report = report or (lambda event, fields: None)
        # what the last accepted PATCH wrote, until the watch shows it (or this monotonic
        # time passes): the own lease meanwhile (see the module's docstring)
        self.published: LeaseAttrs | None = None
        self.published_until = 0.0

    def list_leases(self) -> tuple[list[Lease], int]:
        self._synced()
        revision = self.cache.revision
        leases = [lease for node in self.cache.items().values()
                  if (lease := self._lease_of(node, revision)) is not None]
        return sorted(leases, key=lambda lease: lease.subnet), revision

    def lease_changes(self, since: int) -> LeaseChanges | None:
        self._synced()
        changes = self.cache.changes(since)
        return None if changes is None else self._leases_of(changes)

    def _leases_of(self, changes: CacheChanges) -> LeaseChanges:
        changed: list[Lease] = []
        deleted: list[IPv4Network] = []
        for node in changes.changed.values():
            lease = self._lease_of(node, changes.revision)
            if lease is not None:
                changed.append(lease)
            elif (subnet := pod_cidr(node)) is not None:  # its annotations are gone
                deleted.append(subnet)
        for node in changes.deleted.values():
            if (subnet := pod_cidr(node)) is not None:
                deleted.append(subnet)
        leased = {lease.subnet for lease in changed}
        return LeaseChanges(changes.revision, changed,
                            [subnet for subnet in deleted if subnet not in leased])

    def _lease_of(self, node: Mapping[str, Any], revision: int) -> Lease | None:
        """The node's lease; for this node, while its PATCH is not seen yet, the podCIDR
        with the annotations that PATCH wrote."""
        published = self.published
        if published is not None and node_name(node) == self.node:
            if self._shows(self.keys.of(published), node):
                self.published = None  # seen: the Node speaks for itself from now on
            elif time.monotonic() < self.published_until and (
                    subnet := pod_cidr(node)) is not None:
                return Lease(subnet, published, math.inf, revision)
        return node_lease(node, self.keys, revision)

    def wait(self, revision: int, timeout: float) -> int:
        return self.cache.notifier.wait(revision, timeout)

    def close(self) -> None:
        self.reflector.stop()

    # -- this node ---------------------------------------------------------------------

    def own_node(self) -> dict[str, Any] | None:
        self.cache.wait_synced(FIRST_LIST_WAIT)
        self._synced()
        return self.cache.get(self.node)

    def publish(self, attrs: LeaseAttrs) -> None:
        """PATCH this node's annotations (status subresource, strategic merge)."""
        body = {"metadata": {"annotations": self.keys.of(attrs)}}
        try:
            self.core.patch_node_status(
                self.node, body, _content_type="application/strategic-merge-patch+json",
                _request_timeout=(10, 30))
        except Exception as exc:
            raise KubeUnavailable(f"PATCH of node {self.node}'s annotations at {self.url}: "
                                  f"{describe_error(exc)}") from None
        self.published, self.published_until = attrs, time.monotonic() + PUBLISHED_TRUST

    def pending(self, attrs: LeaseAttrs) -> bool:
        """`attrs` were PATCHed and the watch has not shown them yet (within the trust)."""
        return self.published == attrs and time.monotonic() < self.published_until

    def wait_published(self, attrs: LeaseAttrs, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        wanted = self.keys.of(attrs)
        revision = self.cache.revision
        while not self._shows(wanted):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            revision = self.cache.notifier.wait(revision, left)
        return True

    def _shows(self, wanted: Mapping[str, str], node: Mapping[str, Any] | None = None
               ) -> bool:
        """This node (as cached, or `node`) carries the annotations `wanted`."""
        if node is None:
            node = self.cache.get(self.node) or {}
        notes = (node.get("metadata") or {}).get("annotations") or {}
        return all(notes.get(key) == value for key, value in wanted.items())

    def _synced(self) -> None:
        if not self.cache.synced:
            error = self.reflector.error or "no answer yet"
            raise KubeUnavailable(f"the Kubernetes API at {self.url} has not listed nodes: "
                                  f"{error}")


class KubeLeaseManager:
    """This node's lease: its podCIDR, once the Node has one; the annotations published."""

    def __init__(self, store: KubeLeaseStore, net: NetworkConfig,
                 published_wait: float = PUBLISHED_WAIT) -> None:
        self.store, self.net, self.published_wait = store, net, published_wait

    def acquire(self, attrs: LeaseAttrs, previous: IPv4Network | None = None) -> Lease:
        """The podCIDR, once there, with `attrs` published. `previous` (the subnet held
        before, as daemon.LeaseHolder passes it) is not asked for: a Node has one podCIDR."""
        node = self.store.own_node()
        name = self.store.node
        if node is None:
            raise NodeNotReady(f"waiting for Node {name} to exist in the Kubernetes API "
                               f"(--node-name {name}; kubelet registers it)", "node")
        subnet = pod_cidr(node)
        if subnet is None:
            raise NodeNotReady(f"waiting for Node {name} to get spec.podCIDR (assigned by "
                               "kube-controller-manager --allocate-node-cidrs)", "podCIDR")
        if not subnet.subnet_of(self.net.network):
            raise PodCidrOutsideNetwork(
                f"Node {name}'s podCIDR {subnet} is outside Network {self.net.network} of "
                "net-conf.json: make it the cluster CIDR of kube-controller-manager")
        if self.store._shows(self.store.keys.of(attrs)):
            self.store.published = None  # the Node speaks for itself
        elif not self.store.pending(attrs):  # (a PATCH of them accepted, not yet seen: no)
            self.store.publish(attrs)
            if self.store.wait_published(attrs, self.published_wait):
                self.store.published = None
            else:
                # accepted, not seen yet: the lease stands on the PATCH (`_lease_of`), and
                # the watch is reported lagging; nothing is PATCHed again for it
                self.store.report("kube.publish_unseen", {
                    "node": name, "seconds": self.published_wait,
                    "note": f"the Node watch has not shown the annotations yet; trusted for "
                            f"{PUBLISHED_TRUST:g} s"})
        return Lease(subnet, attrs, math.inf, self.store.cache.revision)

    def renew(self, lease: Lease, attrs: LeaseAttrs | None = None) -> Lease:
        return lease  # no TTL: the node holds its podCIDR as long as it exists

    def needs_renewal(self, lease: Lease) -> bool:
        return False
