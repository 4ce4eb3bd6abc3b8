"""packaging/kubernetes/kube-tartan.yml, checked offline: every document is what the API's
own models make of it (the official `kubernetes` client's; a field they do not know, which
they would drop without a word, is an error here), and the documents agree with each other
and with Tartan (the ServiceAccount, the ConfigMap's keys, tartand's and install.py's flags,
the conflist's plugins, the probes' address, the host paths the agent's work needs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from bundle_kit import PACKAGING, packaging_module
from kubernetes.client import ApiClient

from tartan.backends import agent
from tartan.cni import fastpath, journal, registry, subnet_env, versions
from tartan.cni.plugins import meta_config
from tartan.ipam import config as ipam_config

from harness import REFERENCE_CNI

MANIFEST = PACKAGING / "kubernetes" / "kube-tartan.yml"
CONTAINERFILE = PACKAGING / "kubernetes" / "Containerfile"
# kind -> apiVersion: one of each, served by every supported Kubernetes
KINDS = {
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "ConfigMap": "v1",
    "DaemonSet": "apps/v1",
}


def documents() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc is not None]


def one(kind: str) -> dict:
    found = [doc for doc in documents() if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} documents"
    return found[0]


def pod_spec() -> dict:
    return one("DaemonSet")["spec"]["template"]["spec"]


def container(name: str) -> dict:
    spec = pod_spec()
    found = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container {name}"
    return found[0]


def differences(given: object, kept: object, path: str = "") -> list[str]:
    """Where the model's serialization differs from the document: what it dropped, added
    or changed."""
    if isinstance(given, dict) and isinstance(kept, dict):
        out = [f"{path}.{key}: not a field of the API (dropped)" for key in given
               if key not in kept]
        out += [f"{path}.{key}: added by the model" for key in kept if key not in given]
        for key in given.keys() & kept.keys():
            out += differences(given[key], kept[key], f"{path}.{key}")
        return out
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        return [d for i, (a, b) in enumerate(zip(given, kept, strict=True))
                for d in differences(a, b, f"{path}[{i}]")]
    return [] if given == kept else [f"{path}: {given!r} became {kept!r}"]


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}")
def test_every_document_is_what_the_api_models_make_of_it(doc):
    assert KINDS.get(doc["kind"]) == doc["apiVersion"], (doc["kind"], doc["apiVersion"])
    client = ApiClient()
    model = doc["apiVersion"].rpartition("/")[2].capitalize() + doc["kind"]
    obj = client._ApiClient__deserialize(doc, model)  # raises on a missing required field
    assert differences(doc, client.sanitize_for_serialization(obj)) == []


def test_the_check_catches_an_unknown_field():
    doc = one("DaemonSet")
    doc["spec"]["template"]["spec"]["hostNetwrk"] = True
    client = ApiClient()
    kept = client.sanitize_for_serialization(client._ApiClient__deserialize(doc, "V1DaemonSet"))
    assert differences(doc, kept) == [".spec.template.spec.hostNetwrk: not a field of the API "
                                      "(dropped)"]


def test_one_of_each_kind_all_in_the_namespace():
    docs = documents()
    assert sorted(d["kind"] for d in docs) == sorted(KINDS)
    namespace = one("Namespace")["metadata"]["name"]
    assert namespace == "kube-tartan"
    for doc in docs:
        if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]
    assert one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] \
        == "privileged"


def test_the_daemonset_runs_as_the_bound_service_account():
    account = one("ServiceAccount")["metadata"]
    assert pod_spec()["serviceAccountName"] == account["name"]
    binding = one("ClusterRoleBinding")
    role = one("ClusterRole")["metadata"]["name"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": role}
    assert {"kind": "ServiceAccount", "name": account["name"],
            "namespace": account["namespace"]} in binding["subjects"]


def test_the_role_grants_what_tartand_reads_and_writes():
    granted = {(group, resource, verb) for rule in one("ClusterRole")["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    watch = ("get", "list", "watch")
    needed = {("", "nodes/status", "patch")} | {
        (group, resource, verb) for group, resource in
        (("", "nodes"), ("", "pods"), ("", "namespaces"), ("networking.k8s.io", "networkpolicies"))
        for verb in watch}
    assert needed <= granted, sorted(needed - granted)
    assert not {g for g in granted if g[2] in ("delete", "create", "update", "*")}, \
        "more than tartand needs"


def test_the_daemonset_is_a_node_agent():
    ds = one("DaemonSet")
    spec = pod_spec()
    assert ds["spec"]["selector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    main = container("kube-tartan")
    assert main["securityContext"].get("privileged") is True
    assert main["resources"]["requests"].keys() >= {"cpu", "memory"}
    assert [c["name"] for c in spec["initContainers"]] == ["install-cni"]
    assert container("install-cni")["image"] == main["image"]


# --- volumes, the ConfigMap and the host paths ----------------------------------------------


def volumes() -> dict[str, dict]:
    return {v["name"]: v for v in pod_spec()["volumes"]}


def mounted(c: dict, path: str) -> tuple[dict, dict]:
    """(the volume mount, its volume) under which `path` lies in container `c`."""
    best = None
    for mount in c.get("volumeMounts", []):
        top = mount["mountPath"].rstrip("/") or "/"
        if (path == top or path.startswith(top + "/")) and \
                (best is None or len(top) > len(best["mountPath"].rstrip("/"))):
            best = mount
    assert best is not None, f"{path} is not mounted in {c['name']}"
    return best, volumes()[best["name"]]


def host_path(c: dict, path: str) -> str:
    """Where `path` of container `c` is on the host (it must be a hostPath there)."""
    mount, volume = mounted(c, path)
    assert "hostPath" in volume, f"{path} in {c['name']} is not a host path"
    top = mount["mountPath"].rstrip("/")
    return volume["hostPath"]["path"] + path[len(top):]


def config_key(c: dict, path: str) -> str:
    """The ConfigMap key that file `path` of container `c` is."""
    mount, volume = mounted(c, path)
    assert "configMap" in volume, f"{path} in {c['name']} is not from a ConfigMap"
    assert volume["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    relative = os.path.relpath(path, mount["mountPath"])
    items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
    key = items.get(relative, relative) if items else relative
    assert key in one("ConfigMap")["data"], f"{path}: the ConfigMap has no key {key}"
    return key


def test_every_mount_names_a_volume_and_every_volume_is_used():
    spec = pod_spec()
    used = set()
    for c in spec["initContainers"] + spec["containers"]:
        for mount in c.get("volumeMounts", []):
            assert mount["name"] in volumes(), f"{c['name']} mounts {mount['name']}"
            used.add(mount["name"])
    assert used == set(volumes())


def test_host_paths_are_seen_where_they_are_on_the_host():
    """The requests tartand serves name host paths (CNI_NETNS, CNI_PATH, the plugins' data
    folders), and install-cni's links are relative: each host path is at its own path."""
    spec = pod_spec()
    for c in spec["initContainers"] + spec["containers"]:
        for mount in c.get("volumeMounts", []):
            volume = volumes()[mount["name"]]
            if "hostPath" in volume:
                assert mount["mountPath"].rstrip("/") == volume["hostPath"]["path"], mount


def test_the_agent_sees_the_host_paths_its_work_needs():
    main = container("kube-tartan")
    for path in (os.path.dirname(fastpath.SOCKET_PATH), subnet_env.DEFAULT_PATH,
                 journal.DEFAULT_DIR, meta_config.DEFAULT_DATA_DIR, ipam_config.DEFAULT_DATA_DIR,
                 "/opt/cni/bin", "/run/xtables.lock", "/lib/modules"):
        assert host_path(main, path) == path
    netns, _ = mounted(main, "/run/netns/cni-1234")
    assert netns["mountPropagation"] == "HostToContainer"  # netns made after the pod started
    assert mounted(main, "/lib/modules")[0].get("readOnly") is True


# --- what the containers run ----------------------------------------------------------------


def tartand_flags() -> set[str]:
    tartand = Path(sys.executable).with_name("tartand")
    proc = subprocess.run([str(tartand), "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return set(re.findall(r"--[a-z][a-z0-9-]*", proc.stdout))


def test_tartand_knows_every_flag_the_daemonset_passes():
    main = container("kube-tartan")
    assert main["command"] == ["/usr/local/bin/tartand"]
    passed = {arg.split("=", 1)[0] for arg in main["args"] if arg.startswith("--")}
    assert {"--kube-subnet-mgr", "--ip-masq", "--net-config"} <= passed
    unknown = passed - tartand_flags()
    assert not unknown, f"tartand --help has no {sorted(unknown)}"


def test_tartand_takes_its_node_name_from_the_downward_api(monkeypatch):
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
           for e in container("kube-tartan")["env"] if "valueFrom" in e}
    assert env == {"NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name",
                   "POD_NAMESPACE": "metadata.namespace"}
    monkeypatch.setenv("NODE_NAME", "node-from-the-api")
    assert agent.parse_args([]).node_name == "node-from-the-api"


def test_tartand_writes_rules_in_the_backend_the_node_uses():
    from tartan.kernel.iptables_backend import BACKEND_ENV

    env = {e["name"]: e.get("value") for e in container("kube-tartan")["env"]}
    assert env[BACKEND_ENV] == "auto"


def test_the_net_config_is_the_configmaps_and_valid():
    main = container("kube-tartan")
    path = main["args"][main["args"].index("--net-config") + 1]
    raw = json.loads(one("ConfigMap")["data"][config_key(main, path)])
    net = agent.parse_net_conf(raw)
    assert str(net.network) == "10.244.0.0/16"
    # the same network as `make install`'s /etc/tartan/net-conf.json
    assert raw == json.loads((PACKAGING / "net-conf.json").read_text())


@pytest.mark.parametrize("kind, path", [("livenessProbe", "/healthz"),
                                        ("readinessProbe", "/readyz"),
                                        ("startupProbe", "/healthz")])
def test_the_probes_reach_tartands_http_address(kind, path):
    """On a hostNetwork pod the kubelet probes the node's own address by default; tartand
    listens on loopback (its --http-addr default, which the DaemonSet keeps), so the probes
    name that host."""
    main = container("kube-tartan")
    assert not any(arg.startswith("--http-addr") for arg in main["args"])
    host, _, port = agent.DEFAULT_HTTP_ADDR.rpartition(":")
    assert main[kind]["httpGet"] == {"host": host, "path": path, "port": int(port)}


def install_cni_args() -> list[str]:
    init = container("install-cni")
    command = init["command"]
    assert command[-1] == "/usr/local/lib/tartan/packaging/install.py"
    copied = re.findall(r"^COPY\s+(\S+)\s+(\S+)", CONTAINERFILE.read_text(), re.MULTILINE)
    assert ("packaging/install.py", command[-1]) in copied
    return init["args"]


def test_install_cni_is_told_what_the_daemonset_promises():
    init = container("install-cni")
    install = packaging_module("install")
    args = install.parse_args(install_cni_args())
    assert args.action == "install-cni"
    assert ("dist/tartan/", f"{args.bundle}/") in re.findall(
        r"^COPY\s+(\S+)\s+(\S+)", CONTAINERFILE.read_text(), re.MULTILINE)
    assert host_path(init, str(args.cni_bin)) == install.CNI_BIN
    assert host_path(init, str(args.conflist)) == install.CONFLIST
    key = config_key(init, str(args.conflist_source))
    assert key == "cni-conf.json"
    # the agent sees the plugins where the init container put them
    assert host_path(container("kube-tartan"), install.CNI_BIN) == install.CNI_BIN


def test_the_configmaps_conflist_is_the_one_make_install_writes():
    from tartan.debug import lab_pods

    installed = json.loads((PACKAGING / "10-tartan.conflist").read_text())
    assert json.loads(one("ConfigMap")["data"]["cni-conf.json"]) == installed
    # and the lab's nodes make their pods with it too
    lab = json.loads(lab_pods.network_config_text())
    assert lab["plugins"] == installed["plugins"]


def test_the_conflist_is_valid_and_names_known_plugins(tmp_path):
    conf = json.loads(one("ConfigMap")["data"]["cni-conf.json"])
    assert conf["cniVersion"] in versions.SUPPORTED_VERSIONS
    reference = {p.name for p in REFERENCE_CNI.iterdir()} if REFERENCE_CNI.is_dir() else set()
    reference |= {"portmap", "bandwidth", "tuning", "firewall", "loopback"}
    types = [plugin["type"] for plugin in conf["plugins"]]
    assert types == [registry.NODE_PLUGIN, "tartan-portmap"]
    assert all(t in registry.NAMES or t in reference for t in types), types
    assert "tartan-portmap" in registry.NAMES, "cni/registry.py has no tartan-portmap yet"
    meta = meta_config.parse({**conf["plugins"][0], "name": conf["name"],
                              "cniVersion": conf["cniVersion"]})
    assert meta.delegate.get("isDefaultGateway") is True  # Services and the world, via cni0
    assert conf["plugins"][1]["capabilities"] == {"portMappings": True}
    # the check install-cni makes before it touches the host, on the same text
    source = tmp_path / "cni-conf.json"
    source.write_text(one("ConfigMap")["data"]["cni-conf.json"])
    packaging_module("install").read_conflist(source)

