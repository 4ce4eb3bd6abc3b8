"""Connection tracking entries, through netlink (pyroute2's Conntrack): no `conntrack` binary.

A UDP "connection" to a host port lives in conntrack for as long as datagrams keep coming
(30 s after the last, 120 s once answered). An entry made before a hostPort's DNAT rule
existed keeps sending that flow where it went before (the host itself, or a pod that is
gone), so a new mapping would never see it: portmap deletes such entries once its rules are
in place.
"""

from __future__ import annotations

import errno
import socket

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from tartan.kernel.errors import KernelFailure

_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
_PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


def delete_to_port(version: int, protocol: str, port: int) -> int:
    """Delete every `protocol` entry of IPv`version` whose original destination port is
    `port` (in the calling thread's network namespace). Returns how many went; an entry
    that expires meanwhile is not an error."""
    family = _FAMILIES[version]
    wanted = NFCTAttrTuple(family=family, proto=_PROTOCOLS[protocol], dport=port)
    deleted = 0
    try:
        with Conntrack() as ct:
            entries = [e for e in ct.dump_entries(tuple_orig=wanted)
                       if e.tuple_orig.dport == port and e.tuple_orig.family == family]
            for entry in entries:
                deleted += _delete(ct, entry)
    except (NetlinkError, OSError) as exc:  # OSError: no nf_conntrack_netlink, a closed socket
        raise KernelFailure(f"cannot delete IPv{version} {protocol} conntrack entries to "
                            f"port {port}: {exc}") from None
    return deleted


def _delete(ct: Conntrack, entry: object) -> int:
    try:
        ct.delete(entry)
    except NetlinkError as exc:
        if exc.code == errno.ENOENT:
            return 0  # expired or deleted by someone else since the dump
        raise
    return 1
