"""`tartanctl reset` on a node that ran tartand (VXLAN, masquerade, NetworkPolicy) and served a
pod: everything of Tartan's goes, other components' links, routes, chains and sets stay, and
a fresh tartand brings the node back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_agent import Cluster, cluster, two_vxlan_nodes  # noqa: F401 (the fixture)

from harness import eventually, run_plugin, unique

pytestmark = pytest.mark.kernel
TARTANCTL = str(Path(sys.executable).parent / "tartanctl")


def reset(node, tmp: Path, *flags: str) -> subprocess.CompletedProcess:
    return node.ns.run(TARTANCTL, "reset", "--cni-conf-dir", str(tmp / "net.d"),
                       "--run-dir", str(tmp / "run"), *flags, check=False)


def tartan_state(node) -> dict[str, list[str]]:
    """What of Tartan's the node has: links, routes, chains (nft and legacy), sets."""
    links = node.ns.run("ip", "-o", "link", "show").stdout.splitlines()
    saved = [line for tool in ("iptables-nft-save", "iptables-legacy-save",
                               "ip6tables-nft-save")
             for line in node.ns.run(tool, check=False).stdout.splitlines()]
    # hostPort chains of another network (its jump's comment names it) are not Tartan's
    others = {line.split()[-1] for line in saved if '\\"othernet\\"' in line}
    chains = [line for line in saved if "TARTAN-" in line
              or ("CNI-DN-" in line and not any(chain in line for chain in others))]
    return {
        "links": [line.split(":")[1].strip().split("@")[0] for line in links
                  if "tartan." in line or "cni0" in line or "master cni0" in line],
        "routes": node.ns.run("ip", "route", "show", "proto", "152").stdout.splitlines(),
        "chains": chains,
        "sets": [name for name in node.ns.run("ipset", "list", "-n").stdout.split()
                 if name.startswith("TARTAN-")],
    }


def foreign_state(node) -> dict[str, object]:
    return {"link": "other0" in node.ns.run("ip", "-o", "link", "show").stdout,
            "route": node.ns.run("ip", "route", "show", "10.99.0.0/24").stdout.strip(),
            "chain": [line for line in node.ns.run("iptables-save", "-t", "filter").stdout
                      .splitlines() if "KUBE-OTHER" in line],
            "hostport": [line for line in node.ns.run("iptables-save", "-t", "nat").stdout
                         .splitlines() if "othernet" in line],
            "set": "KUBE-SET" in node.ns.run("ipset", "list", "-n").stdout}


def test_reset_removes_only_tartan_and_tartand_rebuilds(cluster, tmp_path):  # noqa: F811
    a, b = two_vxlan_nodes(cluster)
    conf = {"cniVersion": "1.0.0", "name": unique("tnet"), "plugins": [{
        "type": "tartan", "subnetFile": str(a.subnet_file), "dataDir": str(tmp_path / "meta"),
        "delegate": {"ipam": {"dataDir": str(tmp_path / "ipam")}}}]}
    (tmp_path / "net.d").mkdir()
    (tmp_path / "net.d" / "10-tartan.conflist").write_text(json.dumps(conf))
    (tmp_path / "run" / "cni-journal").mkdir(parents=True)
    pod_ns = cluster.factory("tp")
    plugin = {"cniVersion": "1.0.0", "name": conf["name"], **conf["plugins"][0]}
    added = run_plugin("tartan", "ADD", plugin, container_id=unique("ctr-"), netns=pod_ns.path,
                       host_ns=a.ns, extra_env={"TARTAN_NO_AGENT": "1"})
    assert added.code == 0, added.stdout
    for network, port in ((conf["name"], 8080), ("othernet", 8081)):  # hostPorts: ours, not
        mapped = run_plugin("tartan-portmap", "ADD", {
            "cniVersion": "1.0.0", "name": network, "type": "tartan-portmap",
            "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80}]},
            "prevResult": added.json}, container_id=unique("ctr-"), netns=pod_ns.path,
            host_ns=a.ns, extra_env={"TARTAN_NO_AGENT": "1"})
        assert mapped.code == 0, mapped.stdout
    a.ns.run("ip", "link", "add", "other0", "type", "bridge")
    a.ns.run("ip", "link", "set", "other0", "up")
    a.ns.run("ip", "route", "add", "10.99.0.0/24", "dev", "other0", "proto", "static")
    a.ns.run("iptables", "-N", "KUBE-OTHER")
    a.ns.run("iptables", "-A", "FORWARD", "-j", "KUBE-OTHER")
    a.ns.run("ipset", "create", "KUBE-SET", "hash:ip")
    before, others = tartan_state(a), foreign_state(a)
    assert all(before.values()), before  # the premise: there is something of each kind
    assert any("CNI-DN-" in line for line in before["chains"]), before  # our hostPort too

    refused = reset(a, tmp_path)
    assert refused.returncode == 1 and "tartand runs here (pid" in refused.stderr
    cluster.stop(a)
    dry = reset(a, tmp_path, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove:" in dry.stdout and "nothing removed (--dry-run)" in dry.stdout
    assert "tartan.1 (vxlan)" in dry.stdout and "cni0 (bridge of network" in dry.stdout
    assert tartan_state(a) == before

    done = reset(a, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert tartan_state(a) == {"links": [], "routes": [], "chains": [], "sets": []}
    assert foreign_state(a) == others
    assert not (tmp_path / "ipam" / conf["name"]).exists()
    assert not (tmp_path / "meta").exists() and list((tmp_path / "run").iterdir()) == []
    again = reset(a, tmp_path)
    assert again.returncode == 0 and "nothing of Tartan's is on this node" in again.stdout

    cluster.start(a)
    cluster.wait_ready(a)
    eventually(lambda: b.subnet().split("/")[0] in "".join(tartan_state(a)["routes"]),
               timeout=15, what="the fresh tartand's route to the peer")
    assert any(name.startswith("tartan.") for name in tartan_state(a)["links"])
