"""Network namespaces: enter one for a moment, and open netlink sockets bound to it.

A netlink socket belongs to the namespace of the thread that created it, so the caller
enters the namespace only long enough to open the socket and is always put back, even when
opening fails. setns(2) is per thread; nothing here touches other threads.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tartan.kernel.errors import KernelFailure, NetnsGone

if TYPE_CHECKING:  # pyroute2 loads only where a netlink socket is opened
    from pyroute2 import IPRoute

    from tartan.kernel.bulk import Rtnl

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_netns(path: str) -> int:
    """Open a namespace handle; NetnsGone when it does not exist (any more)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsGone(f"network namespace {path} does not exist") from None


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body with this thread inside the namespace at `path`."""
    target = open_netns(path)
    origin = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise NetnsGone(f"{path} is not a network namespace") from None
            raise KernelFailure(f"cannot enter network namespace {path}: {exc}") from None
        try:
            yield
        finally:
            _setns(origin)
    finally:
        os.close(target)
        os.close(origin)


def netlink(path: str | None = None) -> IPRoute:
    """An IPRoute socket in the namespace at `path` (the current one when None)."""
    from pyroute2 import IPRoute

    if path is None:
        return IPRoute()
    with entered(path):
        return IPRoute()


def raw_netlink(path: str | None = None) -> Rtnl:
    """kernel/bulk.py's raw socket in the namespace at `path` (the current one when None)."""
    from tartan.kernel.bulk import Rtnl

    if path is None:
        return Rtnl()
    with entered(path):
        return Rtnl()


@contextmanager
def netlink_in(path: str | None = None) -> Iterator[IPRoute]:
    """`netlink(path)` for the body of a with-statement, closed after it."""
    ipr = netlink(path)
    try:
        yield ipr
    finally:
        ipr.close()


def same_namespace(path: str) -> bool:
    """Whether `path` is the namespace this thread is in (a runtime may pass the host's)."""
    try:
        a = os.stat(path)
    except FileNotFoundError:
        return False
    b = os.stat("/proc/thread-self/ns/net")
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
