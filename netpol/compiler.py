"""The policy compiler: (cluster, this node) -> ipsets + the filter table's Tartan chains.

Pure: nothing here touches the kernel; the enforcer applies the result with the kernel
layer's appliers (sets first, then one iptables-restore, then stale sets pruned).

Layout, for the pods of this node that a policy isolates:

    FORWARD -> TARTAN-NP-FWD   routed and bridged pod traffic (br_netfilter)
    INPUT   -> TARTAN-NP-IN    a pod's traffic to this node: its egress
    OUTPUT  -> TARTAN-NP-OUT   the node's traffic to a pod (also after a Service DNAT here)

    TARTAN-NP-FWD: replies of allowed connections RETURN, and packets whose source is not
                   egress-isolated and destination not ingress-isolated here (two sets); then
                   `-s <pod> -j <its egress chain>` for every egress-isolated pod, `-d <pod>
                   -j <its ingress chain>` for every ingress-isolated pod
    TARTAN-NPE-<h> / TARTAN-NPI-<h>: one RETURN per (policy rule, peer, port) that allows
                   the packet, then the pod's final drop (NFLOG first when logging)

Tartan's chains never ACCEPT: an allowed packet RETURNs and goes on through FORWARD as if
Tartan were not there (other components' rules still see it), and a same-node packet that
its source's egress chain allowed still meets its destination's ingress chain. A denied
packet is dropped in the pod's own chain, by the rule whose comment and NFLOG prefix name the
policies that isolate the pod. Peers are matched through ipsets (one per peer group, per
ipBlock and its exceptions, per named port), so a chain's length depends on the policies
that select its pod, not on how many pods or policies there are.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from tartan.kernel.ipset import IpSet
from tartan.kernel.iptables import Chain, LiveTable, Rule, Table
from tartan.netpol.defaults import NFLOG_GROUP
from tartan.netpol.model import (
    Cluster,
    Direction,
    IPBlock,
    IPNetwork,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
    Protocol,
)

CHAIN_PREFIX = "TARTAN-NP"
SET_PREFIX = "TARTAN-NP-"  # every set the enforcer owns (and may prune) starts with this
HOOKS = {"FORWARD": "TARTAN-NP-FWD", "INPUT": "TARTAN-NP-IN", "OUTPUT": "TARTAN-NP-OUT"}
MAX_PREFIX = 63  # NFLOG's prefix is at most 64 bytes with its NUL
HOOK_COMMENT = "tartan: NetworkPolicy"


@dataclass(frozen=True)
class Options:
    family: int = 4
    log: bool = False  # NFLOG every denied packet (group NFLOG_GROUP) before dropping it
    nflog_group: int = NFLOG_GROUP


@dataclass
class Compiled:
    """What the enforcer applies: the sets, and the filter table's Tartan part."""

    sets: list[IpSet] = field(default_factory=list)
    chains: list[Chain] = field(default_factory=list)
    hooks: list[Rule] = field(default_factory=list)
    isolated: dict[str, tuple[str, ...]] = field(default_factory=dict)  # chain -> policies

    def table(self, live: LiveTable | None = None) -> Table:
        """The filter table to apply; Tartan chains in `live` that are no longer wanted are
        deleted in the same restore."""
        wanted = {chain.name for chain in self.chains}
        stale = sorted(name for name in (live.chains if live else {})
                       if name.startswith(CHAIN_PREFIX) and name not in wanted)
        return Table("filter", chains=tuple(self.chains), rules=tuple(self.hooks),
                     delete_chains=tuple(stale))

    def set_names(self) -> set[str]:
        return {s.name for s in self.sets}


@dataclass
class Reuse:
    """What a compile may take from the one before: the sets whose members it found in the
    cluster's pods and namespaces, good while those are the very same tuples (the source
    keeps them when only policies changed)."""

    pods: tuple[Pod, ...] | None = None
    namespaces: tuple[Namespace, ...] | None = None
    sets: dict[str, IpSet] = field(default_factory=dict)


def compile_node(cluster: Cluster, node: str, node_addresses: Iterable[str],
                 options: Options = Options(), reuse: Reuse | None = None) -> Compiled:
    """Everything node `node` enforces for its own pods. `reuse` (kept by the caller from
    compile to compile) saves finding the members of sets again."""
    return _Compiler(cluster, node, node_addresses, options, reuse).run()


def digest(text: str, length: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def pod_chain(pod: Pod, direction: Direction) -> str:
    kind = "NPI" if direction is Direction.INGRESS else "NPE"
    return f"TARTAN-{kind}-{digest(pod.key)}"


def comment(text: str) -> tuple[str, ...]:
    return ("-m", "comment", "--comment", text[:255])


class _Compiler:
    def __init__(self, cluster: Cluster, node: str, node_addresses: Iterable[str],
                 options: Options, reuse: Reuse | None = None) -> None:
        self.cluster, self.node, self.options = cluster, node, options
        self.reuse = reuse
        same = (reuse is not None and reuse.pods is cluster.pods
                and reuse.namespaces is cluster.namespaces)
        self.reusable: dict[str, IpSet] = reuse.sets if same and reuse is not None else {}
        self.found: dict[str, IpSet] = {}  # sets whose members came from the cluster
        self.family = options.family
        self.node_addresses = sorted(
            a for a in node_addresses if ipaddress.ip_address(a).version == self.family)
        self.sets: dict[str, IpSet] = {}
        self.out = Compiled()

    # -- the whole node ----------------------------------------------------------------

    def run(self) -> Compiled:
        node_set = self._set("N", "node", "hash:ip", self.node_addresses,
                             f"addresses of node {self.node}")
        # the path's order: the source pod's egress first, then the destination's ingress
        egress, senders = self._jumps(Direction.EGRESS, "-s", node_set)
        ingress, receivers = self._jumps(Direction.INGRESS, "-d", node_set)
        # a packet between pods no policy isolates leaves at once, not after every jump
        out_set = self._set("O", "isolated egress", "hash:ip", senders,
                            f"pods of node {self.node} isolated for egress")
        in_set = self._set("I", "isolated ingress", "hash:ip", receivers,
                           f"pods of node {self.node} isolated for ingress")
        neither = comment("neither end isolated here")
        not_out = ("-m", "set", "!", "--match-set", out_set, "src")
        not_in = ("-m", "set", "!", "--match-set", in_set, "dst")
        hook_rules = {
            "FORWARD": [*_replies(), (*not_out, *not_in, *neither, "-j", "RETURN"),
                        *egress, *ingress],
            "INPUT": [*_replies(), (*not_out, *neither, "-j", "RETURN"), *egress],
            "OUTPUT": [*_replies(), (*not_in, *neither, "-j", "RETURN"), *ingress]}
        for hook, chain in HOOKS.items():
            self.out.chains.append(Chain(chain, tuple(hook_rules[hook])))
            self.out.hooks.append(Rule(hook, (*comment(HOOK_COMMENT), "-j", chain),
                                       insert=True))
        self.out.sets = [self.sets[name] for name in sorted(self.sets)]
        if self.reuse is not None:
            self.reuse.pods, self.reuse.namespaces = self.cluster.pods, self.cluster.namespaces
            self.reuse.sets = self.found
        return self.out

    def _jumps(self, direction: Direction, flag: str, node_set: str
               ) -> tuple[list[tuple[str, ...]], list[str]]:
        """The pod chains of one direction; a jump to each from its pod's addresses, and
        those addresses."""
        jumps: list[tuple[str, ...]] = []
        addresses: list[str] = []
        for pod in self._local_pods():
            policies = self._isolating(pod, direction)
            if not policies:
                continue
            chain = pod_chain(pod, direction)
            self.out.chains.append(Chain(chain, tuple(self._pod_rules(
                pod, direction, policies, node_set))))
            self.out.isolated[chain] = tuple(p.key for p in policies)
            jumps += [(flag, f"{ip}/{ip.max_prefixlen}", "-j", chain) for ip in self._ips(pod)]
            addresses += [str(ip) for ip in self._ips(pod)]
        return jumps, addresses

    def _local_pods(self) -> list[Pod]:
        return sorted((p for p in self.cluster.pods_on(self.node)
                       if not p.host_network and self._ips(p)), key=lambda p: p.key)

    def _isolating(self, pod: Pod, direction: Direction) -> list[NetworkPolicy]:
        return sorted((p for p in self.cluster.policies_in(pod.namespace)
                       if p.isolates(direction) and p.selects(pod)), key=lambda p: p.key)

    def _ips(self, pod: Pod) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ip for ip in pod.ips if ip.version == self.family]

    # -- one pod's chain ---------------------------------------------------------------

    def _pod_rules(self, pod: Pod, direction: Direction, policies: list[NetworkPolicy],
                   node_set: str) -> list[tuple[str, ...]]:
        rules: list[tuple[str, ...]] = []
        if direction is Direction.INGRESS:  # a node always reaches its own pods
            rules.append(("-m", "set", "--match-set", node_set, "src",
                          *comment(f"{pod.key}: from its node"), "-j", "RETURN"))
        for policy in policies:
            for index, rule in enumerate(policy.rules(direction)):
                note = comment(f"{policy.key} {direction.lower()} rule {index}")
                for match in self._rule_matches(pod, direction, policy, rule.peers,
                                                rule.ports):
                    rules.append((*match, *note, "-j", "RETURN"))
        rules += self._final_drop(pod, direction, policies)
        return rules

    def _final_drop(self, pod: Pod, direction: Direction,
                    policies: list[NetworkPolicy]) -> list[tuple[str, ...]]:
        keys = [p.key for p in policies]
        note = comment(f"{pod.key} {direction.lower()} denied, isolated by {', '.join(keys)}")
        rules: list[tuple[str, ...]] = []
        if self.options.log:
            more = f" +{len(keys) - 1}" if len(keys) > 1 else ""
            prefix = f"tartan-np {direction.lower()} {keys[0]}{more}"[:MAX_PREFIX]
            rules.append((*note, "-j", "NFLOG", "--nflog-prefix", prefix,
                          "--nflog-group", str(self.options.nflog_group)))
        rules.append((*note, "-j", "DROP"))
        return rules

    def _rule_matches(self, pod: Pod, direction: Direction, policy: NetworkPolicy,
                      peers: Sequence[Peer], ports: Sequence[PolicyPort]
                      ) -> list[tuple[str, ...]]:
        """The match arguments of every (peer, port) combination that can allow a packet."""
        side = "src" if direction is Direction.INGRESS else "dst"
        peer_matches: list[tuple[Peer | None, tuple[str, ...]]] = (
            [(None, ())] if not peers else
            [(peer, self._peer_match(peer, policy, side)) for peer in peers])
        out: list[tuple[str, ...]] = []
        for peer, peer_match in peer_matches:
            for port in ports or (None,):
                port_match = self._port_match(pod, direction, policy, peer, port)
                if port_match is not None:
                    out.append(_ordered(peer_match, port_match))
        return out

    # -- peers -------------------------------------------------------------------------

    def _peer_match(self, peer: Peer, policy: NetworkPolicy, side: str) -> tuple[str, ...]:
        if peer.ip_block is not None:
            return self._ip_block_match(peer.ip_block, side)
        name = self._pod_set(peer, policy)
        return ("-m", "set", "--match-set", name, side)

    def _pod_set(self, peer: Peer, policy: NetworkPolicy) -> str:
        return self._set("P", _peer_key(peer, policy), "hash:ip",
                         lambda: sorted({str(ip) for p in self.cluster.peer_pods(
                             peer, policy.namespace) for ip in self._ips(p)}),
                         f"pods of {_describe(peer, policy)}")

    def _ip_block_match(self, block: IPBlock, side: str) -> tuple[str, ...]:
        if block.cidr.version != self.family:
            return ("-m", "set", "--match-set", self._empty_set(), side)
        match: tuple[str, ...] = ()
        if block.cidr.prefixlen:  # ipset holds no /0: matching everything needs no set
            cidr = self._set("B", f"cidr {block.cidr}", "hash:net", [str(block.cidr)],
                             f"ipBlock {block.cidr}")
            match = ("-m", "set", "--match-set", cidr, side)
        if block.except_:
            excepts = _sorted_nets(block.except_)
            name = self._set("X", f"except {block.cidr} {excepts}", "hash:net", excepts,
                             f"ipBlock {block.cidr} except")
            match += ("-m", "set", "!", "--match-set", name, side)
        return match

    def _empty_set(self) -> str:
        return self._set("E", "empty", "hash:ip", [], "matches nothing")

    # -- ports -------------------------------------------------------------------------

    def _port_match(self, pod: Pod, direction: Direction, policy: NetworkPolicy,
                    peer: Peer | None, port: PolicyPort | None) -> tuple[str, ...] | None:
        """Match arguments for one port (None: every port), or None when it can match no
        packet (a named port the destination does not have)."""
        if port is None:
            return ()
        proto = port.protocol.lower()
        if port.port is None:
            return ("-p", proto)
        if isinstance(port.port, int):
            number = f"{port.port}:{port.end_port}" if port.end_port else str(port.port)
            return ("-p", proto, "-m", proto, "--dport", number)
        if direction is Direction.INGRESS:  # named: resolved on the pod the policy selects
            resolved = pod.named_port(port.port, port.protocol)
            return None if resolved is None else ("-p", proto, "-m", proto, "--dport",
                                                  str(resolved))
        if peer is not None and peer.ip_block is not None:
            return None  # a named port is a pod's: an ipBlock destination has none
        name = self._named_port_set(peer, policy, port.port, port.protocol)
        return ("-p", proto, "-m", "set", "--match-set", name, "dst,dst")

    def _named_port_set(self, peer: Peer | None, policy: NetworkPolicy, port_name: str,
                        protocol: Protocol) -> str:
        """(address, port) of every destination pod that names a port `port_name`."""
        def members() -> list[str]:
            pods = (self.cluster.peer_pods(peer, policy.namespace) if peer is not None
                    else [p for p in self.cluster.pods if not p.host_network])
            return sorted({f"{ip},{protocol.lower()}:{number}" for p in pods
                           if (number := p.named_port(port_name, protocol)) is not None
                           for ip in self._ips(p)})

        scope = _peer_key(peer, policy) if peer is not None else "every pod"
        return self._set("Q", f"{scope} port {protocol}/{port_name}", "hash:ip,port", members,
                         f"port {port_name}/{protocol} of "
                         f"{_describe(peer, policy) if peer else 'every pod'}")

    # -- sets --------------------------------------------------------------------------

    def _set(self, kind: str, key: str, set_type: str,
             members: Iterable[str] | Callable[[], Iterable[str]], what: str) -> str:
        """A set named after what it stands for (so a change of members is a refill, not a
        new set); sets that stand for the same thing are one set, whose members are found
        once (`members` may be a function, called only for a new set)."""
        name = f"{SET_PREFIX}{kind}{digest(f'{self.family} {key}', 16)}"
        if name in self.sets:
            return name
        known = self.reusable.get(name)
        if callable(members) and known is not None and known.comment == _safe(what):
            self.sets[name] = known
        else:
            found = members() if callable(members) else members
            self.sets[name] = IpSet(name, set_type, frozenset(found),
                                    comment=_safe(what), family=self.family)
        if callable(members):
            self.found[name] = self.sets[name]
        return name


def _replies() -> list[tuple[str, ...]]:
    return [("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
             *comment("replies of allowed connections"), "-j", "RETURN")]


def _ordered(peer: tuple[str, ...], port: tuple[str, ...]) -> tuple[str, ...]:
    """iptables-save's order: the protocol (-p) before every -m match."""
    if port[:1] == ("-p",):
        return (*port[:2], *peer, *port[2:])
    return (*peer, *port)


def _sorted_nets(nets: Iterable[IPNetwork]) -> list[str]:
    return [str(n) for n in sorted(nets, key=lambda n: (int(n.network_address), n.prefixlen))]


def _selector_key(selector: LabelSelector | None) -> str:
    """A selector as stable text (the same in every process: names of sets derive from it)."""
    if selector is None:
        return "-"
    labels = ",".join(f"{k}={v}" for k, v in selector.match_labels)
    exprs = ",".join(f"{r.key} {r.operator} [{' '.join(sorted(r.values))}]"
                     for r in sorted(selector.match_expressions,
                                     key=lambda r: (r.key, r.operator, sorted(r.values))))
    return f"{{{labels}|{exprs}}}"


def _peer_key(peer: Peer, policy: NetworkPolicy) -> str:
    """What a pod peer selects, canonically: equal peers of any policy share one set."""
    scope = (f"namespaces {_selector_key(peer.namespace_selector)}"
             if peer.namespace_selector is not None else f"namespace {policy.namespace}")
    return f"{scope} pods {_selector_key(peer.pod_selector)}"


def _describe(peer: Peer, policy: NetworkPolicy) -> str:
    where = ("namespaces " + _labels_text(peer.namespace_selector)
             if peer.namespace_selector is not None else f"namespace {policy.namespace}")
    which = _labels_text(peer.pod_selector) if peer.pod_selector is not None else "all"
    return f"{where}, pods {which} (for {policy.key})"


def _labels_text(selector: LabelSelector | None) -> str:
    if selector is None or selector.selects_all:
        return "all"
    parts = [f"{k}={v}" for k, v in selector.match_labels]
    parts += [f"{r.key} {r.operator} {','.join(sorted(r.values))}".strip()
              for r in selector.match_expressions]
    return " ".join(parts)


def _safe(text: str) -> str:
    """An ipset comment: printable, no double quote, at most 255 bytes."""
    clean = "".join(c if c.isprintable() and c != '"' else "'" for c in text)
    return clean.encode()[:255].decode(errors="ignore")
