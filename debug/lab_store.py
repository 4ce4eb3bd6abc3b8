"""The lab's lease store: a SQLite file shared by the nodes, or a real etcd in the router.

etcd runs inside the router namespace on the router's segment-1 address, so every node
reaches it over the underlay and the host's ports stay untouched. The lab reads and deletes
leases itself (`lab status`, `lab leave`): from etcd through its JSON gateway (from a thread
inside the router namespace), keyed as flannel keys them
(`<prefix>/subnets/10.244.3.0-24`); from SQLite through Tartan's own lease store.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tartan.debug import lab_plan as plan
from tartan.debug.lab_http import Unreachable, call_in_netns, json_in
from tartan.debug.lab_sys import LabError, Sys, alive, in_netns

if TYPE_CHECKING:
    from tartan.ipam.lease_sqlite import SqliteLeaseStore
    from tartan.ipam.objects import ObjectStore

T = TypeVar("T")


@dataclass
class LeaseRow:
    """A lease as the lab shows it, read from either store."""

    subnet: str
    public_ip: str
    backend: str
    expires: float | None  # epoch seconds; None when the store does not say


def sqlite_path(lab_dir: Path) -> Path:
    return lab_dir / "leases.db"


def tartand_store_args(store: str, lab_dir: Path) -> list[str]:
    if store == "sqlite":
        return ["--store", f"sqlite:{sqlite_path(lab_dir)}"]
    return ["--store", "etcd", "--etcd-endpoints", plan.etcd_endpoint(),
            "--etcd-prefix", plan.ETCD_PREFIX]


# ------------------------------------------------------------------------------ etcd


def etcd_argv(lab: str, lab_dir: Path) -> list[str]:
    client = plan.etcd_endpoint()
    peer = f"http://127.0.0.1:{plan.ETCD_PEER_PORT}"
    return in_netns(plan.router_netns(lab), [
        "etcd", "--name", lab, "--data-dir", str(lab_dir / "etcd"),
        "--listen-client-urls", f"{client},http://127.0.0.1:{plan.ETCD_PORT}",
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{lab}={peer}", "--initial-cluster-state", "new",
        "--log-outputs", "stderr", "--logger", "zap",
    ])


def start_etcd(sys: Sys, lab: str, lab_dir: Path, timeout: float = 30.0) -> int:
    """etcd in the router namespace; its pid once it answers /health."""
    log = lab_dir / "etcd.log"
    pid = sys.spawn(etcd_argv(lab, lab_dir), log=log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            raise LabError(f"etcd exited at start; its log {log} ends with: "
                           + " | ".join(_tail(log)))
        if etcd_healthy(lab):
            return pid
        time.sleep(0.2)
    raise LabError(f"etcd did not become healthy within {timeout:.0f}s (log: {log})")


def _tail(log: Path, n: int = 3) -> list[str]:
    try:
        return log.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def etcd_healthy(lab: str) -> bool:
    try:
        return json_in(plan.router_netns(lab), f"{plan.etcd_endpoint()}/health").get(
            "health") in ("true", True)
    except (Unreachable, ValueError):
        return False


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")


def _etcd(lab: str, path: str, body: dict) -> dict:
    try:
        return json_in(plan.router_netns(lab), f"{plan.etcd_endpoint()}{path}", body)
    except Unreachable as exc:
        raise LabError(f"etcd of lab {lab} is not answering: {exc}") from None


def subnets_prefix(prefix: str = plan.ETCD_PREFIX) -> str:
    return f"{prefix}/subnets/"


def key_to_subnet(key: str) -> str:
    """flannel's key `<prefix>/subnets/10.244.3.0-24` -> 10.244.3.0/24."""
    return key.rsplit("/", 1)[-1].replace("-", "/")


def lease_from_value(subnet: str, value: str, expires: float | None) -> LeaseRow:
    """A lease from flannel's JSON value (PublicIP, BackendType, BackendData)."""
    try:
        attrs = json.loads(value)
    except ValueError:
        attrs = {}
    return LeaseRow(subnet, str(attrs.get("PublicIP", "?")), str(attrs.get("BackendType", "?")),
                 expires)


def etcd_leases(lab: str) -> list[LeaseRow]:
    start = subnets_prefix()
    end = start[:-1] + chr(ord(start[-1]) + 1)
    kvs = _etcd(lab, "/v3/kv/range", {"key": _b64(start), "range_end": _b64(end)}).get(
        "kvs", [])
    return [lease_from_value(key_to_subnet(_unb64(kv["key"])), _unb64(kv.get("value", "")),
                             _etcd_expiry(lab, kv.get("lease"))) for kv in kvs]


def _etcd_expiry(lab: str, lease_id: str | None) -> float | None:
    if not lease_id or lease_id == "0":
        return None
    ttl = _etcd(lab, "/v3/lease/timetolive", {"ID": lease_id}).get("TTL")
    return time.time() + int(ttl) if ttl is not None and int(ttl) >= 0 else None


def etcd_delete(lab: str, subnet: str) -> bool:
    key = subnets_prefix() + subnet.replace("/", "-")
    return int(_etcd(lab, "/v3/kv/deleterange", {"key": _b64(key)}).get("deleted", 0)) > 0


# ---------------------------------------------------------------------------- sqlite


def _sqlite_store(lab_dir: Path) -> SqliteLeaseStore:
    from tartan.ipam.lease_sqlite import SqliteLeaseStore

    return SqliteLeaseStore(sqlite_path(lab_dir))


def sqlite_leases(lab_dir: Path) -> list[LeaseRow]:
    if not sqlite_path(lab_dir).exists():
        return []
    store = _sqlite_store(lab_dir)
    try:
        found, _revision = store.list_leases()
    finally:
        store.close()
    return [LeaseRow(str(x.subnet), x.attrs.public_ip, x.attrs.backend_type,
                  None if math.isinf(x.expiration) else x.expiration) for x in found]


def sqlite_delete(lab_dir: Path, subnet: str) -> bool:
    store = _sqlite_store(lab_dir)
    try:
        store.delete(ipaddress.IPv4Network(subnet))
    finally:
        store.close()
    return True


# ------------------------------------------------------------------------------ both


def leases(store: str, lab: str, lab_dir: Path) -> list[LeaseRow]:
    found = etcd_leases(lab) if store == "etcd" else sqlite_leases(lab_dir)
    return sorted(found, key=lambda lease: _subnet_key(lease.subnet))


def delete_lease(store: str, lab: str, lab_dir: Path, subnet: str) -> bool:
    if store == "etcd":
        return etcd_delete(lab, subnet)
    return sqlite_delete(lab_dir, subnet)


def _subnet_key(subnet: str) -> tuple:
    try:
        return tuple(int(x) for x in subnet.replace("/", ".").split("."))
    except ValueError:
        return (999, subnet)


# --------------------------------------------------------------------------- objects


def with_store(store: str, lab: str, lab_dir: Path, work: Callable[[ObjectStore], T]) -> T:
    """work(the lab's store, as tartand opens it), closed after; LabError when it fails.
    etcd listens in the router namespace only: there the store is opened and used in a
    thread that entered it."""
    from tartan.ipam.lease import StoreUnavailable, StoreUnusable, open_store
    from tartan.ipam.objects import InvalidObjectKey

    def body() -> T:
        url = plan.etcd_endpoint() if store == "etcd" else f"sqlite:{sqlite_path(lab_dir)}"
        opened = open_store(url, prefix=plan.ETCD_PREFIX)
        try:
            return work(opened)
        finally:
            opened.close()

    try:
        return call_in_netns(plan.router_netns(lab), body) if store == "etcd" else body()
    except (StoreUnavailable, StoreUnusable, InvalidObjectKey) as exc:
        raise LabError(f"the store of lab {lab}: {exc}") from None


def forget_pods(store: str, lab: str, lab_dir: Path, keys: Iterable[str]) -> list[str]:
    """Delete the Pod objects and address records of pods that are gone with their node (its
    tartand, stopped first, cannot forget them); the keys that had either."""
    from tartan.ipam.objects import POD_IPS, PODS

    def work(objects: ObjectStore) -> list[str]:
        return [key for key in keys
                if [objects.delete_object(kind, key) for kind in (PODS, POD_IPS)] != [False] * 2]

    return with_store(store, lab, lab_dir, work)
