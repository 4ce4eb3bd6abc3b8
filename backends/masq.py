"""The agent's iptables: masquerade pod traffic leaving the cluster network (never pod to
pod), and accept forwarding for the cluster network so a host whose FORWARD policy is DROP
still carries pod traffic. Both are chains Tartan owns, applied as data."""

from __future__ import annotations

import ipaddress

from tartan.kernel.iptables import Chain, Iptables, Rule, Table

POSTROUTING_CHAIN = "TARTAN-POSTRTG"
FORWARD_CHAIN = "TARTAN-FWD"
NOTE = ("-m", "comment", "--comment", "tartan")


def nat_table(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network) -> Table:
    net, own = str(network), str(subnet)
    rules = (
        ("-s", own, "-d", net, *NOTE, "-j", "RETURN"),
        ("-s", net, "-d", own, *NOTE, "-j", "RETURN"),
        ("!", "-s", net, "-d", own, *NOTE, "-j", "RETURN"),
        ("-s", net, "!", "-d", "224.0.0.0/4", *NOTE, "-j", "MASQUERADE", "--random-fully"),
        ("!", "-s", net, "-d", net, *NOTE, "-j", "MASQUERADE", "--random-fully"),
    )
    jump = Rule("POSTROUTING", (*NOTE, "-j", POSTROUTING_CHAIN), insert=True)
    return Table("nat", chains=(Chain(POSTROUTING_CHAIN, rules),), rules=(jump,))


def filter_table(network: ipaddress.IPv4Network) -> Table:
    net = str(network)
    rules = (("-s", net, *NOTE, "-j", "ACCEPT"), ("-d", net, *NOTE, "-j", "ACCEPT"))
    jump = Rule("FORWARD", (*NOTE, "-j", FORWARD_CHAIN), insert=True)
    return Table("filter", chains=(Chain(FORWARD_CHAIN, rules),), rules=(jump,))


def apply(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, ip_masq: bool,
          iptables: Iptables | None = None) -> int:
    """Bring the agent's chains in line; return how many tables had to change."""
    ipt = iptables or Iptables(4)
    changed = int(ipt.apply(filter_table(network)))
    if ip_masq:
        changed += int(ipt.apply(nat_table(network, subnet)))
    else:
        changed += int(ipt.apply(Table("nat", delete_chains=(POSTROUTING_CHAIN,))))
    return changed
