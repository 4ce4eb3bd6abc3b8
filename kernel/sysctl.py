"""The few /proc/sys knobs the plugins touch (in the namespace of the calling thread)."""

from __future__ import annotations

from pathlib import Path

from tartan.kernel.errors import KernelFailure

PROC_SYS = Path("/proc/sys")


def write(key: str, value: str) -> None:
    """Write `key` (dotted form, e.g. net.ipv4.ip_forward) unless it already holds `value`."""
    _write(PROC_SYS / key.replace(".", "/"), key, value)


def write_interface(version: int, ifname: str, key: str, value: str) -> None:
    """Write net.ipv{4,6}.conf.<ifname>.<key>; the name may hold dots (cni0.100)."""
    if not ifname or "/" in ifname or ifname in (".", ".."):
        raise KernelFailure(f"cannot set {key} on interface {ifname!r}: not an interface name")
    path = PROC_SYS / "net" / f"ipv{version}" / "conf" / ifname / key
    _write(path, f"net.ipv{version}.conf.{ifname}.{key}", value)


def _write(path: Path, key: str, value: str) -> None:
    try:
        if path.read_text().strip() == value:
            return
        path.write_text(value)
    except OSError as exc:
        raise KernelFailure(f"cannot set {key}={value}: {exc}") from None


def enable_forwarding(version: int) -> None:
    write("net.ipv4.ip_forward" if version == 4 else "net.ipv6.conf.all.forwarding", "1")
