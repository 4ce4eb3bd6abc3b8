"""Waiting for files to be written, with inotify(7): what lets the SQLite store's waits sleep
until another process writes instead of polling the file many times a second.

A watch is on the folder (so a file made, replaced or deleted later is still seen), and
wakes only for the names asked for.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
from collections.abc import Iterable
from pathlib import Path

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x80, 0x100, 0x200
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE
EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len
_libc = ctypes.CDLL(None, use_errno=True)


class FileWatch:
    """Wakes when any of `names` in `folder` is written, made, replaced or deleted."""

    def __init__(self, folder: Path, names: Iterable[str]) -> None:
        self.names = {name.encode() for name in names}
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        if _libc.inotify_add_watch(self.fd, os.fsencode(folder), MASK) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch {folder}: {os.strerror(err)}")

    def wait(self, timeout: float) -> bool:
        """Until one of the names is written or `timeout` seconds pass; whether it was."""
        try:
            readable, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        except (OSError, ValueError):  # closed under the waiter: let it look for itself
            return True
        return bool(readable) and self._drain()

    def _drain(self) -> bool:
        hit = False
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return hit
            offset = 0
            while offset + EVENT.size <= len(data):
                _wd, mask, _cookie, length = EVENT.unpack_from(data, offset)
                name = data[offset + EVENT.size:offset + EVENT.size + length].rstrip(b"\0")
                hit = hit or bool(mask & IN_Q_OVERFLOW) or name in self.names
                offset += EVENT.size + length

    def close(self) -> None:
        os.close(self.fd)
