"""What tartand says while it waits (backends/agent.py's Startup), how `tartanctl status`
prints it, and the flags of the kube mode."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from tartan.backends import agent, startup
from tartan.backends.log import Log
from tartan.backends.metrics import Metrics
from tartan.debug import status
from tartan.ipam.lease import LeaseContention, StoreUnavailable
from tartan.ipam.lease_kube import KubeUnavailable, NodeNotReady


def test_flags_as_flannel_names_them(monkeypatch):
    monkeypatch.setenv("NODE_NAME", "from-the-downward-api")
    args = agent.parse_args(["--kube-subnet-mgr", "--kubeconfig-file", "/k", "--kube-api-url",
                             "https://10.0.0.1:6443"])
    assert (args.node_name, args.kubeconfig_file, args.kube_api_url) == (
        "from-the-downward-api", "/k", "https://10.0.0.1:6443")
    assert args.net_config == Path("/etc/kube-flannel/net-conf.json")  # flannel's default
    assert args.kube_annotation_prefix == "flannel.alpha.coreos.com"
    assert args.policy_source == "kube"
    plain = agent.parse_args([])
    assert plain.policy_source == "store" and plain.net_config is None
    assert agent.parse_args(["--net-config-path", "/x.json"]).net_config == Path("/x.json")
    assert agent.parse_args(["--kube-subnet-mgr", "--policy-source", "store"]).policy_source \
        == "store"


@pytest.mark.parametrize("exc, what", [
    (startup.NoNetConfig("no network config in the store"), "netConfig"),
    (KubeUnavailable("the Kubernetes API at https://k has not listed nodes"), "kubeApi"),
    (StoreUnavailable("etcd down"), "store"),
    (NodeNotReady("waiting for Node n1 to get spec.podCIDR (...)", "podCIDR"), "podCIDR"),
    (NodeNotReady("waiting for Node n1 to exist in the Kubernetes API", "node"), "node"),
    (LeaseContention("busy"), "lease"),
    (ValueError("a bug"), None),
])
def test_what_a_failed_start_step_waits_for(exc, what):
    assert startup.waited_for(exc) == what


def test_the_store_is_named_by_its_endpoints():
    args = agent.parse_args(["--store", "etcd", "--etcd-endpoints", "http://10.0.0.5:2379"])
    message = startup.waiting_message("store", StoreUnavailable("connection refused"), args)
    assert message == "the lease store etcd http://10.0.0.5:2379 is unreachable: " \
        "connection refused"
    assert agent.config_location(args) == \
        "key /coreos.com/network/config in etcd http://10.0.0.5:2379"


def test_startup_status_says_what_it_waits_for_and_logs_each_change_once():
    out = io.StringIO()
    waiting = startup.Startup(Log(out), Metrics(), "node1")
    assert waiting.healthy() and not waiting.ready()
    waiting.wait("podCIDR", "waiting for Node node1 to get spec.podCIDR", 0.5)
    since = waiting.waiting["since"]
    waiting.wait("podCIDR", "waiting for Node node1 to get spec.podCIDR", 1.0)
    doc = waiting.status()
    assert doc["node"] == {"name": "node1", "ready": False, "waitingFor": {
        "what": "podCIDR", "message": "waiting for Node node1 to get spec.podCIDR",
        "retryIn": 1.0, "since": since}}
    assert out.getvalue().count("event=agent.waiting") == 1
    waiting.done()
    assert "waitingFor" not in waiting.status()["node"]
    assert "event=agent.wait_over waited_for=podCIDR" in out.getvalue()


def test_tartanctl_status_prints_the_wait_and_the_api():
    doc = {"node": {"name": "node1", "ready": False, "waitingFor": {
        "what": "podCIDR", "message": "waiting for Node node1 to get spec.podCIDR",
        "since": time.time() - 75}},
        "kube": {"apiServer": "https://10.0.0.1:6443", "reachable": False,
                 "error": "HTTP 503 Service Unavailable",
                 "watches": [{"resource": "nodes", "stalls": 2}]},
        "peers": []}
    lines = status.render(json.loads(json.dumps(doc)), time.time())
    assert "node:     - (node1)" in lines
    assert "waiting:  waiting for Node node1 to get spec.podCIDR (for 1m 15s)" in lines
    assert "kube API: https://10.0.0.1:6443 (UNREACHABLE: HTTP 503 Service Unavailable)" in lines
    assert "          watches restarted after a stall: nodes 2" in lines


def test_a_pod_cidr_lease_has_no_expiry():
    lines = status.render({"node": {"subnet": "10.244.7.0/24", "leaseExpires": None,
                                    "leaseSource": "podCIDR", "ready": True}}, 0)
    assert lines[1] == "subnet:   10.244.7.0/24 (the Node's spec.podCIDR)"


def test_client_configuration_errors_are_one_line(monkeypatch, tmp_path):
    from tartan.ipam.kube_client import KubeConfigError, connect

    with pytest.raises(KubeConfigError, match=f"--kubeconfig-file {tmp_path}/nope: no such"):
        connect(str(tmp_path / "nope"), None)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeConfigError, match="no --kubeconfig-file or --kube-api-url given, "
                       "and the in-cluster config: Service host/port is not set"):
        connect(None, None)
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(KubeConfigError, match=f"--kubeconfig-file {bad}: "):
        connect(str(bad), None)
    api = connect(None, "https://10.0.0.1:6443/")
    assert api.url == "https://10.0.0.1:6443"
    api.close()


def test_one_kube_client_per_tartand_and_the_policy_sources_own_is_in_status():
    """--policy-source kube without --kube-subnet-mgr: kube_client makes the one client
    (main closes it at exit) and puts its state in /status as "kube", as the leases' is;
    with --kube-subnet-mgr the leases' is the one; nothing reads the API: none."""
    from types import SimpleNamespace

    log = Log(io.StringIO())
    args = agent.parse_args(["--policy-source", "kube", "--kube-api-url", "http://127.0.0.1:9"])
    alone = SimpleNamespace(kube=None, status_parts={})
    kube = agent.kube_client(alone, args, log)
    try:
        assert kube is not None and list(alone.status_parts) == ["kube"]
        source = kube.policy_source()
        assert kube.reflectors == source.reflectors  # stopped by kube.close()
        part = alone.status_parts["kube"]()
        assert part["apiServer"] == "http://127.0.0.1:9" and len(part["watches"]) == 3
        leases = SimpleNamespace(kube=kube, status_parts={})
        assert agent.kube_client(leases, args, log) is kube and leases.status_parts == {}
    finally:
        kube.close()
    for flags in (["--no-network-policy", "--policy-source", "kube"], []):
        nobody = SimpleNamespace(kube=None, status_parts={})
        assert agent.kube_client(nobody, agent.parse_args(flags), log) is None
        assert nobody.status_parts == {}
