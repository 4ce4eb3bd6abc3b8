"""Connections tried for real between the lab's pods, set against `policy explain`.

The prober connects from inside the source pod's network namespace (a thread of ours enters
it; setns is per thread and a socket stays in the namespace it was made in), as upstream's
e2e prober runs `agnhost connect --timeout=1s` in the source pod: TCP is allowed when the
connect succeeds, UDP when the listener's answer to a datagram comes back; a denied attempt
is tried once more. The matrix probes every ordered pair of serving pods but a pod to itself,
`workers` at a time, and the expected table is netpol.explain's, computed from the objects
in the lab's store (what every node's enforcer reads), limited to the probed pods.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tartan.debug.lab_state import LabState, Pod
from tartan.debug.lab_sys import LabError, netns_path
from tartan.ipam.objects import Objects
from tartan.kernel.errors import Gone, KernelFailure
from tartan.kernel.netns import entered
from tartan.netpol.explain import Cell, Key, Table, compare, truth_table
from tartan.netpol.manifest import load_objects
from tartan.netpol.model import Cluster, Protocol
from tartan.netpol.source import documents

TIMEOUT = 1.0  # seconds, agnhost connect's --timeout in upstream's prober
TRIES = 2  # one retry
WORKERS = 32  # a denied probe mostly waits: the bound is on sockets, not on CPU
PROBE_PAYLOAD = b"probe\n"
# UDP probes' source ports: below the kernel's ephemeral range (32768-60999), so no port the
# kernel picks for a TCP probe collides with one of them
UDP_SOURCE_PORTS = range(10000, 32768)


@dataclass(frozen=True)
class Outcome:
    allowed: bool
    reason: str  # "connected", "answered", "timed out", "refused", ...
    answer: str = ""  # what the listener sent (its pod's namespace/name)


Attempt = Callable[[str, str, int, Protocol, float, int], Outcome]
NextPort = Callable[[], int]  # the source port of the next UDP attempt (0: the kernel's pick)


class SourcePorts:
    """UDP source ports handed out in turn, across runs: a file keeps the next one.

    A UDP attempt from a port that an earlier, allowed attempt to the same destination used
    less than 30 s ago would match that flow's conntrack entry and pass as its reply, even
    after a policy came to deny it; a port the kernel picks at random does that now and then.
    Turning through 22,768 ports, one is used again only after as many UDP attempts.
    """

    def __init__(self, path: Path, count: int) -> None:
        self._lock = threading.Lock()
        self._next, self._left = self._reserve(path, count), count

    def __call__(self) -> int:
        with self._lock:
            if self._left <= 0:
                return 0
            port, self._left = self._next, self._left - 1
            self._next = _turn(self._next + 1)
            return port

    @staticmethod
    def _reserve(path: Path, count: int) -> int:
        with open(path, "a+") as file:
            fcntl.flock(file, fcntl.LOCK_EX)  # two probing processes take apart blocks
            file.seek(0)
            text = file.read().strip()
            first = _turn(int(text)) if text.isdigit() else UDP_SOURCE_PORTS.start
            file.seek(0)
            file.truncate()
            file.write(str(_turn(first + count)))
        return first


def _turn(port: int) -> int:
    low, size = UDP_SOURCE_PORTS.start, len(UDP_SOURCE_PORTS)
    return low + (port - low) % size


def pod_ref(text: str) -> str:
    """`NS/POD` (or `POD`, in default) as the key `namespace/name`."""
    namespace, _, name = text.rpartition("/")
    if not name or "/" in namespace:
        raise LabError(f"{text!r} is not a pod: give NS/POD, e.g. x/a")
    return f"{namespace or 'default'}/{name}"


def find(state: LabState, text: str) -> Pod:
    pod = state.pod(pod_ref(text))
    if pod is None or not pod.address:
        known = ", ".join(p.key for p in state.pods if p.address) or "none"
        raise LabError(f"lab {state.name} has no pod {pod_ref(text)} (pods: {known})")
    return pod


def reason(exc: OSError) -> str:
    """A failed attempt in a word or two: `timed out`, `refused`, `no route to host`."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if exc.errno is not None and exc.errno in errno.errorcode:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def _text(data: bytes) -> str:
    return data.decode(errors="replace").strip()


def tcp(ip: str, port: int, timeout: float) -> Outcome:
    with socket.create_connection((ip, port), timeout=timeout) as conn:
        try:
            answer = _text(conn.recv(256))
        except OSError:
            answer = ""  # connected is what counts
    return Outcome(True, "connected", answer)


def udp(ip: str, port: int, timeout: float, source_port: int = 0) -> Outcome:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        if source_port:
            try:
                sock.bind(("", source_port))
            except OSError:  # in use in this pod: the kernel picks one
                sock.bind(("", 0))
        sock.connect((ip, port))
        sock.send(PROBE_PAYLOAD)
        return Outcome(True, "answered", _text(sock.recv(256)))


def attempt(netns: str, ip: str, port: int, protocol: Protocol, timeout: float,
            source_port: int = 0) -> Outcome:
    """One try from inside the namespace `netns` (this thread enters it and comes back);
    `source_port` is for UDP (0: the kernel's pick)."""
    try:
        with entered(netns_path(netns)):
            if protocol is Protocol.TCP:
                return tcp(ip, port, timeout)
            return udp(ip, port, timeout, source_port)
    except (KernelFailure, Gone) as exc:
        raise LabError(f"cannot probe from {netns}: {exc}") from None
    except OSError as exc:
        return Outcome(False, reason(exc))


def probe(src: Pod, dst: Pod, port: int, protocol: Protocol, tries: int = TRIES,
          timeout: float = TIMEOUT, attempt: Attempt = attempt,
          source_ports: NextPort = lambda: 0) -> Outcome:
    """Allowed when one of `tries` attempts gets through."""
    outcome = Outcome(False, "not tried")
    for _ in range(max(1, tries)):
        outcome = attempt(src.netns, dst.ip, port, protocol, timeout,
                          source_ports() if protocol is Protocol.UDP else 0)
        if outcome.allowed:
            break
    return outcome


Flow = tuple[Pod, Pod, int, Protocol]


def flows(pods: Sequence[Pod], ports: Sequence[int],
          protocols: Sequence[Protocol]) -> list[Flow]:
    """Every (from, to, port, protocol) but a pod to itself, in the tables' order."""
    return [(src, dst, port, protocol) for port in ports for protocol in protocols
            for src in pods for dst in pods if src.key != dst.key]


def probe_all(pods: Sequence[Pod], ports: Sequence[int], protocols: Sequence[Protocol],
              workers: int = WORKERS,
              one: Callable[[Pod, Pod, int, Protocol], Outcome] = probe
              ) -> dict[Key, Outcome]:
    """Every flow of the matrix (`one` probes one: give it a `SourcePorts`)."""
    todo = flows(pods, ports, protocols)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda flow: one(*flow), todo))
    return {(s.key, d.key, port, protocol): outcome
            for (s, d, port, protocol), outcome in zip(todo, results, strict=True)}


def serving(state: LabState) -> tuple[list[Pod], list[Pod]]:
    """(the pods that serve ports, sorted as the tables sort them; the others: `up`'s)."""
    pods = sorted((p for p in state.pods if p.address), key=lambda p: (p.namespace, p.name))
    return [p for p in pods if p.ports], [p for p in pods if not p.ports]


# -- the model ------------------------------------------------------------------------


@dataclass
class Matrix:
    pods: list[str]
    ports: tuple[int, ...]
    protocols: tuple[Protocol, ...]
    observed: dict[Key, Outcome]
    expected: Table
    problems: list[str] = field(default_factory=list)  # each makes the run fail
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def seen(self) -> dict[Key, bool]:
        """The observations the model has cells for."""
        return {key: o.allowed for key, o in self.observed.items() if key in self.expected.cells}

    def differences(self) -> list[Cell]:
        return compare(self.expected, self.seen())

    @property
    def ok(self) -> bool:
        return not self.problems and not self.differences()


def expected(objects: Mapping[str, Objects], pods: Sequence[Pod], ports: Sequence[int],
             protocols: Sequence[Protocol]) -> tuple[Table, list[str], list[str]]:
    """(the truth table of the stored objects over `pods`; problems: a pod the store does not
    know or knows with another address; notes: invalid stored objects, left out as the
    enforcer leaves them out)."""
    loaded = load_objects([doc for _, doc in documents(objects)], "the lab's store")
    cluster = loaded.cluster()
    known = {p.key: p for p in cluster.pods}
    problems = []
    for pod in pods:
        model = known.get(pod.key)
        ips = sorted(str(ip) for ip in model.ips) if model else []
        if model is None:
            problems.append(f"{pod.key}: not in the store (no Pod object, no address record)")
        elif pod.ip not in ips:
            problems.append(f"{pod.key}: the store records {', '.join(ips) or 'no address'}, "
                            f"the pod has {pod.ip}")
    keys = {p.key for p in pods}
    chosen = tuple(p for p in cluster.pods if p.key in keys)
    table = truth_table(Cluster(cluster.namespaces, chosen, cluster.policies), ports,
                        protocols)
    return table, problems, [str(e) for e in loaded.errors]
