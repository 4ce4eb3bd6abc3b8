"""Which pod got which address on this node: recorded from the CNI requests tartand serves.

kubelet's runtimes pass the pod in CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME). After an ADD
that succeeded, its result's addresses are written to the store (`podips`, key namespace/name,
with this node and the container id); after a DEL of the same container the record goes.
The NetworkPolicy enforcers of every node read these records: that is how a policy that
selects pods by label knows their addresses. A request without the pod's name (not from
kubelet) records nothing. A record the store refuses goes to the CNI journal
(cni/journal.py), as do the requests the plugins answered in-process while no agent ran:
`drain` records them, at start before the socket serves and every few seconds after (the
pod itself is unaffected either way: its reply was sent before).
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Mapping
from typing import Any

from tartan.backends.log import Log
from tartan.cni import journal
from tartan.ipam.objects import POD_IPS, InvalidObjectKey, ObjectStore


def pod_of(env: Mapping[str, str]) -> str | None:
    """`namespace/name` from CNI_ARGS, as kubelet sets them; None when they are not there."""
    args = dict(part.partition("=")[::2] for part in env.get("CNI_ARGS", "").split(";")
                if "=" in part)
    namespace, name = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")
    return f"{namespace}/{name}" if namespace and name else None


def addresses(stdout: str) -> list[str]:
    """The addresses of an ADD result (any spec version from 0.3.0), without prefixes."""
    try:
        result = json.loads(stdout)
        found = [ipaddress.ip_interface(ip["address"]).ip for ip in result.get("ips", [])]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []
    return [str(ip) for ip in found]


class PodRecorder:
    """Called by the CNI socket server after every request it answered."""

    def __init__(self, store: ObjectStore, node: str, log: Log,
                 journal_dir: str = journal.DEFAULT_DIR) -> None:
        self.store, self.node, self.log = store, node, log
        self.journal_dir = journal_dir
        self._containers: dict[str, str] = {}  # pod -> container id recorded by this node
        self._lock = threading.Lock()

    def load(self) -> None:
        """What this node recorded before a restart, so a late DEL of an older sandbox
        still leaves a newer record alone."""
        objects, _ = self.store.list_objects()
        with self._lock:
            self._containers = {key: str(record.get("containerID", ""))
                                for key, record in objects[POD_IPS].items()
                                if record.get("node") == self.node}

    def served(self, command: str, env: Mapping[str, str], exit_code: int,
               stdout: str) -> None:
        pod = pod_of(env)
        if exit_code != 0 or pod is None:
            return
        try:
            self._handle(pod, command, env, stdout)
        except InvalidObjectKey as exc:
            self.log.warn("pod.not_recorded", pod=pod, error=str(exc))
        except Exception as exc:  # the store: the pod works; the journal keeps the request
            kept = journal.note(command, env, exit_code, stdout, self.journal_dir)
            self.log.warn("pod.not_recorded", pod=pod, command=command,
                          error=f"{type(exc).__name__}: {exc}",
                          retry="from the journal" if kept else "no")

    def drain(self) -> int:
        """Record what the journal holds (requests answered without this agent, or whose
        record failed), oldest first; the number recorded. Stops at the first store
        failure: what is left is tried at the next drain."""
        done = 0
        for entry in journal.entries(self.journal_dir):
            pod = pod_of(entry.env)
            try:
                if pod is not None:
                    self._handle(pod, entry.command, entry.env, entry.stdout)
                    done += 1
            except InvalidObjectKey as exc:
                self.log.warn("pod.not_recorded", pod=pod, error=str(exc))
            except Exception as exc:
                self.log.warn("pod.journal_kept", pod=pod, error=f"{type(exc).__name__}: {exc}")
                break
            journal.remove(entry.path)
        return done

    def _handle(self, pod: str, command: str, env: Mapping[str, str], stdout: str) -> None:
        container = env.get("CNI_CONTAINERID", "")
        if command == "ADD":
            self._record(pod, container, env, addresses(stdout))
        elif command == "DEL":
            self._forget(pod, container)

    def _record(self, pod: str, container: str, env: Mapping[str, str],
                ips: list[str]) -> None:
        if not ips:
            return
        record: dict[str, Any] = {"ips": ips, "node": self.node, "containerID": container,
                                  "ifname": env.get("CNI_IFNAME", "")}
        with self._lock:
            self.store.put_object(POD_IPS, pod, record)
            self._containers[pod] = container
        self.log.info("pod.recorded", pod=pod, ips=",".join(ips))

    def _forget(self, pod: str, container: str) -> None:
        with self._lock:
            known = self._containers.get(pod)
            if known is not None and known != container:
                return  # an older sandbox of the pod: the record is the newer one's
            if self.store.delete_object(POD_IPS, pod):
                self.log.info("pod.forgotten", pod=pod)
            self._containers.pop(pod, None)
