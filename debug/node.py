"""What a Tartan node has, as the operator tools read it: the network config the runtime uses
(the first in /etc/cni/net.d, as libcni picks it), and the tartand processes running here."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tartan.cni import subnet_env
from tartan.cni.plugins import meta_config
from tartan.ipam.config import DEFAULT_DATA_DIR as IPAM_DATA_DIR
from tartan.kernel.errors import TartanError

CNI_CONF_DIR = "/etc/cni/net.d"
RUN_DIR = os.path.dirname(subnet_env.DEFAULT_PATH)  # /run/tartan
CONF_SUFFIXES = (".conf", ".conflist", ".json")  # what libcni reads, in name order


def config_files(conf_dir: str) -> list[Path]:
    """The network configs of `conf_dir` in the order a runtime tries them."""
    folder = Path(conf_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in CONF_SUFFIXES and p.is_file())


@dataclass(frozen=True)
class Network:
    """What Tartan's network config says lives where (its defaults when there is none)."""

    name: str = "tartan"
    bridge: str = str(meta_config.BRIDGE_DEFAULTS["bridge"])
    ipam_dir: str = IPAM_DATA_DIR
    data_dir: str = meta_config.DEFAULT_DATA_DIR
    subnet_file: str = subnet_env.DEFAULT_PATH
    source: str = "defaults (no Tartan network config found)"


def find_network(conf_dir: str) -> Network:
    """The first config in `conf_dir` whose plugin is `tartan`."""
    for path in config_files(conf_dir):
        with contextlib.suppress(OSError, ValueError, TartanError):  # not a usable config
            doc = json.loads(path.read_text())
            plugins = doc.get("plugins", [doc]) if isinstance(doc, dict) else []
            for plugin in plugins:
                if isinstance(plugin, dict) and plugin.get("type") == "tartan":
                    conf = meta_config.parse({"name": doc.get("name"), **plugin})
                    delegate = conf.delegate
                    ipam = delegate.get("ipam") or {}
                    return Network(conf.name, str(delegate.get("bridge", Network.bridge)),
                                   str(ipam.get("dataDir", IPAM_DATA_DIR)), conf.data_dir,
                                   conf.subnet_file, str(path))
    return Network()


def agents_here() -> list[int]:
    """tartand processes in this network namespace."""
    mine = os.stat("/proc/self/ns/net").st_ino
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:2]
            if any(os.path.basename(arg.decode(errors="replace")) == "tartand" for arg in argv) \
                    and os.stat(entry / "ns" / "net").st_ino == mine:
                found.append(int(entry.name))
    return sorted(found)




RUNTIME_NETNS_DIRS = (Path("/run/netns"), Path("/var/run/netns"))


def runtime_namespaces() -> list[str]:
    """The network namespaces runtimes bind-mount (podman, containerd, `ip netns`)."""
    seen: set[str] = set()
    out = []
    for folder in RUNTIME_NETNS_DIRS:
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                out.append(str(path))
    return out
