"""NetworkPolicy from the Kubernetes API (netpol/source_kube.py) against the test API server:
pods, namespaces and policies listed and watched, updates and deletes, invalid objects, this
node's pods against all; and the enforcer fed by it compiles what StoreSource gives."""

from __future__ import annotations

import copy
import io
import ipaddress
import threading
from collections.abc import Iterator

import pytest
from kube_kit import FAST

from tartan.backends import policy as policy_host
from tartan.backends.log import Log
from tartan.cni import journal
from tartan.ipam.lease_kube import KubeUnavailable
from tartan.ipam.lease_memory import MemoryLeaseStore
from tartan.netpol.compiler import Compiled
from tartan.netpol.enforcer import Enforcer
from tartan.netpol.source import StoreSource
from tartan.netpol.source_kube import KubeSource

from harness import eventually

WAIT = 5.0


def pod(ns: str, name: str, node: str, ip: str | None, phase: str = "Running",
        **labels: str) -> dict:
    obj = {"metadata": {"namespace": ns, "name": name, "labels": labels},
           "spec": {"nodeName": node, "containers": [
               {"name": "c", "ports": [{"containerPort": 80, "name": "http"}]}]},
           "status": {"phase": phase}}
    if ip:
        obj["status"].update({"podIP": ip, "podIPs": [{"ip": ip}]})
    return obj


def namespace(name: str, **labels: str) -> dict:
    return {"metadata": {"name": name, "labels": labels}}


def policy(ns: str, name: str, spec: dict) -> dict:
    return {"metadata": {"namespace": ns, "name": name}, "spec": spec}


DENY = {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "web"}},
                               "podSelector": {"matchLabels": {"app": "web"}}}],
                     "ports": [{"port": "http"}]}]}
BROKEN = {"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}


def populate(api_server) -> None:
    api_server.create("namespaces", namespace("x", team="db"))
    api_server.create("namespaces", namespace("y", team="web"))
    api_server.create("pods", pod("x", "db1", "node1", "10.244.1.5", app="db"))
    api_server.create("pods", pod("x", "db2", "node2", "10.244.2.5", app="db"))
    api_server.create("pods", pod("y", "web1", "node2", "10.244.2.6", app="web"))
    api_server.create("pods", pod("y", "web2", "node3", "10.244.3.6", app="web"))
    api_server.create("networkpolicies", policy("x", "db", DENY))


@pytest.fixture
def source(kube) -> Iterator[KubeSource]:
    made = KubeSource(kube.core(), kube.networking(), kube.url, settings=FAST)
    try:
        yield made
    finally:
        made.stop()


def synced(source: KubeSource):
    source.start()
    return eventually(lambda: _try(source.snapshot), WAIT, what="the first snapshot")


def _try(call):
    try:
        return call()
    except KubeUnavailable:
        return None


def settle(source: KubeSource, api_server, check) -> object:
    """The snapshot once the source has caught up with the server (every reflector at the
    server's resourceVersion: bookmarks bring them there) and `check` holds."""
    def caught_up():
        current = str(api_server.rv)
        behind = {r.resource: r.resource_version for r in source.reflectors
                  if r.resource_version != current}
        assert not behind, f"behind the server's {current}: {behind}"
        snap = source.snapshot()
        assert check(snap), snap
        return snap
    return eventually(caught_up, WAIT, what="the source caught up")


def test_nothing_before_every_resource_is_listed(api_server, source):
    api_server.fail(100, 500, "networkpolicies")
    source.start()
    eventually(lambda: source.reflectors[2].error, WAIT, what="a failed policy list")
    with pytest.raises(KubeUnavailable, match="has not listed networkpolicies: HTTP 500"):
        source.snapshot()


def test_pods_namespaces_and_policies_from_the_api(api_server, source):
    populate(api_server)
    snap = synced(source)
    pods = {p.key: p for p in snap.cluster.pods}
    assert sorted(pods) == ["x/db1", "x/db2", "y/web1", "y/web2"]
    assert pods["x/db1"].ips == (ipaddress.ip_address("10.244.1.5"),)
    assert pods["x/db1"].node == "node1" and pods["x/db1"].labels == {"app": "db"}
    assert pods["x/db1"].named_port("http", pods["x/db1"].ports[0].protocol) == 80
    assert [ns.name for ns in snap.cluster.namespaces] == ["x", "y"]
    assert [p.key for p in snap.cluster.policies] == ["x/db"]
    assert [p.key for p in snap.cluster.pods_on("node1")] == ["x/db1"]  # its own chains
    assert not snap.problems
    assert source.snapshot() is snap  # nothing changed: the very same snapshot


def test_updates_and_deletes_follow_and_unchanged_kinds_are_reused(api_server, source):
    populate(api_server)
    first = synced(source)
    api_server.patch_object("pods", "web2", {"metadata": {"labels": {"app": "other"}}}, "y")
    api_server.delete("pods", "db2", "x")
    after = settle(source, api_server, lambda s: len(s.cluster.pods) == 3 and any(
        p.labels.get("app") == "other" for p in s.cluster.pods))
    assert sorted(p.key for p in after.cluster.pods) == ["x/db1", "y/web1", "y/web2"]
    assert after.cluster.policies is first.cluster.policies  # untouched: reused
    assert after.cluster.namespaces is first.cluster.namespaces
    api_server.delete("networkpolicies", "db", "x")
    gone = settle(source, api_server, lambda s: not s.cluster.policies)
    assert gone.revision > after.revision
    assert source.listings == 3  # one per resource, at the first snapshot only


def test_an_invalid_policy_is_reported_and_left_out(api_server, source):
    populate(api_server)
    api_server.create("networkpolicies", policy("x", "broken", BROKEN))
    snap = synced(source)
    assert [p.key for p in snap.cluster.policies] == ["x/db"]
    (problem,) = snap.problems
    assert "NetworkPolicy x/broken" in problem.message and "70000" in problem.message
    fixed = copy.deepcopy(BROKEN)
    fixed["ingress"][0]["ports"][0]["port"] = 7000
    api_server.patch_object("networkpolicies", "broken", {"spec": fixed}, "x")
    later = settle(source, api_server, lambda s: len(s.cluster.policies) == 2)
    assert not later.problems


def test_a_finished_pod_keeps_no_addresses_and_a_pending_one_has_none(api_server, source):
    api_server.create("pods", pod("x", "done", "node1", "10.244.1.9", phase="Succeeded"))
    api_server.create("pods", pod("x", "new", "node1", None, phase="Pending"))
    snap = synced(source)
    assert {p.key: p.ips for p in snap.cluster.pods} == {"x/done": (), "x/new": ()}


def test_a_relist_after_410_gives_the_same_cluster(api_server, source):
    populate(api_server)
    synced(source)
    eventually(lambda: api_server.open_watches("pods") == 1, WAIT, what="a pod watch")
    api_server.stall("pods")
    api_server.delete("pods", "web1", "y")
    api_server.compact()
    snap = settle(source, api_server, lambda s: len(s.cluster.pods) == 3)
    assert source.reflectors[1].counts["relists"] == 1
    assert "y/web1" not in {p.key for p in snap.cluster.pods}


def test_wait_wakes_on_a_change_of_any_resource(api_server, source):
    snap = synced(source)
    api_server.create("namespaces", namespace("z"))
    assert source.wait(snap.revision, WAIT) != snap.revision


# -- the enforcer on it ---------------------------------------------------------------


def store_for(api_server) -> MemoryLeaseStore:
    """The same objects as the test server holds, as `tartanctl apply` and the nodes' CNI
    records would have put them in the store."""
    store = MemoryLeaseStore()
    for resource in ("namespaces", "pods", "networkpolicies"):
        for (ns, name), obj in api_server.objects[resource].items():
            manifest = {k: v for k, v in copy.deepcopy(obj).items() if k != "status"}
            key = f"{ns}/{name}" if ns else name
            store.put_object(resource, key, manifest)
            if resource == "pods" and obj["status"].get("podIPs"):
                store.put_object("podips", key, {
                    "ips": [e["ip"] for e in obj["status"]["podIPs"]],
                    "node": obj["spec"]["nodeName"]})
    return store


class Recorder:
    def __init__(self) -> None:
        self.applied: list[Compiled] = []

    def __call__(self, compiled: Compiled, previous: Compiled | None = None) -> int:
        self.applied.append(compiled)
        return 1


def compiled_by(source, node: str = "node1") -> Compiled:
    record = Recorder()
    Enforcer(source, node, lambda: ["198.18.1.11"], lambda event, fields: None,
             apply=record, prepare=lambda: None).sync()
    return record.applied[-1]


def test_the_enforcer_compiles_the_same_sets_and_rules_as_from_the_store(api_server, source):
    populate(api_server)
    api_server.create("networkpolicies", policy("y", "egress", {
        "podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                        "except": ["10.244.3.0/24"]}}]}]}))
    synced(source)
    for node in ("node1", "node2", "node3"):
        from_kube = compiled_by(source, node)
        from_store = compiled_by(StoreSource(store_for(api_server)), node)
        assert from_kube.sets == from_store.sets, node
        assert from_kube.table() == from_store.table(), node
        assert from_kube.isolated == from_store.isolated, node
    node1 = compiled_by(source, "node1")
    # node1 has only x/db1: its chains; the peer set holds the web pods of other nodes
    assert list(node1.isolated) and all("x/db" in pols for pols in node1.isolated.values())
    members = {member for s in node1.sets for member in s.members}
    assert {"10.244.2.6", "10.244.3.6"} <= members and "10.244.2.5" not in members


def test_with_the_api_as_source_the_cni_journal_is_emptied(tmp_path, monkeypatch):
    """No pod recorder reads the journal (the API has the pods): what the plugins leave
    there while no agent answers is discarded, at start and at every drain after."""
    monkeypatch.setattr(policy_host, "DRAIN_INTERVAL", 0.05)
    env = {"CNI_ARGS": "K8S_POD_NAMESPACE=x;K8S_POD_NAME=a", "CNI_CONTAINERID": "c1",
           "CNI_IFNAME": "eth0"}
    result = '{"ips": [{"address": "10.244.1.5/24"}]}'
    assert journal.note("ADD", env, 0, result, tmp_path)
    assert journal.note("DEL", env, 0, "", tmp_path)
    out = io.StringIO()
    host = policy_host.PolicyHost(None, "node1", Log(out), interval=60, log_denied=False,
                                  journal_dir=str(tmp_path), source=object())
    host.enforcer.run = lambda stop: None  # no kernel here: the journal is the point
    stop = threading.Event()
    try:
        host.start(stop)
        assert journal.entries(tmp_path) == []  # at start, before the CNI socket serves
        assert "event=pod.journal_discarded requests=2" in out.getvalue()
        assert journal.note("ADD", env, 0, result, tmp_path)
        eventually(lambda: journal.entries(tmp_path) == [], WAIT, what="a later drain")
    finally:
        stop.set()
