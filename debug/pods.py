"""`tartanctl pod`: pods on this node without a container runtime, the way `cnitool` makes
them: a network namespace in /run/netns, and the network config from /etc/cni/net.d run
plugin by plugin from /opt/cni/bin with the CNI environment, kubelet-like CNI_ARGS and each
plugin's result handed to the next as prevResult (DEL in reverse order).

    tartanctl pod add NS/NAME     make it; prints its address
    tartanctl pod del NS/NAME     remove it (idempotent)
    tartanctl pod list            the pods made here, with their addresses

What a pod is (namespace, container ID, address) is kept in /run/tartan/pods, which goes
with a reboot, as the namespaces do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tartan.debug.node import CNI_CONF_DIR, RUN_DIR, find_network
from tartan.kernel.errors import TartanError
from tartan.kernel.files import write_atomic

PODS_DIR = f"{RUN_DIR}/pods"
CNI_BIN = "/opt/cni/bin:/usr/lib/cni"  # Tartan's, then Debian's reference plugins (portmap)
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class PodError(TartanError):
    """A pod that cannot be made or removed (the message says why)."""


@dataclass
class NodePod:
    namespace: str
    name: str
    netns: str
    container_id: str
    address: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_key(text: str) -> tuple[str, str]:
    namespace, _, name = text.rpartition("/")
    namespace = namespace or "default"
    for part in (namespace, name):
        if not _NAME.fullmatch(part):
            raise PodError(f"{text!r}: a pod is NS/NAME, each a DNS label (a-z, 0-9, '-')")
    return namespace, name


def conflist(conf_dir: str) -> dict[str, Any]:
    network = find_network(conf_dir)
    if not network.source.startswith("/"):
        raise PodError(f"no Tartan network config in {conf_dir} (make install writes "
                       "10-tartan.conflist)")
    try:
        doc = json.loads(Path(network.source).read_text())
    except (OSError, ValueError) as exc:
        raise PodError(f"cannot read {network.source}: {exc}") from None
    if isinstance(doc, dict) and "plugins" not in doc:  # a single-plugin .conf
        doc = {"cniVersion": doc.get("cniVersion"), "name": doc.get("name"), "plugins": [doc]}
    if not (isinstance(doc, dict) and doc.get("cniVersion") and doc.get("name")
            and isinstance(doc.get("plugins"), list) and doc["plugins"]
            and all(isinstance(p, dict) for p in doc["plugins"])):
        raise PodError(f"{network.source} is not a network config: it needs cniVersion, name "
                       "and a list of plugins")
    return doc


def run_plugins(pod: NodePod, doc: dict[str, Any], command: str, bin_dir: str) -> dict:
    """Each plugin of the list, as libcni runs them; the last result."""
    plugins = doc["plugins"] if command == "ADD" else list(reversed(doc["plugins"]))
    result: dict = {}
    for plugin in plugins:
        config = {"cniVersion": doc["cniVersion"], "name": doc["name"], **plugin}
        if command == "ADD" and result:
            config["prevResult"] = result
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id,
               "CNI_NETNS": pod.netns, "CNI_IFNAME": "eth0", "CNI_PATH": bin_dir,
               "CNI_ARGS": (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace};"
                            f"K8S_POD_NAME={pod.name};"
                            f"K8S_POD_INFRA_CONTAINER_ID={pod.container_id}")}
        exe = next((Path(d) / str(plugin.get("type", "")) for d in bin_dir.split(":")
                    if (Path(d) / str(plugin.get("type", ""))).is_file()), None)
        if exe is None:
            raise PodError(f"plugin {plugin.get('type')!r} not found in {bin_dir}")
        try:
            run = subprocess.run([str(exe)], input=json.dumps(config), env=env,
                                 capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired:
            raise PodError(f"CNI {command} {pod.key}: {plugin.get('type')} did not answer in "
                           "120 s") from None
        if run.returncode != 0:
            raise PodError(f"CNI {command} {pod.key}: {plugin.get('type')}: {_error(run)}")
        if command == "ADD":
            result = json.loads(run.stdout or "{}")
    return result


def _error(run: subprocess.CompletedProcess) -> str:
    try:
        doc = json.loads(run.stdout)
        return f"code {doc.get('code')}: {doc.get('msg')}"
    except ValueError:
        lines = (run.stderr or run.stdout or "").strip().splitlines()
        return lines[-1] if lines else f"exit {run.returncode}"


def _record(pod: NodePod) -> Path:
    return Path(PODS_DIR) / f"{pod.namespace}_{pod.name}.json"


def load(namespace: str, name: str) -> NodePod | None:
    path = Path(PODS_DIR) / f"{namespace}_{name}.json"
    try:
        return NodePod(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def add(namespace: str, name: str, conf_dir: str = CNI_CONF_DIR,
        bin_dir: str = CNI_BIN) -> NodePod:
    if load(namespace, name) is not None:
        raise PodError(f"pod {namespace}/{name} exists here (tartanctl pod del it first)")
    doc = conflist(conf_dir)
    netns = f"{namespace}-{name}"
    pod = NodePod(namespace, name, f"/run/netns/{netns}", secrets.token_hex(32))
    _ip("netns", "add", netns)
    try:
        _ip("-n", netns, "link", "set", "lo", "up")
        result = run_plugins(pod, doc, "ADD", bin_dir)
        ips = result.get("ips") or []
        if not ips:
            raise PodError(f"CNI ADD {pod.key} returned no address")
        pod.address = str(ips[0]["address"]).split("/")[0]
        Path(PODS_DIR).mkdir(parents=True, exist_ok=True)
        write_atomic(_record(pod), json.dumps(asdict(pod)) + "\n")
    except BaseException:
        with contextlib.suppress(TartanError):
            run_plugins(pod, doc, "DEL", bin_dir)
        _ip("netns", "del", netns, check=False)
        raise
    return pod


def delete(namespace: str, name: str, conf_dir: str = CNI_CONF_DIR,
           bin_dir: str = CNI_BIN) -> bool:
    """Remove the pod; False when there was none."""
    pod = load(namespace, name)
    if pod is None:
        return False
    run_plugins(pod, conflist(conf_dir), "DEL", bin_dir)
    _ip("netns", "del", Path(pod.netns).name, check=False)
    _record(pod).unlink(missing_ok=True)
    return True


def listed() -> list[NodePod]:
    folder = Path(PODS_DIR)
    found = [load(*p.stem.split("_", 1)) for p in sorted(folder.glob("*.json"))] \
        if folder.is_dir() else []
    return [pod for pod in found if pod is not None]


def _ip(*argv: str, check: bool = True) -> None:
    run = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if check and run.returncode != 0:
        raise PodError(f"ip {' '.join(argv)}: {run.stderr.strip()}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pod", help="make or remove a pod on this node with the CNI plugins "
                       "(as cnitool does)", description=__doc__.split("\n\n")[0])
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in (("add", "make a pod: its namespace and network"),
                       ("del", "remove a pod (nothing to do when it is not there)")):
        v = verbs.add_parser(verb, help=text)
        v.add_argument("pod", metavar="NS/NAME")
        v.add_argument("--cni-conf-dir", default=CNI_CONF_DIR)
        v.add_argument("--cni-bin-dir", default=CNI_BIN)
    verbs.add_parser("list", help="the pods made here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.verb == "list":
            for pod in listed():
                print(f"{pod.key:<30} {pod.address:<16} {pod.netns}")
            return 0
        namespace, name = parse_key(args.pod)
        if args.verb == "add":
            pod = add(namespace, name, args.cni_conf_dir, args.cni_bin_dir)
            print(f"{pod.key} {pod.address} {pod.netns}")
        elif not delete(namespace, name, args.cni_conf_dir, args.cni_bin_dir):
            print(f"no pod {namespace}/{name} here")
    except (TartanError, OSError, ValueError) as exc:
        print(f"tartanctl pod: {exc}", file=sys.stderr)
        return 1
    return 0
