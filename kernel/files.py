"""Files that are either the old version or the new one, never half of one.

Every file Tartan rewrites in place (the subnet file, the meta plugin's delegate configs,
tartan-ipam's last_reserved_ip, the lab's state) goes through `write_atomic`. Standard
library only.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TEMP_SUFFIX = ".tmp"  # temp files are ".<name>.<random>.tmp" beside the file


def write_atomic(path: str | os.PathLike[str], data: str | bytes, *, mode: int = 0o644,
                 durable: bool = True) -> None:
    """Write `data` to a temp file in the same folder and rename it over `path`.

    A reader, or a process killed half-way, sees the old content or the new, never a mix.
    `durable` (the default) also fsyncs the file before the rename and the folder after it,
    so a power loss keeps it too: for records a later command needs (a delegate config for
    DEL, the subnet file, the lab's state). tartan-ipam's per-ADD hints (last_reserved_ip,
    the boot sidecar) pass durable=False, as host-local syncs nothing: each fsync costs an
    ADD about a millisecond, more on a busy disk, and losing them to a power loss costs
    nothing a reboot does not already clear. OSError on failure, and the temp file is gone.
    """
    target = Path(path)
    content = data.encode() if isinstance(data, str) else data
    fd, tmp = _create_temp(target, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
            _write_all(fd, content)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        sync_directory(target.parent)


def _create_temp(target: Path, mode: int) -> tuple[int, str]:
    """A new file beside `target` (not `tempfile`: its import costs a plugin ~20 ms)."""
    for _ in range(100):
        tmp = str(target.with_name(f".{target.name}.{os.urandom(6).hex()}{TEMP_SUFFIX}"))
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {target}")


def _write_all(fd: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view):]


def sync_directory(path: str | os.PathLike[str]) -> None:
    """fsync a folder, so the names created or renamed in it are on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
