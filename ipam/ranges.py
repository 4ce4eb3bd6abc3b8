"""Address ranges and range sets, with host-local's defaults and round-robin order.

A Range is part of one subnet: addresses rangeStart..rangeEnd (both inclusive) minus the
gateway. A RangeSet is a list of non-overlapping ranges of one family; a container gets one
address per range set.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RangeError(ValueError):
    """A range that cannot be used; `field` is the config key at fault."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


def default_end(subnet: IPNetwork) -> IPAddress:
    """host-local's default rangeEnd: the subnet's last address, minus broadcast on IPv4."""
    last = subnet.broadcast_address
    return last - 1 if subnet.version == 4 else last


def _host_bounds(subnet: IPNetwork) -> str:
    return f"{subnet.network_address + 1}-{default_end(subnet)}"


def _check_host(field: str, ip: IPAddress, subnet: IPNetwork) -> None:
    if ip not in subnet:
        raise RangeError(
            field, f"{ip} is outside subnet {subnet}; use an address in {_host_bounds(subnet)}"
        )
    if ip == subnet.network_address:
        raise RangeError(
            field, f"{ip} is the network address of {subnet}; use {_host_bounds(subnet)}"
        )
    if subnet.version == 4 and ip == subnet.broadcast_address:
        raise RangeError(
            field, f"{ip} is the broadcast address of {subnet}; use {_host_bounds(subnet)}"
        )


@dataclass(frozen=True)
class Range:
    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress

    @classmethod
    def build(
        cls,
        subnet: IPNetwork,
        start: IPAddress | None = None,
        end: IPAddress | None = None,
        gateway: IPAddress | None = None,
    ) -> Range:
        """A range with host-local's defaults filled in; raises RangeError if unusable."""
        if subnet.prefixlen > subnet.max_prefixlen - 2:
            raise RangeError(
                "subnet",
                f"{subnet} is too small to allocate from; "
                f"use a prefix of /{subnet.max_prefixlen - 2} or shorter",
            )
        first = subnet.network_address + 1
        built = cls(subnet, start or first, end or default_end(subnet), gateway or first)
        built._validate()
        return built

    def _validate(self) -> None:
        _check_host("rangeStart", self.start, self.subnet)
        _check_host("rangeEnd", self.end, self.subnet)
        _check_host("gateway", self.gateway, self.subnet)
        if int(self.start) > int(self.end):  # one family: _check_host put both in subnet
            raise RangeError(
                "rangeEnd", f"{self.end} is before rangeStart {self.start}; swap them"
            )
        if self.size == 0:
            raise RangeError(
                "rangeEnd",
                f"{self.start}-{self.end} holds no address besides the gateway; widen the range",
            )

    @property
    def version(self) -> int:
        return self.subnet.version

    @property
    def size(self) -> int:
        """How many addresses can be handed out (the gateway never is)."""
        total = int(self.end) - int(self.start) + 1
        return total - (1 if self.contains(self.gateway) else 0)

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.version and int(self.start) <= int(ip) <= int(self.end)

    def allocatable(self, ip: IPAddress) -> bool:
        return self.contains(ip) and ip != self.gateway

    def overlaps(self, other: Range) -> bool:
        return (
            self.version == other.version
            and int(self.start) <= int(other.end)
            and int(other.start) <= int(self.end)
        )

    def _usable_bounds(self) -> tuple[IPAddress, IPAddress]:
        low = self.start + 1 if self.start == self.gateway else self.start
        high = self.end - 1 if self.end == self.gateway else self.end
        return low, high

    def __str__(self) -> str:
        low, high = self._usable_bounds()
        return f"{self.subnet} ({low}-{high})"


def _walk(first: IPAddress, last: IPAddress) -> Iterator[IPAddress]:
    kind = type(first)
    for value in range(int(first), int(last) + 1):
        yield kind(value)


@dataclass(frozen=True)
class RangeSet:
    ranges: tuple[Range, ...]

    @property
    def version(self) -> int:
        return self.ranges[0].version

    @property
    def size(self) -> int:
        return sum(r.size for r in self.ranges)

    def range_for(self, ip: IPAddress) -> Range | None:
        return next((r for r in self.ranges if r.contains(ip)), None)

    def contains(self, ip: IPAddress) -> bool:
        return self.range_for(ip) is not None

    def allocatable(self, ip: IPAddress) -> bool:
        found = self.range_for(ip)
        return found is not None and found.allocatable(ip)

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def _index_of(self, ip: IPAddress | None) -> int | None:
        if ip is None:
            return None
        return next((i for i, r in enumerate(self.ranges) if r.contains(ip)), None)

    def _segments(self, last: IPAddress | None) -> list[tuple[Range, IPAddress, IPAddress]]:
        """The set's addresses as (range, first, last) pieces, starting after `last`."""
        index = self._index_of(last)
        if index is None or last is None:
            return [(r, r.start, r.end) for r in self.ranges]
        count = len(self.ranges)
        here = self.ranges[index]
        head = [(here, last + 1, here.end)] if int(last) < int(here.end) else []
        others = [self.ranges[(index + k) % count] for k in range(1, count)]
        return [*head, *((r, r.start, r.end) for r in others), (here, here.start, last)]

    def candidates(self, last: IPAddress | None = None) -> Iterator[tuple[IPAddress, Range]]:
        """Every allocatable address once, in host-local's round-robin order after `last`."""
        for owner, first, final in self._segments(last):
            for ip in _walk(first, final):
                if ip != owner.gateway:
                    yield ip, owner

    def __str__(self) -> str:
        return ", ".join(str(r) for r in self.ranges)
