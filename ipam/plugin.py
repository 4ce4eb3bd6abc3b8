"""tartan-ipam: a drop-in replacement for the reference host-local IPAM plugin.

Same config, same files under ipam.dataDir (the two can share one), plus GC and STATUS, and
reservations from an earlier boot are released (see disk.py). The entry path imports only
the standard library and the dispatcher; the IPAM modules load inside the handlers.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from tartan.cni import errors, skel
from tartan.cni.types import DNS, IPConfig, Result

if TYPE_CHECKING:
    from tartan.ipam.config import IPAMConfig
    from tartan.ipam.disk import DiskStore
    from tartan.ipam.ranges import IPAddress
    from tartan.ipam.store import Attachment


def _load(args: skel.CmdArgs) -> IPAMConfig:
    from tartan.ipam import config

    return config.parse(args.config, args.args)


def _store(conf: IPAMConfig) -> DiskStore:
    from tartan.ipam.disk import DiskStore

    return DiskStore(conf.data_dir, conf.name)


def _owner(args: skel.CmdArgs) -> Attachment:
    from tartan.ipam.store import Attachment

    return Attachment(args.container_id, args.ifname)


def add(args: skel.CmdArgs) -> Result:
    from tartan.ipam import allocator, config

    conf = _load(args)
    dns = config.read_resolv_conf(conf.resolv_conf) if conf.resolv_conf else DNS()
    store = _store(conf)
    with store.lock():
        store.release_stale()
        reservations = allocator.allocate(conf.range_sets, store, _owner(args), conf.requested)
    return Result(
        ips=[IPConfig(address=r.address, gateway=str(r.range.gateway)) for r in reservations],
        routes=list(conf.routes),
        dns=dns,
    )


def delete(args: skel.CmdArgs) -> None:
    conf = _load(args)
    store = _store(conf)
    if not store.exists():
        return None  # never reserved anything here: nothing to release
    with store.lock():
        store.release_by_id(_owner(args))
    return None


def _held(store: DiskStore, owner: Attachment) -> list[IPAddress]:
    if not store.exists():
        return []
    with store.lock():
        return store.find_by_id(owner)


def check(args: skel.CmdArgs) -> None:
    from tartan.ipam import allocator

    conf = _load(args)
    owner = _owner(args)
    held = _held(_store(conf), owner)
    missing = allocator.missing_sets(conf.range_sets, held)
    if missing:
        raise errors.CheckMismatch(
            f"container {owner.container_id} {owner.ifname} has no address reserved in network "
            f"{conf.name} range set {' nor in range set '.join(str(rs) for rs in missing)}"
        )
    _check_prev_result(args, conf, held)
    return None


def _check_prev_result(args: skel.CmdArgs, conf: IPAMConfig, held: list[IPAddress]) -> None:
    prev = args.prev_result()
    for ip_config in prev.ips if prev else []:
        ip = ipaddress.ip_interface(ip_config.address).ip
        ours = any(rs.contains(ip) for rs in conf.range_sets)
        if ours and ip not in held:
            raise errors.CheckMismatch(
                f"prevResult address {ip_config.address} is not reserved for container "
                f"{args.container_id} {args.ifname} in network {conf.name}"
            )


def gc(args: skel.CmdArgs) -> None:
    from tartan.ipam import allocator, config

    conf = _load(args)
    valid = config.valid_attachments(args.config)
    store = _store(conf)
    if not store.exists():
        return None
    with store.lock():
        store.release_stale()
        allocator.collect_garbage(store, valid)
    return None


def status(args: skel.CmdArgs) -> None:
    from tartan.ipam import allocator

    conf = _load(args)
    store = _store(conf)
    problem = store.unwritable()
    if problem:
        raise errors.PluginNotAvailable(problem)
    earlier, _ = store.stale()
    reserved = set(store.reservations()) - set(earlier)  # an ADD would sweep `earlier` first
    for rangeset in conf.range_sets:
        if allocator.reserved_in(rangeset, reserved) >= rangeset.size:
            raise errors.PluginNotAvailable(allocator.exhausted_message(rangeset, reserved))
    return None


PLUGIN = skel.Plugin("tartan-ipam", add=add, delete=delete, check=check, gc=gc, status=status)


def main() -> int:
    return skel.main(PLUGIN)
