"""The route-programming network that host-gw and DirectRouting share.

Every route Tartan installs carries its own routing protocol number, so a reconcile pass can
tell its routes from everyone else's and remove the ones no lease asks for any more
(entries.py).
"""

from __future__ import annotations

import functools
from ipaddress import IPv4Network

from tartan.kernel.route import RouteSpec

PROTO_TARTAN = 152  # shown by `ip route` as "proto 152"


def host_gw_route(subnet: str, gateway: str, oif: int) -> RouteSpec:
    return RouteSpec(dst=subnet, gw=gateway, oif=oif, proto=PROTO_TARTAN)


@functools.lru_cache(maxsize=1 << 16)
def spelled(subnet: IPv4Network) -> tuple[str, str]:
    """A peer's subnet and its first address as text: asked of every peer at every full
    pass, where ipaddress's str() of 5,000 of each would be a third of the pass."""
    return str(subnet), str(subnet.network_address)
