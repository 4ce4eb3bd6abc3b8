"""The compiled rules and the policy model agree, cell by cell.

`explain.verdict` is the API's semantics written as plainly as possible; the compiler's
iptables rules and ipsets, run through tests/netpol_sim.py on both nodes, must give the same
answer for every pair of pods, port and protocol: for hand-written cases, and for policy sets
drawn at random (seeded, so a failure is reproducible).
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from tartan.netpol import explain
from tartan.netpol.model import (
    Cluster,
    Direction,
    IPBlock,
    LabelSelector,
    NetworkPolicy,
    Operator,
    Peer,
    PolicyPort,
    Protocol,
    Requirement,
    Rule,
)

from netpol_kit import BOTH, EGRESS, NAMESPACES, PODS, allowed, compiled, policy, sel

PORTS = (80, 81)
PROTOCOLS = (Protocol.TCP, Protocol.UDP, Protocol.SCTP)


def disagreements(policies: tuple[NetworkPolicy, ...]) -> list[str]:
    nodes = compiled(*policies)
    cluster = Cluster(NAMESPACES, PODS, policies)
    out = []
    for src in PODS:
        for dst in PODS:
            for port in PORTS:
                for protocol in PROTOCOLS:
                    model = explain.verdict(cluster, src, dst, port, protocol).allowed
                    rules = allowed(nodes, src.key, dst.key, port, protocol.lower())
                    if model != rules:
                        out.append(f"{src.key} -> {dst.key} {port}/{protocol}: model "
                                   f"{'allows' if model else 'denies'}, rules "
                                   f"{'allow' if rules else 'deny'}")
    return out


BLOCK = IPBlock(ipaddress.ip_network("10.244.0.0/16"), (ipaddress.ip_network("10.244.2.0/25"),))
ANYWHERE = IPBlock(ipaddress.ip_network("0.0.0.0/0"), (ipaddress.ip_network("10.244.3.4/32"),))

CASES = {
    "nothing": (),
    "deny ingress": (policy("deny"),),
    "deny egress": (policy("deny", types=EGRESS),),
    "deny both": (policy("deny", types=BOTH),),
    "allow all after deny": (policy("deny"), policy("all", ingress=(Rule(),))),
    "same namespace": (policy("same", ingress=(Rule((Peer(pod_selector=LabelSelector()),)),)),),
    "namespace and pod in one peer": (policy("and", ingress=(Rule((
        Peer(pod_selector=sel(pod="b"), namespace_selector=sel(ns="y")),)),)),),
    "namespace or pod": (policy("or", ingress=(Rule((
        Peer(pod_selector=sel(pod="b")), Peer(namespace_selector=sel(ns="y")))),)),),
    "named ports both ways": (
        policy("in", ingress=(Rule(ports=(PolicyPort(Protocol.TCP, "serve-81-tcp"),
                                          PolicyPort(Protocol.UDP, "serve-80-udp"))),)),
        policy("out", ns="y", types=EGRESS, egress=(Rule(
            (Peer(namespace_selector=LabelSelector()),),
            (PolicyPort(Protocol.TCP, "serve-80-tcp"),)),))),
    "ipBlock with except, both ways": (
        policy("in", ingress=(Rule((Peer(ip_block=BLOCK),)),)),
        policy("out", ns="z", types=EGRESS, egress=(Rule((Peer(ip_block=ANYWHERE),)),))),
    "ranges and protocols": (policy("r", selector=sel(pod="a"), types=BOTH, ingress=(
        Rule(ports=(PolicyPort(Protocol.TCP, 79, 80), PolicyPort(Protocol.SCTP))),), egress=(
        Rule(ports=(PolicyPort(Protocol.UDP, 81, 90),)),)),),
}


@pytest.mark.parametrize("name", CASES)
def test_hand_written_cases_agree(name):
    assert disagreements(CASES[name]) == []


# -- random policy sets ---------------------------------------------------------------


def random_selector(rng: random.Random, key: str, values: list[str]) -> LabelSelector:
    kind = rng.choice(["all", "label", "in", "notin", "exists", "absent"])
    if kind == "all":
        return LabelSelector()
    if kind == "label":
        return sel(**{key: rng.choice(values)})
    operator = {"in": Operator.IN, "notin": Operator.NOT_IN, "exists": Operator.EXISTS,
                "absent": Operator.DOES_NOT_EXIST}[kind]
    chosen = frozenset(rng.sample(values, rng.randint(1, 2))) if kind in ("in", "notin") \
        else frozenset()
    return LabelSelector((), (Requirement(rng.choice([key, "other"]), operator, chosen),))


def random_peer(rng: random.Random) -> Peer:
    kind = rng.choice(["pod", "ns", "both", "block"])
    if kind == "block":
        return Peer(ip_block=rng.choice([BLOCK, ANYWHERE]))
    pods = random_selector(rng, "pod", ["a", "b", "c"]) if kind in ("pod", "both") else None
    nss = random_selector(rng, "ns", ["x", "y", "z"]) if kind in ("ns", "both") else None
    return Peer(pod_selector=pods, namespace_selector=nss)


def random_port(rng: random.Random) -> PolicyPort:
    protocol = rng.choice(PROTOCOLS)
    kind = rng.choice(["number", "range", "name", "any"])
    if kind == "number":
        return PolicyPort(protocol, rng.choice(PORTS))
    if kind == "range":
        return PolicyPort(protocol, 79, rng.choice([80, 81]))
    if kind == "name":
        return PolicyPort(protocol, rng.choice(["serve-80-tcp", "serve-81-tcp", "serve-80-udp"]))
    return PolicyPort(protocol)


def random_rule(rng: random.Random) -> Rule:
    peers = tuple(random_peer(rng) for _ in range(rng.randint(0, 2)))
    ports = tuple(random_port(rng) for _ in range(rng.randint(0, 2)))
    return Rule(peers, ports)


def random_policy(rng: random.Random, index: int) -> NetworkPolicy:
    types = rng.choice([frozenset({Direction.INGRESS}), EGRESS, BOTH])
    ingress = tuple(random_rule(rng) for _ in range(rng.randint(0, 2)))
    egress = tuple(random_rule(rng) for _ in range(rng.randint(0, 2)))
    return NetworkPolicy(rng.choice(["x", "y", "z"]), f"p{index}",
                         random_selector(rng, "pod", ["a", "b", "c"]), ingress, egress, types)


@pytest.mark.parametrize("seed", range(60))
def test_random_policy_sets_agree(seed):
    rng = random.Random(seed)
    policies = tuple(random_policy(rng, i) for i in range(rng.randint(1, 4)))
    assert disagreements(policies) == [], policies
