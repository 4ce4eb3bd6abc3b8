"""For the kube tests: short watch timings, and Nodes as kubelet, kube-controller-manager and
flanneld leave them."""

from __future__ import annotations

from tartan.ipam.kube_watch import WatchSettings

# short timings, so that every recovery happens within a test's second or two
FAST = WatchSettings(watch_timeout=30, stall_timeout=0.6, connect_timeout=2, list_timeout=5,
                     backoff_initial=0.05, backoff_max=0.4)


def node(name: str, pod_cidr: str | None = None, annotations: dict | None = None,
         address: str | None = None) -> dict:
    obj: dict = {"metadata": {"name": name, "annotations": dict(annotations or {})},
                 "spec": {}, "status": {}}
    if pod_cidr:
        obj["spec"] = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    if address:
        obj["status"]["addresses"] = [{"type": "InternalIP", "address": address}]
    return obj


def flannel_node(name: str, pod_cidr: str, public_ip: str, mac: str, vni: int = 1,
                 prefix: str = "flannel.alpha.coreos.com") -> dict:
    """A node as flanneld (vxlan) leaves it: its annotations in flannel's exact text."""
    return node(name, pod_cidr, {
        f"{prefix}/backend-data": f'{{"VNI":{vni},"VtepMAC":"{mac}"}}',
        f"{prefix}/backend-type": "vxlan",
        f"{prefix}/kube-subnet-manager": "true",
        f"{prefix}/public-ip": public_ip,
    }, public_ip)
