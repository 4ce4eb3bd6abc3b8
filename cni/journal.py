"""/run/tartan/cni-journal: the pod requests a node answered without its agent's record.

tartand records which pod got which address from the CNI requests its socket serves
(backends/pod_records.py); every node's NetworkPolicy enforcer reads those records. When no
agent answers, the plugin runs in-process, and nobody would record the pod: a policy would
not know its address, and after a DEL the old record would keep an address that the next pod
may get. So the in-process plugin writes each successful ADD and DEL of a kubelet pod here,
one file per request, and the agent records them in order when it starts (before it serves)
and every few seconds after. The agent also writes here a request whose record the store
refused, so it is tried again rather than lost.

Best effort on the plugin's side: a journal that cannot be written never fails the request.
/run is cleared at boot, as are the pods.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tartan.kernel.files import write_atomic

DEFAULT_DIR = "/run/tartan/cni-journal"
DIR_ENV = "TARTAN_CNI_JOURNAL"  # another folder, for the plugins (tartand: --cni-journal)
KEPT_ENV = ("CNI_ARGS", "CNI_CONTAINERID", "CNI_IFNAME")
COMMANDS = ("ADD", "DEL")


@dataclass(frozen=True)
class Entry:
    path: Path
    command: str
    env: dict[str, str]
    stdout: str


def of_a_pod(env: Mapping[str, str]) -> bool:
    """kubelet names the pod in CNI_ARGS; other callers' requests are not recorded."""
    args = env.get("CNI_ARGS", "")
    return "K8S_POD_NAMESPACE=" in args and "K8S_POD_NAME=" in args


def plugin_dir(env: Mapping[str, str]) -> str:
    return env.get(DIR_ENV) or DEFAULT_DIR


def note(command: str, env: Mapping[str, str], exit_code: int, stdout: str,
         directory: str | os.PathLike[str] = DEFAULT_DIR) -> bool:
    """Keep one answered request for the agent; False when it is not one to keep or the
    journal cannot be written (the caller goes on either way)."""
    if exit_code != 0 or command not in COMMANDS or not of_a_pod(env):
        return False
    record = {"command": command, "env": {k: env[k] for k in KEPT_ENV if k in env},
              "stdout": stdout if command == "ADD" else ""}
    folder = Path(directory)
    name = f"{time.time_ns():020d}-{os.getpid()}-{command.lower()}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(folder / name, json.dumps(record), mode=0o600, durable=False)
    except OSError:
        return False
    return True


def entries(directory: str | os.PathLike[str] = DEFAULT_DIR) -> list[Entry]:
    """What the journal holds, oldest first; unreadable files are removed."""
    try:
        names = sorted(entry.name for entry in os.scandir(directory)
                       if entry.name.endswith(".json") and entry.is_file())
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        path = Path(directory) / name
        try:
            record = json.loads(path.read_text())
            found.append(Entry(path, str(record["command"]), dict(record["env"]),
                               str(record.get("stdout", ""))))
        except FileNotFoundError:
            continue  # taken by another drain
        except (OSError, ValueError, KeyError, TypeError):
            remove(path)  # not one of ours, or cut short: nothing to learn from it
    return found


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
