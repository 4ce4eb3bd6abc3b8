"""DiskStore: host-local's bytes on disk, the flock, and the reboot sweep (boot id injected)."""

from __future__ import annotations

import fcntl
import os
import threading
from ipaddress import ip_address as ip
from ipaddress import ip_network
from pathlib import Path

import pytest

from tartan.ipam import allocator
from tartan.ipam.disk import DiskStore, read_boot_id
from tartan.ipam.ranges import Range, RangeSet
from tartan.ipam.store import Attachment

from harness import HANG_GUARD, eventually

A = Attachment("c1", "eth0")
B = Attachment("c2", "eth0")


def store_at(tmp_path: Path, boot: str = "boot-1") -> DiskStore:
    return DiskStore(str(tmp_path), "podnet", boot_id=lambda: boot)


def listing(store: DiskStore) -> list[str]:
    return sorted(str(p.relative_to(store.dir)) for p in store.dir.rglob("*"))


def test_reserve_writes_host_locals_layout(tmp_path):
    store = store_at(tmp_path)
    with store.lock():
        assert store.reserve(A, ip("10.1.0.2"), 0)
        assert store.reserve(A, ip("fd00::2"), 1)
    assert (store.dir / "10.1.0.2").read_bytes() == b"c1\r\neth0"
    assert (store.dir / "fd00::2").read_bytes() == b"c1\r\neth0"
    assert (store.dir / "last_reserved_ip.0").read_bytes() == b"10.1.0.2"
    assert (store.dir / "last_reserved_ip.1").read_bytes() == b"fd00::2"
    assert (store.dir / ".tartan-boot" / "10.1.0.2").read_text() == "boot-1\nc1\neth0\n"
    assert listing(store) == [".tartan-boot", ".tartan-boot/10.1.0.2", ".tartan-boot/fd00::2",
                              "10.1.0.2", "fd00::2", "last_reserved_ip.0", "last_reserved_ip.1",
                              "lock"]


def test_reserve_refuses_a_taken_address(tmp_path):
    store = store_at(tmp_path)
    with store.lock():
        assert store.reserve(A, ip("10.1.0.2"), 0)
        assert not store.reserve(B, ip("10.1.0.2"), 0)
    assert store.reservations() == {ip("10.1.0.2"): A}


def test_reads_host_local_files_including_the_old_format(tmp_path):
    store = store_at(tmp_path)
    store.dir.mkdir()
    (store.dir / "10.1.0.5").write_bytes(b"c1\r\neth0")
    (store.dir / "10.1.0.6").write_bytes(b"c9")  # before host-local recorded ifnames
    (store.dir / "last_reserved_ip.0").write_bytes(b"10.1.0.6")
    (store.dir / "lock").write_bytes(b"")
    assert store.reservations() == {ip("10.1.0.5"): A, ip("10.1.0.6"): Attachment("c9", "")}
    assert store.last_reserved(0) == ip("10.1.0.6")
    assert store.find_by_id(Attachment("c9", "net1")) == [ip("10.1.0.6")]


def test_release_by_id_matches_container_and_ifname(tmp_path):
    store = store_at(tmp_path)
    with store.lock():
        store.reserve(A, ip("10.1.0.2"), 0)
        store.reserve(Attachment("c1", "net1"), ip("10.1.0.3"), 0)
        assert store.release_by_id(A) == [ip("10.1.0.2")]
        assert store.release_by_id(A) == []
    assert listing(store) == [".tartan-boot", ".tartan-boot/10.1.0.3", "10.1.0.3",
                              "last_reserved_ip.0", "lock"]


def test_release_removes_the_sidecar_dir_when_empty(tmp_path):
    store = store_at(tmp_path)
    with store.lock():
        store.reserve(A, ip("10.1.0.2"), 0)
        store.release(ip("10.1.0.2"))
        store.release(ip("10.1.0.99"))  # never reserved: fine
    assert listing(store) == ["last_reserved_ip.0", "lock"]


def test_missing_dir_reads_as_empty(tmp_path):
    store = store_at(tmp_path / "nope")
    assert not store.exists()
    assert store.reservations() == {} and store.last_reserved(0) is None
    assert store.stale() == ([], [])
    assert not (tmp_path / "nope").exists()


def test_lock_is_flock_on_the_lock_file(tmp_path):
    store = store_at(tmp_path)
    with store.lock():
        fd = os.open(store.dir / "lock", os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(store.dir / "lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the block
    finally:
        os.close(fd)


def flock_waiters(path: Path) -> list[str]:
    """/proc/locks lines of processes blocked in flock() on `path` (shown as "-> FLOCK")."""
    st = os.stat(path)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return [line for line in Path("/proc/locks").read_text().splitlines()
            if "-> FLOCK" in line and line.split()[6] == inode]


def test_lock_excludes_other_holders(tmp_path):
    store = store_at(tmp_path)
    order: list[str] = []

    def other() -> None:
        with store_at(tmp_path).lock():
            order.append("other")

    with store.lock():
        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        # The premise, seen by the kernel: the other thread waits in flock on this file.
        waiting = eventually(lambda: flock_waiters(store.dir / "lock"), 30, 0.01,
                             what="the other thread blocked in flock on the lock file")
        assert [line.split()[5] for line in waiting] == [str(os.getpid())]
        assert order == []
        order.append("first")
    thread.join(HANG_GUARD)
    assert order == ["first", "other"]
    assert flock_waiters(store.dir / "lock") == []


def test_unwritable(tmp_path):
    assert store_at(tmp_path / "a" / "b").unwritable() == ""
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "is not a directory" in store_at(blocker / "sub").unwritable()


def test_read_boot_id():
    assert len(read_boot_id()) == 36
    assert read_boot_id("/nonexistent/boot_id") == ""


# -- the reboot sweep -----------------------------------------------------------------


def _reserve(store: DiskStore, owner: Attachment, address: str) -> None:
    with store.lock():
        assert store.reserve(owner, ip(address), 0)


def test_reservations_from_an_earlier_boot_are_released(tmp_path):
    before = store_at(tmp_path, "boot-1")
    _reserve(before, A, "10.1.0.2")
    _reserve(before, B, "10.1.0.3")
    after = store_at(tmp_path, "boot-2")
    _reserve(after, Attachment("c3", "eth0"), "10.1.0.4")
    with after.lock():
        assert sorted(after.release_stale()) == [ip("10.1.0.2"), ip("10.1.0.3")]
    assert after.reservations() == {ip("10.1.0.4"): Attachment("c3", "eth0")}
    assert listing(after) == [".tartan-boot", ".tartan-boot/10.1.0.4", "10.1.0.4",
                              "last_reserved_ip.0", "lock"]


def test_the_same_boot_releases_nothing(tmp_path):
    store = store_at(tmp_path)
    _reserve(store, A, "10.1.0.2")
    with store.lock():
        assert store.release_stale() == []
    assert store.reservations() == {ip("10.1.0.2"): A}


def test_reservations_without_sidecar_are_host_locals_and_stay(tmp_path):
    store = store_at(tmp_path, "boot-2")
    store.dir.mkdir()
    (store.dir / "10.1.0.9").write_bytes(b"hl\r\neth0")
    with store.lock():
        assert store.release_stale() == []
    assert ip("10.1.0.9") in store.reservations()


def test_orphan_sidecar_never_applies_to_a_later_reservation(tmp_path):
    old = store_at(tmp_path, "boot-1")
    _reserve(old, A, "10.1.0.2")
    (old.dir / "10.1.0.2").unlink()  # host-local's DEL removes only the reservation
    (old.dir / "10.1.0.2").write_bytes(b"hl\r\neth0")  # host-local reuses it after a reboot
    new = store_at(tmp_path, "boot-2")
    assert new.stale() == ([], [ip("10.1.0.2")])
    with new.lock():
        assert new.release_stale() == []
    assert new.reservations() == {ip("10.1.0.2"): Attachment("hl", "eth0")}
    assert not (new.dir / ".tartan-boot").exists()


def test_no_boot_id_means_no_sidecars_and_no_sweep(tmp_path):
    store = store_at(tmp_path, "")
    _reserve(store, A, "10.1.0.2")
    assert not (store.dir / ".tartan-boot").exists()
    assert store.stale() == ([], [])


def test_reboot_frees_a_full_range_for_the_allocator(tmp_path):
    sets = [RangeSet((Range.build(ip_network("10.1.0.0/29")),))]
    before = store_at(tmp_path, "boot-1")
    with before.lock():
        for n in range(5):
            allocator.allocate(sets, before, Attachment(f"c{n}", "eth0"))
    after = store_at(tmp_path, "boot-2")
    with after.lock():
        after.release_stale()
        lease, = allocator.allocate(sets, after, Attachment("new", "eth0"))
    assert lease.ip == ip("10.1.0.2")  # round robin wrapped after .6
    assert list(after.reservations().values()) == [Attachment("new", "eth0")]


def test_temp_files_of_a_killed_writer_are_swept_under_the_lock(tmp_path):
    store = store_at(tmp_path)
    with store.lock():
        store.reserve(A, ip("10.1.0.2"), 0)
    leftover = store.dir / ".last_reserved_ip.0.tmp"
    leftover.write_text("10.1.0.3")
    with store.lock():
        store.release_stale()
    assert not leftover.exists()
    assert (store.dir / "10.1.0.2").exists()
