"""The nat table tartan-portmap wants for one container: pure, compared line by line in tests.

The reference portmap's layout and names, so that `iptables -t nat -S` reads as operators
know it and a node can move from the reference plugin to this one pod by pod (the shared
chains and their rules are byte for byte the reference's, so neither plugin duplicates or
fights over what the other wrote):

    -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
    -A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
    -I POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
    -A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark"
                            -j MARK --set-xmark 0x2000/0x2000
    -A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
    -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"N\\" id: \\"C\\""
                         -m multiport --dports 8080,8443 [conditionsV4] -j CNI-DN-<hash>

and the container's own chain, CNI-DN- and 21 hex digits of sha512(network + container id)
(the reference's name, so either plugin's DEL removes the other's chain), per mapping:

    -A CNI-DN-<hash> -s <pod subnet> [-d hostIP] -p tcp -m tcp --dport 8080 -m comment ...
                     -j CNI-HOSTPORT-SETMARK                  (hairpin: a pod to its own port)
    -A CNI-DN-<hash> -s 127.0.0.1/32 [-d hostIP] -p tcp ... -j CNI-HOSTPORT-SETMARK  (IPv4)
    -A CNI-DN-<hash> [-d hostIP] -p tcp -m tcp --dport 8080 -m comment ...
                     -j DNAT --to-destination 10.250.0.5:80

The mark rules exist only with snat; externalSetMarkChain replaces CNI-HOSTPORT-SETMARK (and
the plugin then makes neither SETMARK nor MASQ). Unlike the reference, the container chain's
rules carry the jump's comment too (Tartan's rule: every rule says why it is there), which
also lets GC find a chain whose jump is gone.

Rules are written in iptables-save's canonical form, as the applier compares them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import replace

from tartan.cni.plugins.portmap_config import PortMapConfig, PortMapping
from tartan.cni.types import Result
from tartan.kernel.iptables import Chain, LiveTable, Rule, Table, containers_in

ContainerAddress = ipaddress.IPv4Interface | ipaddress.IPv6Interface

DNAT_CHAIN = "CNI-HOSTPORT-DNAT"
SETMARK_CHAIN = "CNI-HOSTPORT-SETMARK"
MASQ_CHAIN = "CNI-HOSTPORT-MASQ"
CHAIN_PREFIX = "CNI-DN-"
_CHAIN_LEN = 28
MARK_COMMENT = "CNI portfwd masquerade mark"
MASQ_COMMENT = "CNI portfwd requiring masquerade"
MAX_COMMENT = 255  # xt_comment's limit
MULTIPORT_MAX = 15  # ports one multiport match takes
LOCALHOST = "127.0.0.1/32"
_COMMENT = re.compile(r'dnat name: "([^"]*)" id: "([^"]*)"')
# address and interface matches iptables-save prints first, in this order
_LEADING = {"-s": "-s", "--source": "-s", "-d": "-d", "--destination": "-d",
            "-i": "-i", "--in-interface": "-i", "-o": "-o", "--out-interface": "-o"}
_LEADING_ORDER = ("-s", "-d", "-i", "-o")


def chain_name(network: str, container_id: str) -> str:
    """The reference's per-container chain: CNI-DN- + sha512(network + id), 28 characters."""
    digest = hashlib.sha512(f"{network}{container_id}".encode()).hexdigest()
    return (CHAIN_PREFIX + digest)[:_CHAIN_LEN]


def comment(network: str, container_id: str) -> str:
    """The reference's comment on the container's jump, cut to xt_comment's limit."""
    text = f'dnat name: "{network}" id: "{container_id}"'
    return text if len(text) <= MAX_COMMENT else text[:MAX_COMMENT - 3] + "..."


def mark(bit: int) -> str:
    value = 1 << bit
    return f"{value:#x}/{value:#x}"


def container_addresses(prev: Result, ifname: str) -> dict[int, ContainerAddress]:
    """The first IPv4 and the first IPv6 address of the container's interface `ifname` (an
    address not tied to an interface counts; one on a host-side interface does not)."""
    found: dict[int, ContainerAddress] = {}
    for ip in prev.ips:
        address = ipaddress.ip_interface(ip.address)
        if address.version in found:
            continue
        index = ip.interface
        if index is not None and 0 <= index < len(prev.interfaces):
            iface = prev.interfaces[index]
            if iface.name != ifname or not iface.sandbox:
                continue
        found[address.version] = address
    return found


def table(conf: PortMapConfig, container_id: str, address: ContainerAddress) -> Table:
    """Everything ADD puts in the nat table of `address`'s family for this container."""
    chain = chain_name(conf.name, container_id)
    note = ("-m", "comment", "--comment", comment(conf.name, container_id))
    mappings = [m for m in conf.mappings if m.applies_to(address.version)]
    shared, rules = [DNAT_CHAIN], []
    if conf.snat and conf.external_set_mark_chain is None:
        shared += [SETMARK_CHAIN, MASQ_CHAIN]
        rules += masquerade_rules(conf.mark_masq_bit)
    rules += [Rule(hook, ("-m", "addrtype", "--dst-type", "LOCAL", "-j", DNAT_CHAIN))
              for hook in ("PREROUTING", "OUTPUT")]
    rules += jump_rules(conf, chain, note, address.version, mappings)
    own = Chain(chain, tuple(rule for m in mappings
                             for rule in mapping_rules(conf, m, address, note)))
    return Table("nat", chains=(own,), rules=tuple(rules), shared_chains=tuple(shared))


def masquerade_rules(bit: int) -> list[Rule]:
    """The shared mark and masquerade rules for `bit` (a second bit adds a second pair, as
    with the reference)."""
    return [
        Rule(SETMARK_CHAIN, ("-m", "comment", "--comment", MARK_COMMENT, "-j", "MARK",
                             "--set-xmark", mark(bit))),
        Rule(MASQ_CHAIN, ("-m", "mark", "--mark", mark(bit), "-j", "MASQUERADE")),
        Rule("POSTROUTING", ("-m", "comment", "--comment", MASQ_COMMENT, "-j", MASQ_CHAIN),
             insert=True),
    ]


def jump_rules(conf: PortMapConfig, chain: str, note: tuple[str, ...], version: int,
               mappings: list[PortMapping]) -> list[Rule]:
    """CNI-HOSTPORT-DNAT -> the container's chain: one rule per protocol and 15 ports."""
    lead, rest = canonical_conditions(conf.conditions_for(version))
    out = []
    for protocol in sorted({m.protocol for m in mappings}):
        ports = list(dict.fromkeys(m.host_port for m in mappings if m.protocol == protocol))
        for start in range(0, len(ports), MULTIPORT_MAX):
            listed = ",".join(map(str, ports[start:start + MULTIPORT_MAX]))
            out.append(Rule(DNAT_CHAIN, (*lead, "-p", protocol, *note, "-m", "multiport",
                                         "--dports", listed, *rest, "-j", chain)))
    return out


def mapping_rules(conf: PortMapConfig, mapping: PortMapping, address: ContainerAddress,
                  note: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The container chain's rules for one mapping: the mark rules first, then the DNAT."""
    dst = mapping.destination
    to_host = ("-d", f"{dst}/{dst.max_prefixlen}") if dst is not None else ()
    match = (*to_host, "-p", mapping.protocol, "-m", mapping.protocol,
             "--dport", str(mapping.host_port), *note)
    out: list[tuple[str, ...]] = []
    if conf.snat:
        set_mark = conf.external_set_mark_chain or SETMARK_CHAIN
        out.append(("-s", str(address.network), *match, "-j", set_mark))
        if address.version == 4:
            out.append(("-s", LOCALHOST, *match, "-j", set_mark))
    out.append((*match, "-j", "DNAT", "--to-destination",
                destination(address, mapping.container_port)))
    return out


def destination(address: ContainerAddress, port: int) -> str:
    return f"{address.ip}:{port}" if address.version == 4 else f"[{address.ip}]:{port}"


def canonical_conditions(args: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split conditions into the address and interface matches iptables-save prints before
    `-p` (addresses with their prefix length, in its order) and the rest, as given: so the
    rule reads back as written and a second ADD changes nothing. Other matches must be given
    in iptables-save's own form."""
    lead: dict[str, tuple[str, ...]] = {}
    rest: list[str] = []
    index = 0
    while index < len(args):
        negated = args[index] == "!" and index + 1 < len(args) and args[index + 1] in _LEADING
        flag = args[index + negated]
        if flag in _LEADING and index + negated + 1 < len(args):
            value = args[index + negated + 1]
            short = _LEADING[flag]
            lead[short] = (*(("!",) if negated else ()), short, _with_prefix(short, value))
            index += negated + 2
        else:
            rest.append(args[index])
            index += 1
    return tuple(a for key in _LEADING_ORDER for a in lead.get(key, ())), tuple(rest)


def _with_prefix(flag: str, value: str) -> str:
    if flag not in ("-s", "-d"):
        return value
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        return value  # a name iptables resolves; compared as written


def owner(args: tuple[str, ...]) -> tuple[str, str] | None:
    """(network, container id) from a rule's `dnat name: "N" id: "C"` comment."""
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "--comment" and (found := _COMMENT.fullmatch(value)):
            return found[1], found[2]
    return None


def containers(live: LiveTable, network: str) -> set[str]:
    """Containers of `network` with a portmap chain or jump in `live`."""
    return containers_in(live, network, owner, chain_name)


def without_stale_jumps(state: Table, live: LiveTable) -> Table:
    """`state`, also deleting jumps to the container's chain that it no longer wants (other
    ports, other conditions): the container keeps exactly its own jumps."""
    chain = state.chains[0].name
    stale = tuple(rule for rule in live.jumps_to(chain) if rule not in state.rules)
    return replace(state, delete_rules=stale)


def teardown_table(network: str, container_ids: list[str]) -> Table:
    """Remove the containers' chains and every jump to them."""
    return Table("nat", delete_chains=tuple(chain_name(network, c) for c in container_ids))
