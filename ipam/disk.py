"""Reservations on disk in host-local's layout, so both plugins can share one data dir.

    <dataDir>/<network>/<ip>                  "<containerID>\\r\\n<ifname>" (host-local's bytes)
    <dataDir>/<network>/last_reserved_ip.<n>  the last address reserved in range set n
    <dataDir>/<network>/lock                  flock(LOCK_EX) by every process, as host-local
    <dataDir>/<network>/.tartan-boot/<ip>     "<boot id>\\n<containerID>\\n<ifname>\\n"

The `.tartan-boot` sidecars are Tartan's own: they record the boot a reservation was made
under, so reservations from an earlier boot (no container survives a reboot) can be
released. host-local's DEL walks sub-directories too but only removes files whose content is
exactly "<id>\\r\\n<ifname>" or "<id>", which a sidecar never is. A sidecar also names its
holder: when host-local releases a Tartan reservation the sidecar is left behind, and the
holder check keeps it from ever applying to a later reservation of the same address.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tartan.cni import errors
from tartan.ipam.ranges import IPAddress
from tartan.ipam.store import Attachment
from tartan.kernel.files import write_atomic

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
LINE_BREAK = "\r\n"  # host-local's separator; its DEL compares the whole content
LAST_RESERVED_PREFIX = "last_reserved_ip."
LOCK_FILE = "lock"
BOOT_DIR = ".tartan-boot"


def read_boot_id(path: str = BOOT_ID_FILE) -> str:
    """This boot's id, or "" where the kernel does not say (then nothing is swept)."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def parse_ip(name: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def parse_holder(content: str) -> Attachment:
    lines = content.strip().splitlines()
    if not lines:
        return Attachment("", "")
    ifname = lines[1].strip() if len(lines) > 1 else ""
    return Attachment(lines[0].strip(), ifname)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@dataclass(frozen=True)
class BootMark:
    """What a sidecar says: the boot a reservation was made in, and by whom."""

    boot_id: str
    holder: Attachment

    def render(self) -> str:
        return f"{self.boot_id}\n{self.holder.container_id}\n{self.holder.ifname}\n"

    @classmethod
    def parse(cls, content: str) -> BootMark:
        lines = [*content.split("\n"), "", "", ""]
        return cls(lines[0].strip(), Attachment(lines[1].strip(), lines[2].strip()))


class DiskStore:
    """A Store in `<data_dir>/<network>`; `boot_id` returns the current boot's id."""

    def __init__(
        self,
        data_dir: str,
        network: str,
        boot_id: Callable[[], str] = read_boot_id,
    ) -> None:
        self.dir = Path(data_dir) / network
        self._boot_id_source = boot_id
        self._boot_id: str | None = None

    @property
    def boot_id(self) -> str:
        if self._boot_id is None:
            self._boot_id = self._boot_id_source()
        return self._boot_id

    def exists(self) -> bool:
        return self.dir.is_dir()

    def unwritable(self) -> str:
        """Why ADD could not write here, or "" when it could."""
        existing = self.dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"data dir {self.dir} cannot be created: {existing} is not a directory"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"data dir {self.dir} is not writable ({existing} denies writing)"
        return ""

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """flock the network's lock file (as host-local does), creating the dir if needed."""
        try:
            self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(self.dir / LOCK_FILE, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise errors.IOFailure(
                f"cannot use data dir {self.dir}: {exc.strerror}; check ipam.dataDir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    # -- reservations ---------------------------------------------------------------

    def reserve(self, owner: Attachment, ip: IPAddress, range_id: int) -> bool:
        path = self.dir / str(ip)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w", newline="") as out:
                out.write(f"{owner.container_id.strip()}{LINE_BREAK}{owner.ifname}")
            self._mark(ip, owner)
            # Only the next allocation's starting point: a crash that loses it costs nothing.
            write_atomic(self.dir / f"{LAST_RESERVED_PREFIX}{range_id}", str(ip),
                         durable=False)
        except BaseException:
            self.release(ip)
            raise
        return True

    def last_reserved(self, range_id: int) -> IPAddress | None:
        try:
            text = (self.dir / f"{LAST_RESERVED_PREFIX}{range_id}").read_text()
        except OSError:
            return None
        return parse_ip(text.strip())

    def release(self, ip: IPAddress) -> None:
        _unlink(self.dir / str(ip))
        self._unmark(ip)

    def release_by_id(self, owner: Attachment) -> list[IPAddress]:
        gone = self.find_by_id(owner)
        for ip in gone:
            self.release(ip)
        return gone

    def find_by_id(self, owner: Attachment) -> list[IPAddress]:
        return [ip for ip, holder in self.reservations().items() if holder.matches(owner)]

    def reservations(self) -> dict[IPAddress, Attachment]:
        found: dict[IPAddress, Attachment] = {}
        for name in self._names(self.dir):
            ip = parse_ip(name)
            content = self._read(self.dir / name) if ip else None
            if ip and content is not None:
                found[ip] = parse_holder(content)
        return found

    @staticmethod
    def _names(directory: Path) -> list[str]:
        try:
            return [e.name for e in os.scandir(directory) if e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            return []

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            return path.read_text(errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            return None

    # -- boot sidecars --------------------------------------------------------------

    def _mark(self, ip: IPAddress, owner: Attachment) -> None:
        if not self.boot_id:
            return
        (self.dir / BOOT_DIR).mkdir(mode=0o755, exist_ok=True)
        write_atomic(self.dir / BOOT_DIR / str(ip), BootMark(self.boot_id, owner).render(),
                     durable=False)

    def _unmark(self, ip: IPAddress) -> None:
        _unlink(self.dir / BOOT_DIR / str(ip))
        try:
            (self.dir / BOOT_DIR).rmdir()
        except OSError as exc:  # still holds other sidecars, or was never made
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise

    def marks(self) -> dict[IPAddress, BootMark]:
        found: dict[IPAddress, BootMark] = {}
        for name in self._names(self.dir / BOOT_DIR):
            ip = parse_ip(name)
            content = self._read(self.dir / BOOT_DIR / name) if ip else None
            if ip and content is not None:
                found[ip] = BootMark.parse(content)
        return found

    def stale(self) -> tuple[list[IPAddress], list[IPAddress]]:
        """(reservations from an earlier boot, sidecars whose reservation is gone)."""
        if not self.boot_id:
            return [], []
        holders = self.reservations()
        earlier: list[IPAddress] = []
        orphans: list[IPAddress] = []
        for ip, mark in self.marks().items():
            if holders.get(ip) != mark.holder:
                orphans.append(ip)
            elif mark.boot_id != self.boot_id:
                earlier.append(ip)
        return earlier, orphans

    def _remove_temp_files(self) -> None:
        """Our own half-written files, left by a process killed between write and rename
        (never an address: the next write replaces them). Hold the lock."""
        for folder in (self.dir, self.dir / BOOT_DIR):
            for leftover in folder.glob(".*.tmp") if folder.is_dir() else ():
                _unlink(leftover)

    def release_stale(self) -> list[IPAddress]:
        """Release reservations made before this boot; returns them. Hold the lock."""
        earlier, orphans = self.stale()
        self._remove_temp_files()
        for ip in orphans:
            self._unmark(ip)
        for ip in earlier:
            self.release(ip)
        return earlier
