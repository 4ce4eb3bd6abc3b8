"""What `tartanctl lab demo` (and so `make demo`) shows of NetworkPolicy, after the ping
matrix: pods with real listeners in two namespaces, probed before and after a policy that
admits only one namespace on one port, each matrix checked against `policy explain`."""

from __future__ import annotations

import io
from collections.abc import Callable

from tartan.debug import lab_objects, lab_policy_cli
from tartan.debug.lab import Lab
from tartan.netpol.model import Protocol

WORKLOADS = """\
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- {apiVersion: v1, kind: Namespace, metadata: {name: office}}
- apiVersion: v1
  kind: Pod
  metadata: {namespace: shop, name: web, labels: {app: web}}
  spec: {containers: [{name: web, ports: [{containerPort: 80, name: http},
                                          {containerPort: 81}]}]}
- apiVersion: v1
  kind: Pod
  metadata: {namespace: shop, name: cart, labels: {app: cart}}
  spec: {containers: [{name: cart, ports: [{containerPort: 80}, {containerPort: 81}]}]}
- apiVersion: v1
  kind: Pod
  metadata: {namespace: office, name: laptop, labels: {app: laptop}}
  spec: {containers: [{name: laptop, ports: [{containerPort: 80}, {containerPort: 81}]}]}
"""

POLICY = """\
# shop/web takes connections only from the office namespace, and only on its http port
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: shop, name: web-from-office}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: office}}}]
    ports: [{port: http}]
"""

PORTS = (80, 81)
PROTOCOLS = (Protocol.TCP,)


def show(lab: Lab, say: Callable[[str], None]) -> bool:
    """Apply the workloads, probe, apply the policy, probe again; True when every probe
    agreed with the model."""
    ok = True
    for title, manifest in (("workloads", WORKLOADS), ("a policy", POLICY)):
        say(f"---- tartanctl lab apply -f - ({title})")
        if title == "a policy":
            for line in manifest.splitlines():
                say(f"  {line}")
        ok &= lab_objects.apply(lab, ["-"], io.StringIO(manifest), say, say) == 0
        say("---- tartanctl lab probe-matrix --ports 80,81 --protocols tcp")
        matrix = lab_policy_cli.run_matrix(lab, PORTS, PROTOCOLS, workers=16)
        for line in lab_policy_cli.render(matrix, 16).splitlines():
            say(line)
        ok &= matrix.ok
    return ok
