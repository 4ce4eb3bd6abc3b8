"""`tartanctl apply`, `delete` and `get` against a SQLite store in tmp_path: kubectl's lines,
tables and documents, the pods' addresses from tartand's records, and every bad input as one
line and an exit code."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tartan.backends import agent
from tartan.debug import ctl
from tartan.debug.kube import human_duration, table
from tartan.ipam import lease
from tartan.ipam.lease_sqlite import SqliteLeaseStore

MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {pod: b}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-a, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: b}
    matchExpressions: [{key: tier, operator: NotIn, values: [web, db]}, {key: debug,
                        operator: DoesNotExist}]
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]
"""
BAD_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: typo, namespace: x}
spec: {podSelector: {}, ingress: [{form: []}]}
"""
RECORD = {"ips": ["10.244.1.5"], "node": "node-1", "containerID": "c0ffee", "ifname": "eth0"}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "leases.db"


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "objects.yaml"
    path.write_text(MANIFESTS)
    return path


def run(capsys: pytest.CaptureFixture[str], db: Path, *argv: str) -> tuple[int, str, str]:
    code = ctl.main([*argv, "--store", f"sqlite:{db}"])
    out, err = capsys.readouterr()
    return code, out, err


def applied(capsys: pytest.CaptureFixture[str], db: Path, manifest: Path) -> None:
    assert run(capsys, db, "apply", "-f", str(manifest))[0] == 0


def stored(db: Path) -> dict:
    store = SqliteLeaseStore(db)
    try:
        return store.list_objects()[0]
    finally:
        store.close()


def put_record(db: Path, key: str, record: dict) -> None:
    store = SqliteLeaseStore(db)
    try:
        store.put_object("podips", key, record)
    finally:
        store.close()


# -- apply ----------------------------------------------------------------------------


def test_apply_creates_then_leaves_unchanged(capsys, db, manifest):
    code, out, err = run(capsys, db, "apply", "-f", str(manifest))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "namespace/x created", "pod/a created", "pod/b created",
        "networkpolicy.networking.k8s.io/deny-all created",
        "networkpolicy.networking.k8s.io/allow-a created"]
    code, out, _ = run(capsys, db, "apply", "-f", str(manifest))
    assert code == 0
    assert out.splitlines()[0] == "namespace/x unchanged"
    assert all(line.endswith(" unchanged") for line in out.splitlines())


def test_apply_configures_what_differs_and_keeps_its_creation_time(capsys, db, manifest):
    applied(capsys, db, manifest)
    created = stored(db)["pods"]["x/a"]["metadata"]["creationTimestamp"]
    manifest.write_text(MANIFESTS.replace("labels: {pod: a}", "labels: {pod: a, v: '2'}"))
    code, out, _ = run(capsys, db, "apply", "-f", str(manifest))
    assert code == 0
    assert "pod/a configured" in out.splitlines()
    assert "pod/b unchanged" in out.splitlines()
    pod = stored(db)["pods"]["x/a"]
    assert pod["metadata"]["labels"] == {"pod": "a", "v": "2"}
    assert pod["metadata"]["creationTimestamp"] == created


def test_apply_stores_the_manifest_as_given_with_the_namespace_defaulted(capsys, db, manifest):
    applied(capsys, db, manifest)
    objects = stored(db)
    assert sorted(objects["pods"]) == ["default/b", "x/a"]
    pod = objects["pods"]["default/b"]
    assert pod["metadata"].pop("creationTimestamp").endswith("Z")
    assert pod == {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "b", "namespace": "default", "labels": {"pod": "b"}}}
    assert objects["namespaces"]["x"]["metadata"]["labels"] == {"team": "x"}
    assert "namespace" not in objects["namespaces"]["x"]["metadata"]
    assert sorted(objects["networkpolicies"]) == ["x/allow-a", "x/deny-all"]


def test_apply_reports_each_invalid_object_and_applies_the_rest(capsys, db, tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text(BAD_POLICY + "---\n" + MANIFESTS.split("---\n")[3])
    code, out, err = run(capsys, db, "apply", "-f", str(path))
    assert code == 1
    assert out == "networkpolicy.networking.k8s.io/deny-all created\n"
    assert err == (f"tartanctl apply: {path}: NetworkPolicy x/typo: spec.ingress[0].form is "
                   "not a known field; use one of from, ports\n")
    assert sorted(stored(db)["networkpolicies"]) == ["x/deny-all"]


def test_apply_reads_stdin_and_typed_lists(capsys, db, monkeypatch):
    doc = {"apiVersion": "v1", "kind": "NamespaceList",
           "items": [{"metadata": {"name": "p"}}, {"metadata": {"name": "q"}}]}
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(doc)))
    code, out, _ = run(capsys, db, "apply", "-f", "-")
    assert (code, out) == (0, "namespace/p created\nnamespace/q created\n")
    assert stored(db)["namespaces"]["p"]["kind"] == "Namespace"


def test_apply_reads_every_file_of_a_directory_and_repeated_f(capsys, db, tmp_path, manifest):
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: z}\n")
    (folder / "notes.txt").write_text("not a manifest")
    code, out, _ = run(capsys, db, "apply", "-f", str(folder), "-f", str(manifest))
    assert code == 0
    assert out.splitlines()[:2] == ["namespace/z created", "namespace/x created"]


# -- delete ---------------------------------------------------------------------------


def test_delete_by_file_and_not_found(capsys, db, manifest):
    applied(capsys, db, manifest)
    code, out, err = run(capsys, db, "delete", "-f", str(manifest))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        'namespace "x" deleted', 'pod "a" deleted', 'pod "b" deleted',
        'networkpolicy.networking.k8s.io "deny-all" deleted',
        'networkpolicy.networking.k8s.io "allow-a" deleted']
    assert not any(stored(db)[kind] for kind in ("namespaces", "pods", "networkpolicies"))
    code, out, err = run(capsys, db, "delete", "-f", str(manifest))
    assert (code, out) == (1, "")
    assert err.splitlines()[0] == 'Error from server (NotFound): namespaces "x" not found'
    assert err.splitlines()[3] == ('Error from server (NotFound): '
                                   'networkpolicies.networking.k8s.io "deny-all" not found')
    assert run(capsys, db, "delete", "-f", str(manifest), "--ignore-not-found") == (0, "", "")


def test_delete_by_type_and_name(capsys, db, manifest):
    applied(capsys, db, manifest)
    code, out, _ = run(capsys, db, "delete", "netpol", "deny-all", "-n", "x")
    assert (code, out) == (0, 'networkpolicy.networking.k8s.io "deny-all" deleted\n')
    assert run(capsys, db, "delete", "pod", "b")[:2] == (0, 'pod "b" deleted\n')
    code, _, err = run(capsys, db, "delete", "po", "a")  # a is in x, not default
    assert (code, err) == (1, 'Error from server (NotFound): pods "a" not found\n')


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["delete"], 2, "tartanctl delete: give -f FILE, or a resource type and the names"),
    (["delete", "pods"], 2, "tartanctl delete: give -f FILE, or a resource type and the"),
    (["delete", "deployments", "d"], 2, "tartanctl delete: the server doesn't have a "
     'resource type "deployments"'),
    (["delete", "pod", "Bad_Name"], 1, "tartanctl delete: invalid pods key 'default/Bad_Name'"),
])
def test_delete_bad_input(capsys, db, argv, code, message):
    got, out, err = run(capsys, db, *argv)
    assert (got, out) == (code, "")
    assert len(err.splitlines()) == 1 and err.startswith(message)


# -- get ------------------------------------------------------------------------------


def test_get_tables(capsys, db, manifest):
    applied(capsys, db, manifest)
    code, out, _ = run(capsys, db, "get", "namespaces")
    assert code == 0
    assert out.splitlines() in (["NAME   STATUS   AGE", f"x      Active   {s}s"] for s in "012")
    _, out, _ = run(capsys, db, "get", "netpol", "-n", "x")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "POD-SELECTOR", "AGE"]
    assert lines[1].startswith("allow-a    !debug,pod=b,tier notin (db,web)   ")
    assert lines[2].startswith("deny-all   <none>                             ")
    _, out, _ = run(capsys, db, "get", "networkpolicies", "-A", "-o", "wide")
    assert out.splitlines()[0].split() == ["NAMESPACE", "NAME", "POD-SELECTOR", "AGE",
                                           "POLICY-TYPES"]
    assert out.splitlines()[1].startswith("x           allow-a    ")
    assert out.splitlines()[1].endswith("   Egress,Ingress")
    _, out, _ = run(capsys, db, "get", "ns", "-o", "wide")
    assert out.splitlines()[1].endswith("   team=x")


def test_get_pods_show_the_recorded_ip_and_node(capsys, db, manifest):
    applied(capsys, db, manifest)
    put_record(db, "x/a", RECORD)
    put_record(db, "x/served-only", {**RECORD, "ips": ["10.244.1.6"]})
    code, out, _ = run(capsys, db, "get", "pods", "-n", "x")
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["NAME", "IP", "NODE", "AGE"]
    assert rows[1][:3] == ["a", "10.244.1.5", "node-1"]
    assert rows[2] == ["served-only", "10.244.1.6", "node-1", "<unknown>"]
    _, out, _ = run(capsys, db, "get", "po", "-A", "-o", "wide")
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["NAMESPACE", "NAME", "IP", "NODE", "AGE", "LABELS"]
    assert rows[1][:4] == ["default", "b", "<none>", "<none>"]
    assert rows[1][5] == "pod=b"
    _, out, _ = run(capsys, db, "get", "pod", "a", "-n", "x", "-o", "json")
    pod = json.loads(out)
    assert pod["kind"] == "Pod" and pod["metadata"]["name"] == "a"
    assert pod["status"] == {"podIPs": [{"ip": "10.244.1.5"}], "podIP": "10.244.1.5"}
    assert pod["spec"]["nodeName"] == "node-1"


def test_get_json_yaml_and_name(capsys, db, manifest):
    applied(capsys, db, manifest)
    _, out, _ = run(capsys, db, "get", "netpol", "-n", "x", "-o", "json")
    doc = json.loads(out)
    assert (doc["apiVersion"], doc["kind"]) == ("v1", "List")
    assert [i["metadata"]["name"] for i in doc["items"]] == ["allow-a", "deny-all"]
    assert doc["items"][1]["spec"] == {"podSelector": {}}
    _, out, _ = run(capsys, db, "get", "pods", "-A", "-o", "yaml")
    doc = yaml.safe_load(out)
    assert doc["kind"] == "List"
    assert [i["metadata"]["namespace"] for i in doc["items"]] == ["default", "x"]
    _, out, _ = run(capsys, db, "get", "netpol", "-n", "x", "-o", "name")
    assert out == ("networkpolicy.networking.k8s.io/allow-a\n"
                   "networkpolicy.networking.k8s.io/deny-all\n")
    _, out, _ = run(capsys, db, "get", "namespace", "-o", "name")
    assert out == "namespace/x\n"


def test_get_nothing_and_not_found(capsys, db, manifest):
    assert run(capsys, db, "get", "pods") == (0, "", "No resources found in default "
                                              "namespace.\n")
    assert run(capsys, db, "get", "netpol", "-A") == (0, "", "No resources found\n")
    assert run(capsys, db, "get", "ns", "-o", "name") == (0, "", "No resources found\n")
    _, out, _ = run(capsys, db, "get", "pods", "-o", "json")
    assert json.loads(out)["items"] == []
    applied(capsys, db, manifest)
    code, out, err = run(capsys, db, "get", "netpol", "deny-all", "gone", "-n", "x")
    assert code == 1
    assert out.splitlines()[1].startswith("deny-all")
    assert err == ('Error from server (NotFound): networkpolicies.networking.k8s.io "gone" '
                   "not found\n")
    code, _, err = run(capsys, db, "get", "pods", "a", "-A")
    assert (code, err) == (1, "tartanctl get: a resource cannot be retrieved by name across "
                           "all namespaces\n")


# -- bad input and store failures -----------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["get", "deployments"], ["get", "pods", "-n", "x", "-A"], ["get", "pods", "-o", "table"],
    ["get"], ["apply"], ["apply", "-f"],
])
def test_usage_errors_exit_2(capsys, db, argv):
    with pytest.raises(SystemExit) as exit:
        run(capsys, db, *argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"tartanctl {argv[0]}: error: ")


def test_a_file_that_is_not_there_applies_nothing(capsys, db, manifest, tmp_path):
    code, out, err = run(capsys, db, "apply", "-f", str(manifest), "-f", str(tmp_path / "no"))
    assert (code, out) == (1, "")
    assert err == (f"tartanctl apply: {tmp_path / 'no'}: cannot be read: No such file or "
                   "directory; check the path and its permissions\n")
    assert not stored(db)["pods"]


@pytest.mark.parametrize(("store", "code", "message"), [
    (["--store", "sqlite:/dev/null/leases.db"], 1, "tartanctl apply: lease store "
     "/dev/null/leases.db cannot be used: "),
    (["--store", "etcd", "--etcd-endpoints", "http://127.0.0.1:1"], 1,
     "tartanctl apply: cannot reach etcd: http://127.0.0.1:1"),
    (["--store", "zookeeper"], 2, "tartanctl apply: --store 'zookeeper': use sqlite:"),
])
def test_store_failures_are_one_line(capsys, manifest, store, code, message):
    assert ctl.main(["apply", "-f", str(manifest), *store]) == code
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith(message)


def test_store_flags_are_tartands():
    flags = agent.parse_args([])
    assert (flags.store, flags.etcd_endpoints, flags.etcd_prefix) == (
        f"sqlite:{lease.DEFAULT_SQLITE_PATH}", lease.DEFAULT_ETCD_ENDPOINT,
        lease.DEFAULT_ETCD_PREFIX)
    for argv in (["apply", "-f", "x"], ["delete", "-f", "x"], ["get", "pods"]):
        mine = ctl.parser().parse_args(argv)
        for name in ("store", "etcd_endpoints", "etcd_prefix"):
            assert getattr(mine, name) == getattr(flags, name)


# -- formats and the installed executable ---------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "<invalid>"), (-1, "0s"), (5, "5s"), (119, "119s"), (180, "3m"), (185, "3m5s"),
    (25 * 60, "25m"), (3 * 3600, "3h"), (5 * 3600 + 180, "5h3m"), (30 * 3600, "30h"),
    (4 * 86400, "4d"), (2 * 86400 + 4 * 3600, "2d4h"), (40 * 86400, "40d"),
    (3 * 365 * 86400, "3y"), (10 * 365 * 86400, "10y"),
])
def test_age_as_kubectl_prints_it(seconds, text):
    assert human_duration(seconds) == text


def test_table_pads_as_kubectl():
    assert table(["NAME", "IP"], [["a", "10.0.0.1"]]) == ["NAME   IP", "a      10.0.0.1"]
    assert table(["A", "B", "C"], [["x", "y", "z"]]) == ["A     B     C", "x     y     z"]


def test_the_installed_tartanctl(tmp_path, manifest, db):
    exe = Path(sys.executable).parent / "tartanctl"
    store = ["--store", f"sqlite:{db}"]
    done = subprocess.run([exe, "apply", "-f", "-", *store], input=manifest.read_text(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert "networkpolicy.networking.k8s.io/allow-a created" in done.stdout
    done = subprocess.run([exe, "get", "netpol", "-n", "x", "-o", "name", *store],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.splitlines() == ["networkpolicy.networking.k8s.io/allow-a",
                                        "networkpolicy.networking.k8s.io/deny-all"]
    done = subprocess.run([exe, "get", "pods", "nope", *store], capture_output=True,
                          text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (1, 'Error from server (NotFound): pods "nope" '
                                              "not found\n")
