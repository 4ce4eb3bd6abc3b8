"""Allocation policy over a Store: host-local's round robin, one allocator per range set.

Every function here expects the caller to hold the store's lock.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from tartan.cni import errors
from tartan.ipam.ranges import IPAddress, Range, RangeSet
from tartan.ipam.store import Attachment, Store


@dataclass(frozen=True)
class Reservation:
    ip: IPAddress
    range: Range
    new: bool  # False when the owner already held it (a repeated ADD)

    @property
    def address(self) -> str:
        """CIDR form, e.g. "10.1.0.5/24"."""
        return f"{self.ip}/{self.range.subnet.prefixlen}"


def reserved_in(rangeset: RangeSet, reserved: Iterable[IPAddress]) -> int:
    return sum(1 for ip in reserved if rangeset.allocatable(ip))


def exhausted_message(rangeset: RangeSet, reserved: Iterable[IPAddress]) -> str:
    size = rangeset.size
    taken = reserved_in(rangeset, reserved)
    return f"no free address in range set {rangeset}: {taken} of {size} reserved"


class Allocator:
    """Hands out the addresses of one range set; `range_id` is its index in the config."""

    def __init__(self, rangeset: RangeSet, store: Store, range_id: int) -> None:
        self.rangeset = rangeset
        self.store = store
        self.range_id = range_id

    def get(self, owner: Attachment, requested: IPAddress | None = None) -> Reservation:
        held = self.held(owner)
        if held:
            return self._existing(owner, held[0], requested)
        if requested is not None:
            return self._reserve_requested(owner, requested)
        return self._next_free(owner)

    def held(self, owner: Attachment) -> list[IPAddress]:
        return [ip for ip in self.store.find_by_id(owner) if self.rangeset.contains(ip)]

    def release(self, owner: Attachment) -> list[IPAddress]:
        mine = self.held(owner)
        for ip in mine:
            self.store.release(ip)
        return mine

    def free(self) -> int:
        return self.rangeset.size - reserved_in(self.rangeset, self.store.reservations())

    def _reservation(self, ip: IPAddress, new: bool) -> Reservation:
        found = self.rangeset.range_for(ip)
        assert found is not None
        return Reservation(ip, found, new)

    def _existing(self, owner: Attachment, ip: IPAddress,
                  requested: IPAddress | None) -> Reservation:
        # Newer host-local returns an existing reservation for the same container+ifname.
        if requested is not None and requested != ip:
            raise errors.InvalidConfig(
                f"container {owner.container_id} {owner.ifname} already holds {ip} in range set "
                f"{self.rangeset}, not the requested {requested}; DEL it before asking for another"
            )
        return self._reservation(ip, new=False)

    def _reserve_requested(self, owner: Attachment, ip: IPAddress) -> Reservation:
        found = self.rangeset.range_for(ip)
        if found is None:
            raise errors.InvalidConfig(f"requested IP {ip} is not in range set {self.rangeset}")
        if ip == found.gateway:
            raise errors.InvalidConfig(
                f"requested IP {ip} is the gateway of {found.subnet}; request another address"
            )
        if not self.store.reserve(owner, ip, self.range_id):
            holder = self.store.reservations().get(ip)
            who = f" by container {holder.container_id}" if holder else ""
            raise errors.TryAgainLater(
                f"requested IP {ip} is already reserved{who}; retry after it is released"
            )
        return self._reservation(ip, new=True)

    def _next_free(self, owner: Attachment) -> Reservation:
        last = self.store.last_reserved(self.range_id)
        for ip, _ in self.rangeset.candidates(last):
            if self.store.reserve(owner, ip, self.range_id):
                return self._reservation(ip, new=True)
        raise errors.TryAgainLater(
            exhausted_message(self.rangeset, self.store.reservations()),
            details="release addresses (DEL or GC stale containers) or widen the range",
        )


def assign_requested(
    range_sets: Sequence[RangeSet], requested: Sequence[IPAddress]
) -> dict[int, IPAddress]:
    """Which requested address goes to which range set (at most one each), like host-local."""
    left = list(dict.fromkeys(requested))
    chosen: dict[int, IPAddress] = {}
    for index, rangeset in enumerate(range_sets):
        match = next((ip for ip in left if rangeset.contains(ip)), None)
        if match is not None:
            chosen[index] = match
            left.remove(match)
    if left:
        raise errors.InvalidConfig(_unassigned_message(range_sets, left))
    return chosen


def _unassigned_message(range_sets: Sequence[RangeSet], left: list[IPAddress]) -> str:
    ips = ", ".join(str(ip) for ip in left)
    if any(rs.contains(ip) for rs in range_sets for ip in left):
        return f"more than one requested IP in one range set (left over: {ips}); request one each"
    sets = "; ".join(str(rs) for rs in range_sets)
    return f"requested IP {ips} is not in any range set ({sets})"


def allocate(
    range_sets: Sequence[RangeSet],
    store: Store,
    owner: Attachment,
    requested: Sequence[IPAddress] = (),
) -> list[Reservation]:
    """One address from every range set, all or nothing."""
    wanted = assign_requested(range_sets, requested)
    reservations: list[Reservation] = []
    try:
        for index, rangeset in enumerate(range_sets):
            reservations.append(Allocator(rangeset, store, index).get(owner, wanted.get(index)))
    except BaseException:
        for reservation in reservations:
            if reservation.new:
                store.release(reservation.ip)
        raise
    return reservations


def is_valid(holder: Attachment, valid: Collection[Attachment]) -> bool:
    if holder.ifname:
        return holder in valid
    return any(holder.container_id == v.container_id for v in valid)


def collect_garbage(store: Store, valid: Collection[Attachment]) -> list[IPAddress]:
    """Release every reservation whose holder is not in `valid`."""
    stale = [ip for ip, holder in store.reservations().items() if not is_valid(holder, valid)]
    for ip in stale:
        store.release(ip)
    return stale


def missing_sets(range_sets: Sequence[RangeSet], held: Iterable[IPAddress]) -> list[RangeSet]:
    """The range sets in which none of the `held` addresses lie (what CHECK reports)."""
    held = list(held)
    return [rs for rs in range_sets if not any(rs.contains(ip) for ip in held)]
