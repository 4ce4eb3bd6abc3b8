"""Compiled NetworkPolicy rules and sets on the real kernel, in throwaway namespaces.

What the compiler writes must be what iptables-save prints back (the applier compares token
by token), on both backends, so that a resync of an unchanged cluster changes nothing.
"""

from __future__ import annotations

import os

import pytest

from tartan.kernel.ipset import Ipsets, apply_with_rules, run_ipset
from tartan.kernel.iptables import Iptables
from tartan.kernel.iptables_backend import run_command
from tartan.netpol.compiler import SET_PREFIX, Options
from tartan.netpol.model import IPBlock, Peer, PolicyPort, Protocol, Rule

from harness import Netns
from netpol_kit import BOTH, EGRESS, compiled, policy, sel

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")]


def in_netns(ns: Netns, run):
    return lambda argv, stdin: run(["ip", "netns", "exec", ns.name, *argv], stdin)


def every_kind_of_rule():
    import ipaddress

    block = IPBlock(ipaddress.ip_network("10.0.0.0/8"), (ipaddress.ip_network("10.244.2.0/24"),))
    anywhere = IPBlock(ipaddress.ip_network("0.0.0.0/0"), (ipaddress.ip_network("10.9.0.0/16"),))
    return (
        policy("deny"),
        policy("web", selector=sel(pod="a"), types=BOTH, ingress=(
            Rule((Peer(pod_selector=sel(pod="b")), Peer(namespace_selector=sel(ns="y"))),
                 (PolicyPort(Protocol.TCP, 80), PolicyPort(Protocol.UDP, 53, 80),
                  PolicyPort(Protocol.TCP, "serve-81-tcp"), PolicyPort(Protocol.SCTP, 80))),
            Rule((Peer(ip_block=block),)),
        ), egress=(
            Rule((Peer(namespace_selector=sel(ns="z")),),
                 (PolicyPort(Protocol.TCP, "serve-80-tcp"), PolicyPort(Protocol.UDP))),
            Rule((Peer(ip_block=anywhere),), (PolicyPort(Protocol.TCP, 443),)),
        )),
        policy("out", ns="y", types=EGRESS),
    )


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_compiled_rules_are_canonical_and_a_resync_changes_nothing(netns_factory, backend):
    ns = netns_factory("tnp")
    out = compiled(*every_kind_of_rule(), options=Options(log=True))["node1"]
    ipt = Iptables(4, backend=backend, runner=in_netns(ns, run_command), verify=True)
    sets = Ipsets(prefix=SET_PREFIX, runner=in_netns(ns, run_ipset))
    changes = apply_with_rules(sets, out.sets,
                               lambda: int(ipt.apply_with("filter", out.table)))
    assert changes > 0
    live = ipt.read("filter")
    assert [r.args[-1] for r in live.rules() if r.chain == "FORWARD"] == ["TARTAN-NP-FWD"]
    assert sorted(sets.read()) == sorted(out.set_names())
    # verify=True already failed if a second pass would change a rule; a resync is a no-op
    again = compiled(*every_kind_of_rule(), options=Options(log=True))["node1"]
    assert apply_with_rules(sets, again.sets,
                            lambda: int(ipt.apply_with("filter", again.table))) == 0


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_policies_removed_leave_only_the_empty_hooks_and_no_sets(netns_factory, backend):
    ns = netns_factory("tnp")
    ipt = Iptables(4, backend=backend, runner=in_netns(ns, run_command), verify=True)
    sets = Ipsets(prefix=SET_PREFIX, runner=in_netns(ns, run_ipset))
    for state in (compiled(*every_kind_of_rule()), compiled()):
        out = state["node1"]
        apply_with_rules(sets, out.sets, lambda out=out: int(ipt.apply_with("filter", out.table)))
    live = ipt.read("filter")
    assert sorted(c for c in live.chains if c.startswith("TARTAN-")) == [
        "TARTAN-NP-FWD", "TARTAN-NP-IN", "TARTAN-NP-OUT"]
    assert sorted(sets.read()) == sorted(compiled()["node1"].set_names())
