"""The route-programming network that host-gw and DirectRouting share.

Every route Tartan installs carries its own routing protocol number, so a reconcile pass can
tell its routes from everyone else's and remove the ones no lease asks for any more.
"""

from __future__ import annotations

from pyroute2 import IPRoute

from tartan.kernel import route
from tartan.kernel.route import RouteSpec

PROTO_TARTAN = 152  # shown by `ip route` as "proto 152"


def host_gw_route(subnet: str, gateway: str, oif: int) -> RouteSpec:
    return RouteSpec(dst=subnet, gw=gateway, oif=oif, proto=PROTO_TARTAN)


def _key(spec: RouteSpec) -> tuple:
    return (spec.network, spec.gw, spec.oif, spec.onlink)


def sync(ipr: IPRoute, desired: list[RouteSpec]) -> int:
    """Make Tartan's routes exactly `desired`; return how many changes that took."""
    live = {spec.network: spec for spec in route.by_protocol(ipr, PROTO_TARTAN)}
    wanted = {spec.network: spec for spec in desired}
    changes = 0
    for network, spec in wanted.items():
        if network not in live or _key(live[network]) != _key(spec):
            route.replace(ipr, spec)
            changes += 1
    for network, spec in live.items():
        if network not in wanted:
            route.delete(ipr, spec)
            changes += 1
    return changes
