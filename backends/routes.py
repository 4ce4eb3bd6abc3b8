"""The route-programming network that host-gw and DirectRouting share.

Every route Tartan installs carries its own routing protocol number, so a reconcile pass can
tell its routes from everyone else's and remove the ones no lease asks for any more
(entries.py).
"""

from __future__ import annotations

from tartan.kernel.route import RouteSpec

PROTO_TARTAN = 152  # shown by `ip route` as "proto 152"


def host_gw_route(subnet: str, gateway: str, oif: int) -> RouteSpec:
    return RouteSpec(dst=subnet, gw=gateway, oif=oif, proto=PROTO_TARTAN)
