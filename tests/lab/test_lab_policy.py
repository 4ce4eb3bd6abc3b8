"""NetworkPolicy in the lab, for real: upstream e2e's model (namespaces x, y, z; pods a, b, c in
each, serving TCP and UDP on 80 and 81) applied with `tartanctl lab apply`, probed from inside
the pods with `lab probe-matrix` and compared with `policy explain` of the lab's store.

One lab for the module: 2 nodes, vxlan, sqlite, no pods of `up`'s own. Each case applies its
policies, waits until every node's enforcer has synced the store's revision (its /status),
probes only the ports it needs, and deletes its policies again.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from lab_env import (
    KEYS,
    ctl,
    down_clean,
    lab_name,
    model,
    pod_manifest,
    pods_json,
    policy,
)

from tartan.debug import lab_agents, lab_objects, lab_probe
from tartan.debug.lab import Lab, UpOptions
from tartan.debug.lab_sys import alive, in_namespace
from tartan.netpol.model import Protocol

from harness import eventually

pytestmark = pytest.mark.kernel

DENY_INGRESS_X = policy("x", "deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]})
ALLOW_FROM_Y = policy("x", "allow-from-y", {"podSelector": {}, "ingress": [{"from": [
    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}]})
DENY_EGRESS_Y = policy("y", "deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]})
NAMED_PORT = policy("x", "allow-serve-81-tcp", {"podSelector": {}, "ingress": [
    {"ports": [{"port": "serve-81-tcp"}]}]})


def synced(lab: Lab, revision: int) -> bool:
    """Every node's enforcer has applied the store at `revision` or later."""
    for node in lab.load().nodes:
        doc = (lab_agents.status(node) or {}).get("networkPolicy") or {}
        if not doc.get("synced") or doc.get("error") or doc.get("revision", -1) < revision:
            return False
    return True


def wait_synced(lab: Lab) -> None:
    revision = lab_objects.with_store(lab, lab.load(), lambda s: s.list_objects()[1])
    eventually(lambda: synced(lab, revision), timeout=20,
               what=f"every node's enforcer at store revision {revision}")


def change(lab: Lab, command: str, *docs: dict) -> subprocess.CompletedProcess:
    result = ctl(lab, command, "-f", "-", text=yaml.safe_dump_all(docs))
    assert result.returncode == 0, result.stdout + result.stderr
    wait_synced(lab)
    return result


def matrix(lab: Lab, ports: str = "80,81", protocols: str = "tcp,udp") -> dict:
    run = ctl(lab, "probe-matrix", "--ports", ports, "--protocols", protocols, "-o", "json")
    doc = json.loads(run.stdout)
    assert run.returncode == (0 if doc["ok"] else 1)
    return doc


def denied(doc: dict) -> set[tuple[str, str, int, str]]:
    return {(c["from"], c["to"], c["port"], c["protocol"]) for c in doc["observed"]
            if not c["allowed"]}


def flows(srcs: list[str], dsts: list[str], ports=(80,), protocols=("TCP",)) -> set:
    return {(s, d, p, proto) for s in srcs for d in dsts for p in ports for proto in protocols
            if s != d}


def keys(ns: str) -> list[str]:
    return [k for k in KEYS if k.startswith(f"{ns}/")]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(lab_name(), say=print)
    listeners: list[int] = []
    try:
        lab.up(UpOptions("vxlan", "sqlite", nodes=2, pods_per_node=0, reconcile_interval=1.0))
        applied = ctl(lab, "apply", "-f", "-", text=model())
        assert applied.returncode == 0, applied.stdout + applied.stderr
        listeners = [p.listener_pid for p in lab.load().pods]
        wait_synced(lab)
        yield lab
    finally:
        down_clean(lab)
        assert not [pid for pid in listeners if alive(pid)], "listeners outlived `lab down`"


@pytest.fixture
def policies(lab: Lab) -> Iterator[list[dict]]:
    """Policies a case applies (`change(lab, "apply", ...)`), deleted after it."""
    applied: list[dict] = []
    yield applied
    if applied:
        change(lab, "delete", *applied)


def test_pods_json_shows_the_model_spread_over_both_nodes(lab: Lab):
    pods = pods_json(lab)
    assert sorted(pods) == KEYS
    assert {p["node"] for p in pods.values()} == {"node1", "node2"}
    for key, pod in pods.items():
        assert pod["labels"] == {"pod": pod["name"]} and len(pod["ips"]) == 1
        assert Path(pod["netns"]).exists(), key
        assert in_namespace(pod["listenerPid"], Path(pod["netns"]).name), key
        assert [p["name"] for p in pod["ports"]] == ["serve-80-tcp", "serve-80-udp",
                                                     "serve-81-tcp", "serve-81-udp"]


def test_without_policies_everything_is_allowed_as_the_model_says(lab: Lab):
    doc = matrix(lab)
    assert doc["ok"] and doc["differences"] == [] and doc["problems"] == []
    assert len(doc["observed"]) == 9 * 8 * 4 and denied(doc) == set()
    assert all(c["answer"] == c["to"] for c in doc["observed"])  # the right pod answered


def test_probe_one_flow(lab: Lab):
    run = ctl(lab, "probe", "x/a", "y/b", "--port", "81", "--protocol", "udp")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines() == ["x/a -> y/b 81/UDP: allowed (answered; reply from y/b)",
                                       "policy explain: allowed (no policy isolates them)"]


def test_default_deny_ingress_in_x(lab: Lab, policies: list[dict]):
    change(lab, "apply", DENY_INGRESS_X)
    policies.append(DENY_INGRESS_X)
    doc = matrix(lab, "80")
    assert doc["ok"], doc["differences"]
    assert denied(doc) == flows(KEYS, keys("x"), protocols=("TCP", "UDP"))
    run = ctl(lab, "probe", "y/a", "x/b", "--port", "80")
    assert run.returncode == 1
    assert run.stdout.splitlines() == ["y/a -> x/b 80/TCP: denied (timed out)",
                                       "policy explain: denied (x/deny-ingress ingress)"]


def test_ingress_to_x_from_namespace_y_only(lab: Lab, policies: list[dict]):
    change(lab, "apply", ALLOW_FROM_Y)
    policies.append(ALLOW_FROM_Y)
    doc = matrix(lab, "80", "tcp")
    assert doc["ok"], doc["differences"]
    assert denied(doc) == flows(keys("x") + keys("z"), keys("x"))


def test_egress_default_deny_in_y(lab: Lab, policies: list[dict]):
    change(lab, "apply", DENY_EGRESS_Y)
    policies.append(DENY_EGRESS_Y)
    doc = matrix(lab, "81")
    assert doc["ok"], doc["differences"]
    assert denied(doc) == flows(keys("y"), KEYS, (81,), ("TCP", "UDP"))


def test_a_named_port_allows_only_its_number_and_protocol(lab: Lab, policies: list[dict]):
    change(lab, "apply", NAMED_PORT)
    policies.append(NAMED_PORT)
    doc = matrix(lab)
    assert doc["ok"], doc["differences"]
    assert denied(doc) == (flows(KEYS, keys("x"), (80,), ("TCP", "UDP"))
                           | flows(KEYS, keys("x"), (81,), ("UDP",)))


def test_all_together_then_deleted_everything_is_allowed_again(lab: Lab):
    together = (DENY_INGRESS_X, ALLOW_FROM_Y, DENY_EGRESS_Y, NAMED_PORT)
    change(lab, "apply", *together)
    try:
        doc = matrix(lab, "80,81", "tcp")
        assert doc["ok"], doc["differences"]
        assert denied(doc) == (flows(keys("y"), KEYS, (80, 81))
                               | flows(keys("x") + keys("z"), keys("x"), (80,)))
    finally:
        change(lab, "delete", *together)
    doc = matrix(lab)
    assert doc["ok"] and denied(doc) == set()


def test_new_labels_update_the_object_not_the_sandbox(lab: Lab, policies: list[dict]):
    only_marked = policy("z", "from-marked", {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"marked": "yes"}}}]}]})
    change(lab, "apply", only_marked)
    policies.append(only_marked)
    before = pods_json(lab)["x/a"]
    assert ctl(lab, "probe", "x/a", "z/b").returncode == 1
    relabelled = change(lab, "apply", pod_manifest("x", "a", {"pod": "a", "marked": "yes"}))
    try:
        assert relabelled.stdout.splitlines()[0] == "pod/a configured"
        assert relabelled.stdout.splitlines()[1].startswith("  enforced on 2 node(s) in ")
        after = pods_json(lab)["x/a"]
        assert after["labels"] == {"pod": "a", "marked": "yes"}
        assert {k: v for k, v in after.items() if k != "labels"} == {
            k: v for k, v in before.items() if k != "labels"}
        run = ctl(lab, "probe", "x/a", "z/b")
        assert run.returncode == 0, run.stdout
        assert run.stdout.splitlines()[1] == ("policy explain: allowed (z/from-marked "
                                              "ingress rule 0)")
    finally:
        change(lab, "apply", pod_manifest("x", "a"))


def test_apply_skips_an_invalid_object_and_delete_removes_a_pod_entirely(lab: Lab):
    bad = policy("z", "typo", {"podSelector": {}, "ingress": [{"form": []}]})
    extra = pod_manifest("z", "d")
    extra["spec"]["nodeName"] = "node2"
    applied = ctl(lab, "apply", "-f", "-", text=yaml.safe_dump_all([bad, extra]))
    assert applied.returncode == 1
    assert applied.stderr.splitlines() == [
        "tartanctl lab apply: NetworkPolicy z/typo: spec.ingress[0].form is not a known "
        "field; use one of from, ports"]
    assert applied.stdout.splitlines()[-2:-1] == ["pod/d created"]
    assert applied.stdout.splitlines()[-1].startswith("  enforced on 2 node(s) in ")
    pod = pods_json(lab)["z/d"]
    assert pod["node"] == "node2" and alive(pod["listenerPid"])
    assert ctl(lab, "probe", "x/a", "z/d", "--port", "81", "--protocol", "udp").returncode == 0
    deleted = ctl(lab, "delete", "pod", "d", "-n", "z")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.splitlines()[0] == 'pod "d" deleted'
    assert deleted.stdout.splitlines()[1].startswith("  enforced on 2 node(s) in ")
    assert "z/d" not in pods_json(lab)
    assert not os.path.exists(pod["netns"])
    eventually(lambda: not alive(pod["listenerPid"]), timeout=5, what="the listener ends")
    stored = lab_objects.stored_objects(lab, lab.load())
    assert "z/d" not in stored["pods"] and "z/d" not in stored["podips"]


CLIENTS_ONLY = policy("x", "clients-only", {"podSelector": {}, "ingress": [{"from": [
    {"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}]}]})


class Watch(threading.Thread):
    """One flow probed over and over (1 s timeout, one retry) until stopped: its outcomes."""

    def __init__(self, lab: Lab, src: str, dst: str) -> None:
        super().__init__(daemon=True)
        state = lab.load()
        self.src, self.dst = state.pod(src), state.pod(dst)
        self.outcomes: list[bool] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.outcomes.append(lab_probe.probe(self.src, self.dst, 80, Protocol.TCP).allowed)
            self.stop.wait(0.05)


def test_churn_never_contradicts_the_policies_in_force(lab: Lab, policies: list[dict]):
    """Pods made and removed and labels changed under a policy that admits clients only:
    after each change has been enforced, probes agree with `policy explain`; and all along,
    a client's flow is never dropped and a flow from a pod that never is a client never
    passes (sets are refilled and chains rewritten atomically)."""
    client_b = pod_manifest("y", "b", {"pod": "b", "role": "client"})
    change(lab, "apply", client_b, CLIENTS_ONLY)
    policies.append(CLIENTS_ONLY)
    watches = [Watch(lab, "y/b", "x/a"), Watch(lab, "z/c", "x/b")]
    for watch in watches:
        watch.start()
    made: list[dict] = []
    try:
        for round_ in range(6):
            client = round_ % 2 == 0
            labels = {"pod": "a", **({"role": "client"} if client else {})}
            churned = pod_manifest("x", f"churn{round_}")
            made.append(churned)
            change(lab, "apply", pod_manifest("y", "a", labels), churned)
            if round_:
                change(lab, "delete", made[round_ - 1])
            for dst in ("x/a", f"x/churn{round_}"):
                run = ctl(lab, "probe", "y/a", dst)
                assert run.returncode == (0 if client else 1), run.stdout
                word = "allowed" if client else "denied"
                assert run.stdout.splitlines()[1].startswith(f"policy explain: {word}"), \
                    run.stdout
        assert pods_json(lab).keys() >= {"x/churn5"} and "x/churn4" not in pods_json(lab)
    finally:
        for watch in watches:
            watch.stop.set()
            watch.join(30)
        change(lab, "delete", *made[-1:])
        change(lab, "apply", pod_manifest("y", "a"), pod_manifest("y", "b"))
    allowed, denied_flow = (w.outcomes for w in watches)
    assert len(allowed) > 10 and all(allowed), f"y/b -> x/a dropped: {allowed}"
    assert len(denied_flow) > 10 and not any(denied_flow), f"z/c -> x/b passed: {denied_flow}"


def test_a_pod_made_while_its_nodes_agent_is_down_is_recorded_when_it_starts(
        lab: Lab, policies: list[dict]):
    """The plugin answers in-process and journals the pod; the agent records it at start, so
    the policy selecting it holds."""
    deny = policy("z", "deny-late", {"podSelector": {"matchLabels": {"pod": "late"}},
                                     "policyTypes": ["Ingress"]})
    change(lab, "apply", deny)
    policies.append(deny)
    late = pod_manifest("z", "late")
    late["spec"]["nodeName"] = "node2"
    lab_agents.stop_agent(lab.load().node("node2"))
    try:
        run = ctl(lab, "apply", "-f", "-", text=yaml.safe_dump(late))
        assert run.returncode == 0, run.stdout + run.stderr
        assert "z/late: the tartand of its node is not running" in run.stdout
        assert "z/late" not in lab_objects.stored_objects(lab, lab.load())["podips"]
    finally:
        lab.restart("node2")
    try:
        eventually(lambda: "z/late" in lab_objects.stored_objects(lab, lab.load())["podips"],
                   timeout=20, what="node2's tartand to record z/late from its journal")
        wait_synced(lab)
        run = ctl(lab, "probe", "x/a", "z/late")
        assert run.returncode == 1, run.stdout
        assert run.stdout.splitlines()[1] == "policy explain: denied (z/deny-late ingress)"
    finally:
        assert ctl(lab, "delete", "pod", "late", "-n", "z").returncode == 0
