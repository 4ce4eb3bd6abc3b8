"""`tartanctl lab trace`: follow one probe from a pod, hop by hop, and say where it ended.

    trace NS/POD NS/POD|IP [--port P] [--protocol tcp|udp|icmp] [--size BYTES] [-o json]

The probe is sent from inside the source pod from a source port of its own, so it can be told
apart from everything else. While it travels:
- every hop of its path (capture_hops) listens, with a kernel filter for the probe alone;
- each node traces it through netfilter: a chain `TARTAN-TRACE` in the raw table, jumped to
  first from PREROUTING and OUTPUT, marks the probe for tracing (`-j TRACE`, which nf_tables
  turns into `meta nftrace set 1`), and `xtables-monitor --trace` reports every rule it meets.
The path printed is the expected one (out of the source's node, into the destination's),
each hop seen or not. The end is "delivered", or the hop after which the probe vanished and
why: the rule that dropped it (table, chain, rule) and, for a Tartan NetworkPolicy chain,
the policies and the direction; a chain's policy (FORWARD DROP set by another component);
else what the nodes' kernels show (trace_causes: no route, MTU, a missing neighbour or FDB
entry, strict rp_filter) or the underlay losing the tunnel's packets. `--size` sends a
probe that large with DF set, to find MTU trouble. The trace chain is removed at the end,
also after Ctrl-C or SIGTERM. On an iptables-legacy host the same chain's TRACE makes the
kernel log the rules instead (trace_legacy).
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

from tartan.backends.masq import FORWARD_CHAIN
from tartan.debug import capture, trace_causes, trace_legacy
from tartan.debug.capture_decode import inner_frame, internet_checksum
from tartan.debug.capture_hops import Hop
from tartan.kernel.errors import TartanError
from tartan.kernel.iptables import Chain, Iptables, Rule, Table
from tartan.kernel.iptables_backend import host_backend
from tartan.kernel.netns import entered

TRACE_CHAIN = "TARTAN-TRACE"
PAYLOAD = b"tartan trace\n"
IP_MTU_DISCOVER = 10  # <linux/in.h>; the socket module has it from Python 3.12
IP_PMTUDISC_PROBE = 3  # DF set, and the path MTU the socket learnt is not applied
SETTLE = 1.5  # seconds the probe may take (one retransmission of a SYN is at 1 s)
ANSWERED = ("connected", "answered", "refused")  # the destination's answer is back: no wait
_TRACE_LINE = re.compile(r"\s*TRACE: \d+ (?P<id>[0-9a-f]+) (?P<table>[^:]+):(?P<chain>[^:]+):"
                         r"(?P<kind>rule|policy|return)(?::0x[0-9a-f]+)?:?(?P<verdict>[A-Z]*)"
                         r"\s*(?P<rule>.*)")
_ISOLATED_BY = re.compile(r"(?:ingress|egress) denied, isolated by ([^\"]+)")


class TraceError(TartanError):
    """A trace that cannot be made (the message says why and what to do)."""


@dataclass(frozen=True)
class Probe:
    src_ip: str
    dst_ip: str
    protocol: str  # tcp, udp, icmp
    port: int
    source_port: int
    size: int = 0  # the IP packet's length asked for (udp, icmp), sent with DF set; 0: small

    @property
    def length(self) -> int:
        """Of the probe's IP packet: a SYN with its options, else header + payload."""
        if self.protocol == "tcp":
            return 60
        return max(self.size, 28 + (56 if self.protocol == "icmp" else len(PAYLOAD)))

    def match(self) -> tuple[str, ...]:
        """iptables match arguments for the probe's packets, in its direction."""
        base = ("-s", f"{self.src_ip}/32", "-d", f"{self.dst_ip}/32", "-p", self.protocol)
        if self.protocol == "icmp":
            return base
        return (*base, "-m", self.protocol, "--sport", str(self.source_port), "--dport",
                str(self.port))

    def bpf(self) -> str:
        """A capture filter for the probe and its replies."""
        hosts = f"host {self.src_ip} and host {self.dst_ip}"
        if self.protocol == "icmp":
            return f"icmp and {hosts}"
        return f"{self.protocol} and {hosts} and port {self.source_port}"


@dataclass
class Event:
    """One rule (or chain policy) the probe met in one node's netfilter."""

    node: str
    table: str
    chain: str
    kind: str
    verdict: str
    rule: str

    def dropped(self) -> bool:
        return self.verdict in ("DROP", "REJECT")


@dataclass(frozen=True)
class Step:
    hop: str  # node/hop
    direction: str
    seen: bool


@dataclass
class Result:
    flow: str
    steps: list[Step]
    delivered: bool
    outcome: str  # what the probe's socket said: connected, refused, timed out, answered
    where: str = ""  # the last hop seen, when not delivered
    cause: str = ""
    rule: str = ""
    policies: list[str] = field(default_factory=list)
    direction: str = ""
    events: list[dict] = field(default_factory=list)

    def json(self) -> dict:
        return asdict(self)


# -- tracing on a node ----------------------------------------------------------------------


def trace_table(probe: Probe) -> Table:
    return Table("raw", chains=(Chain(TRACE_CHAIN, ((*probe.match(), "-j", "TRACE"),)),),
                 rules=(Rule("PREROUTING", ("-j", TRACE_CHAIN), insert=True),
                        Rule("OUTPUT", ("-j", TRACE_CHAIN), insert=True)))


def untrace_table() -> Table:
    return Table("raw", delete_chains=(TRACE_CHAIN,))


@contextlib.contextmanager
def traced(nodes: Sequence[tuple[str, str]], probe: Probe,
           backend: str | None = None) -> Iterator[list[Event]]:
    """Trace `probe` through netfilter on each (node, netns path) while the body runs; the
    events, read once the body is done. `backend` is where the nodes' rules are (default:
    the host's iptables). The trace chains go, whatever happens."""
    backend = backend or host_backend()
    with (_traced_legacy(nodes, probe) if backend == "legacy"
          else _traced_nft(nodes, probe)) as events:
        yield events


@contextlib.contextmanager
def _installed(nodes: Sequence[tuple[str, str]], probe: Probe, backend: str
               ) -> Iterator[Callable[[str], None]]:
    """The trace chain in each node while the body runs; the body gets a function that is
    told each node's namespace as its chain goes in."""
    installed: list[str] = []
    try:
        def install(netns: str) -> None:
            with entered(netns):
                ipt = Iptables(4, backend=backend)
                ipt.apply(trace_table(probe), ipt.read("raw"))
            installed.append(netns)

        yield install
    finally:
        for netns in installed:
            with entered(netns):
                ipt = Iptables(4, backend=backend)
                ipt.apply(untrace_table(), ipt.read("raw"))


@contextlib.contextmanager
def _traced_nft(nodes: Sequence[tuple[str, str]], probe: Probe) -> Iterator[list[Event]]:
    """nf_tables: `xtables-monitor --trace` in each node reports the rules (with verdicts)."""
    monitors: list[tuple[str, subprocess.Popen]] = []
    events: list[Event] = []
    with _installed(nodes, probe, "nft") as install:
        try:
            for name, netns in nodes:
                install(netns)
                monitor = subprocess.Popen(["nsenter", f"--net={netns}", "xtables-monitor",
                                            "--trace"], stdout=subprocess.PIPE,
                                           stderr=subprocess.DEVNULL, text=True)
                monitors.append((name, monitor))
            time.sleep(0.2)  # the monitors subscribe
            yield events
        finally:
            for name, monitor in monitors:
                monitor.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    out, _ = monitor.communicate(timeout=5)
                    events += [event for line in out.splitlines()
                               if (event := parse_event(name, line)) is not None]
                if monitor.poll() is None:
                    monitor.kill()


@contextlib.contextmanager
def _traced_legacy(nodes: Sequence[tuple[str, str]], probe: Probe) -> Iterator[list[Event]]:
    """iptables-legacy: the kernel logs the rules by number (trace_legacy); their text and
    verdicts are read from the nodes before the trace chains go."""
    events: list[Event] = []
    with trace_legacy.logging_in_namespaces([netns for _, netns in nodes]) as logging, \
            trace_legacy.kernel_log() as read, _installed(nodes, probe, "legacy") as install:
        try:
            for _, netns in nodes:
                install(netns)
            yield events
        finally:
            found = trace_legacy.events(read(), nodes, probe.src_ip, probe.dst_ip)
            where = dict(nodes)
            live = {name: trace_legacy.tables(where[name], {t for n, t, *_ in found
                                                            if n == name})
                    for name in {node for node, *_ in found}}
            for node, table, chain, kind, number in found:
                verdict, rule = trace_legacy.rule_of(live[node][table], chain, kind, number)
                events.append(Event(node, table, chain, kind, verdict, rule))
        if not found and not logging:
            raise TraceError("iptables-legacy's TRACE logged nothing: a node is a network "
                             "namespace, whose rules the kernel logs only with "
                             "net.netfilter.nf_log_all_netns=1 (set it in the host's "
                             "namespace, or run the trace from there)")


def parse_event(node: str, line: str) -> Event | None:
    found = _TRACE_LINE.match(line)
    if not found:
        return None
    return Event(node, found["table"], found["chain"], found["kind"], found["verdict"],
                 found["rule"].strip())


# -- the probe ------------------------------------------------------------------------------


def send(netns: str, probe: Probe, timeout: float = 1.0) -> str:
    """Send the probe from inside the pod: what its socket saw."""
    with entered(netns):
        if probe.protocol == "icmp":
            return _echo(probe, timeout)
        kind = socket.SOCK_STREAM if probe.protocol == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
            sock.bind(("", probe.source_port))
            sock.settimeout(timeout)
            try:
                if kind == socket.SOCK_STREAM:
                    sock.connect((probe.dst_ip, probe.port))
                    return "connected"
                sock.sendto(PAYLOAD.ljust(probe.length - 28, b"."), (probe.dst_ip, probe.port))
                sock.recv(256)
                return "answered"
            except TimeoutError:
                return "timed out"
            except ConnectionRefusedError:
                return "refused"
            except OSError as exc:
                return _said(exc)


def _echo(probe: Probe, timeout: float) -> str:
    """One ICMP echo request, its identifier the probe's source port (ping cannot send a
    large one with DF while ignoring the path MTU the namespace learnt)."""
    payload = PAYLOAD.ljust(probe.length - 28, b".")
    header = struct.pack("!BBHHH", 8, 0, 0, probe.source_port, 1)
    checksum = struct.pack("!H", internet_checksum(header + payload))
    request = header[:2] + checksum + header[4:] + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        try:
            sock.sendto(request, (probe.dst_ip, 0))
        except OSError as exc:
            return _said(exc)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                packet = sock.recv(65535)
            except TimeoutError:
                break
            icmp = packet[(packet[0] & 0x0F) * 4:]
            if icmp[:1] == b"\x00" and struct.unpack("!H", icmp[4:6])[0] == probe.source_port:
                return "answered"
    return "no answer"


def _said(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else str(exc)


def new_probe(src_ip: str, dst_ip: str, protocol: str, port: int, size: int = 0) -> Probe:
    if size and protocol == "tcp":
        raise TraceError("--size needs --protocol udp or icmp (a TCP probe is a SYN)")
    if size and not 29 <= size <= 65535:
        raise TraceError(f"--size {size}: an IP packet of 29 to 65535 bytes")
    return Probe(src_ip, dst_ip, protocol, port, random.randint(33000, 60000), size)


# -- the whole trace ------------------------------------------------------------------------


def expected_path(src_hops: Sequence[Hop], dst_hops: Sequence[Hop]) -> list[tuple[str, str]]:
    """(node/hop, direction) the probe should pass: out of its node, into the other's."""
    def leaving(hop: Hop) -> str:
        return "in" if hop.name in ("veth", "bridge") else "out"

    def arriving(hop: Hop) -> str:
        return "out" if hop.name in ("veth", "bridge") else "in"

    return ([(h.label, leaving(h)) for h in src_hops]
            + [(h.label, arriving(h)) for h in reversed(dst_hops)])


def run(src_netns: str, probe: Probe, src_hops: Sequence[Hop], dst_hops: Sequence[Hop],
        nodes: Sequence[tuple[str, str]], flow: str, backend: str | None = None) -> Result:
    hops = [*src_hops, *[h for h in dst_hops if h.label not in {s.label for s in src_hops}]]
    seen: list[tuple[str, str]] = []
    listening = threading.Event()
    done = threading.Event()

    def listen() -> None:
        sockets = capture.Capture(hops, probe.bpf())
        try:
            listening.set()
            for packet in sockets.read(done.is_set):
                frame = inner_frame(packet.data, packet.hop.vxlan_port)
                if _forward(frame, probe):
                    seen.append((packet.hop.label, "out" if packet.outbound else "in"))
        finally:
            sockets.close()

    listener = threading.Thread(target=listen, daemon=True)
    with traced(nodes, probe, backend) as events:
        listener.start()
        if not listening.wait(10):
            raise TraceError("the capture did not start")
        outcome = send(src_netns, probe)
        time.sleep(SETTLE if outcome not in ANSWERED else 0.3)
        done.set()
        listener.join(10)
    result = judge(flow, expected_path(src_hops, dst_hops), seen, events, outcome)
    if not result.delivered and not result.rule:
        where = trace_causes.vanishing([(s.hop, s.direction, s.seen) for s in result.steps],
                                       {h.label: h for h in hops}, probe.src_ip, probe.dst_ip,
                                       probe.length)
        cause = trace_causes.explain(where) if where else ""
        result.cause = cause or result.cause
    return result


def _forward(frame: bytes, probe: Probe) -> bool:
    """Whether an Ethernet frame is the probe going out (not its reply)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return False
    return (socket.inet_ntoa(frame[26:30]) == probe.src_ip
            and socket.inet_ntoa(frame[30:34]) == probe.dst_ip)


def judge(flow: str, path: list[tuple[str, str]], seen: list[tuple[str, str]],
          events: list[Event], outcome: str) -> Result:
    got = set(seen)
    steps = [Step(hop, direction, (hop, direction) in got) for hop, direction in path]
    delivered = bool(steps) and steps[-1].seen
    result = Result(flow, steps, delivered, outcome,
                    events=[asdict(e) for e in events])
    if delivered:
        return result
    last = max((i for i, step in enumerate(steps) if step.seen), default=-1)
    result.where = steps[last].hop if last >= 0 else "(nowhere: not even the source pod)"
    drop = next((e for e in events if e.dropped()), None)
    if drop is not None:
        result.rule = f"{drop.node}: {drop.table} {drop.chain} " + (
            drop.rule if drop.kind == "rule" else f"policy {drop.verdict}")
        policies = _ISOLATED_BY.search(drop.rule)
        if drop.chain.startswith(("TARTAN-NPI-", "TARTAN-NPE-")) and policies:
            result.policies = [p.strip() for p in policies[1].split(",")]
            result.direction = "ingress" if drop.chain.startswith("TARTAN-NPI-") else "egress"
            result.cause = (f"denied by NetworkPolicy {', '.join(result.policies)} "
                            f"({result.direction})")
        elif drop.kind == "policy":
            result.cause = (f"{drop.chain}'s policy is {drop.verdict} on {drop.node} and no "
                            "rule accepted the probe: another component (docker, a firewall) "
                            f"set the policy and Tartan's accepts ({FORWARD_CHAIN}) are not "
                            "there (is tartand running?)" if drop.chain == "FORWARD" else
                            f"{drop.chain}'s policy is {drop.verdict} on {drop.node} and no "
                            "rule accepted the probe")
        else:
            result.cause = f"dropped by a rule of another component ({drop.chain})"
        return result
    if last >= 0 and steps[last].hop.endswith("/uplink") and last + 1 < len(steps) \
            and steps[last + 1].hop.endswith("/uplink"):
        result.cause = ("lost on the underlay between the nodes: the tunnel's packets left one "
                        "node and never reached the other (is the VXLAN port open between "
                        "them?)")
    else:
        result.cause = "vanished without a rule dropping it: see `tartanctl lab doctor`"
    return result


def render(result: Result) -> str:
    lines = [f"trace {result.flow}"]
    for step in result.steps:
        lines.append(f"  {step.hop:<14} {step.direction:<3}  "
                     f"{'seen' if step.seen else 'not seen'}")
    if result.delivered:
        lines.append(f"delivered ({result.outcome})")
    else:
        lines.append(f"not delivered ({result.outcome}): vanished after {result.where}")
        lines.append(f"  cause: {result.cause}")
        if result.rule:
            lines.append(f"  rule:  {result.rule}")
    return "\n".join(lines) + "\n"
