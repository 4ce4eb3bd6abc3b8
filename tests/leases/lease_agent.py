"""One node acquiring a lease, as its own process: `python lease_agent.py STORE_URL
PUBLIC_IP START_AT PREFIX NETCONF_JSON` prints {"subnet": ...} or {"error": ...}.

Every process spins until START_AT (a time.time()) so several start acquiring at once.
"""

from __future__ import annotations

import json
import sys
import time

from tartan.ipam.lease import LeaseAttrs, LeaseError, LeaseManager, open_store
from tartan.ipam.netconf import parse_network_config


def main(url: str, public_ip: str, start_at: str, prefix: str, netconf: str) -> None:
    store = open_store(url, prefix=prefix)
    manager = LeaseManager(store, parse_network_config(netconf), ttl=60)
    while time.time() < float(start_at):
        pass
    try:
        lease = manager.acquire(LeaseAttrs(public_ip, "host-gw", {}))
        print(json.dumps({"subnet": str(lease.subnet)}))
    except LeaseError as exc:
        print(json.dumps({"error": type(exc).__name__, "msg": str(exc)}))
    finally:
        store.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
