"""`tartanctl policy explain` from manifests alone: the truth table (as text and JSON), one
connection with what decided it, and bad input as one line and an exit code."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tartan.debug import ctl

# x and y, pods a and b in each (label pod=<name>, serving 80/TCP as "http"); in y every
# pod is isolated for ingress, and y/b admits x/a on its port named http.
MODEL = """\
apiVersion: v1
kind: List
items:
"""
for ns in "xy":
    MODEL += (f"- {{apiVersion: v1, kind: Namespace, metadata: {{name: {ns}, labels: "
              f"{{ns: {ns}}}}}}}\n")
    for index, pod in enumerate("ab"):
        MODEL += (f"- {{apiVersion: v1, kind: Pod, metadata: {{name: {pod}, namespace: {ns}, "
                  f"labels: {{pod: {pod}}}}}, spec: {{containers: [{{name: c, ports: "
                  f"[{{name: http, containerPort: 80}}]}}]}}, status: {{podIPs: [{{ip: "
                  f"10.0.{'xy'.index(ns)}.{index + 1}}}]}}}}\n")
MODEL += """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: y}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-x-a, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]
    ports: [{port: http}]
"""
GRID_80_TCP = """\
80/TCP
-\tx/a\tx/b\ty/a\ty/b
x/a\t.\t.\tX\t.
x/b\t.\t.\tX\tX
y/a\t.\t.\tX\tX
y/b\t.\t.\tX\tX
"""


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.yaml"
    path.write_text(MODEL)
    return path


def explain(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = ctl.main(["policy", "explain", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_one_grid_per_port_and_protocol(capsys, model):
    code, out, err = explain(capsys, "-f", str(model), "--ports", "80", "--protocols", "tcp")
    assert (code, out, err) == (0, GRID_80_TCP, "")
    code, out, _ = explain(capsys, "-f", str(model))
    grids = out.split("\n\n")
    assert [g.splitlines()[0] for g in grids] == ["80/TCP", "80/UDP", "81/TCP", "81/UDP"]
    assert grids[0] + "\n" == GRID_80_TCP
    assert "x/a\t.\t.\tX\tX" in grids[2]  # the named port is 80: 81 is denied


def test_json(capsys, model):
    code, out, _ = explain(capsys, "-f", str(model), "--ports", "80,81", "--protocols",
                           "tcp", "-o", "json")
    doc = json.loads(out)
    assert code == 0
    assert (doc["ports"], doc["protocols"]) == ([80, 81], ["TCP"])
    assert doc["pods"] == ["x/a", "x/b", "y/a", "y/b"]
    assert len(doc["cells"]) == 2 * 16
    cell = next(c for c in doc["cells"] if (c["from"], c["to"], c["port"]) == ("x/a", "y/b", 80))
    assert cell == {"from": "x/a", "to": "y/b", "port": 80, "protocol": "TCP", "allowed": True,
                    "by": ["y/allow-x-a ingress rule 0"]}


def test_one_flow(capsys, model):
    code, out, _ = explain(capsys, "-f", str(model), "--from", "x/a", "--to", "y/b")
    assert (code, out) == (0, "x/a -> y/b 80/TCP: allowed\nallowed by y/allow-x-a ingress "
                           "rule 0\n")
    _, out, _ = explain(capsys, "-f", str(model), "--from", "x/b", "--to", "y/b", "--port",
                        "80", "--protocol", "tcp")
    assert out == ("x/b -> y/b 80/TCP: denied\ndenied by y/allow-x-a ingress\n"
                   "denied by y/deny-all ingress\n")
    _, out, _ = explain(capsys, "-f", str(model), "--from", "10.9.9.9", "--to", "x/b",
                        "--protocol", "udp", "--port", "53")
    assert out == ("10.9.9.9 -> x/b 53/UDP: allowed\n"
                   "no policy isolates 10.9.9.9 (egress) or x/b (ingress)\n")
    _, out, _ = explain(capsys, "-f", str(model), "--from", "x/a", "--to", "y/a", "-o", "json")
    assert json.loads(out) == {
        "from": "x/a", "to": "y/a", "port": 80, "protocol": "TCP", "allowed": False,
        "by": ["y/deny-all ingress"],
        "egress": {"isolated": False, "allowed": True, "by": []},
        "ingress": {"isolated": True, "allowed": False, "by": ["y/deny-all ingress"]}}


def test_invalid_objects_are_reported_and_left_out(capsys, model, monkeypatch):
    bad = ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: typo, "
           "namespace: x}\nspec: {podSelector: {}, ingress: [{form: []}]}\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(bad))
    code, out, err = explain(capsys, "-f", str(model), "-f", "-", "--ports", "80",
                             "--protocols", "tcp")
    assert (code, out) == (1, GRID_80_TCP)  # without the typo, x stays open
    assert err == ("tartanctl policy explain: NetworkPolicy x/typo: spec.ingress[0].form is "
                   "not a known field; use one of from, ports\n")


@pytest.mark.parametrize(("argv", "message"), [
    ([], "the following arguments are required: -f/--filename"),
    (["--ports", "80,x"], "argument --ports: 'x' is not a port number (1-65535)"),
    (["--ports", "0"], "argument --ports: '0' is not a port number"),
    (["--protocols", "icmp"], "argument --protocols: 'icmp' is not a protocol"),
    (["-o", "yaml"], "argument -o/--output: invalid choice: 'yaml'"),
    (["--port", "70000"], "argument --port: '70000' is not a port number"),
])
def test_usage_errors_exit_2(capsys, model, argv, message):
    with pytest.raises(SystemExit) as exit:
        ctl.main(["policy", "explain", *(["-f", str(model)] if argv else []), *argv])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"tartanctl policy explain: error: {message}")


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["--from", "x/a"], 2, "give --from and --to together"),
    (["--from", "x/a", "--to", "z/q"], 1, "--to z/q: no such pod in the manifests (pods: "
     "x/a, x/b, y/a, y/b); give NS/POD or an IP address"),
])
def test_flow_errors(capsys, model, argv, code, message):
    got, out, err = explain(capsys, "-f", str(model), *argv)
    assert (got, out) == (code, "")
    assert err.startswith(f"tartanctl policy explain: {message}")
    assert len(err.splitlines()) == 1


def test_unreadable_and_not_yaml(capsys, tmp_path):
    missing = tmp_path / "missing.yaml"
    code, out, err = explain(capsys, "-f", str(missing))
    assert (code, out) == (1, "")
    assert err.startswith(f"tartanctl policy explain: {missing}: cannot be read: ")
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [\n")
    code, _, err = explain(capsys, "-f", str(broken))
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"tartanctl policy explain: {broken}: document 1 is not YAML")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert explain(capsys, "-f", str(empty)) == (
        1, "", "tartanctl policy explain: no pods in the manifests: nothing to explain\n")


def test_the_installed_tartanctl(model):
    exe = Path(sys.executable).parent / "tartanctl"
    done = subprocess.run([exe, "policy", "explain", "-f", str(model), "--ports", "80",
                           "--protocols", "tcp"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, GRID_80_TCP, "")
