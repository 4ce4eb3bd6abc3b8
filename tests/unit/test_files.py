"""kernel.files.write_atomic: the old file or the new one, never half of one."""

from __future__ import annotations

import os
import stat

import pytest

from tartan.kernel import files


def test_writes_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "subnet.env"
    files.write_atomic(target, "one\n")
    files.write_atomic(target, b"two\n")
    assert target.read_text() == "two\n"
    assert os.listdir(tmp_path) == ["subnet.env"]


def test_the_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        files.write_atomic(tmp_path / "a", "x", mode=0o644)
        files.write_atomic(tmp_path / "b", "x", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o600


def test_a_failed_rename_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch):
    target = tmp_path / "record"
    files.write_atomic(target, "old")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        files.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["record"]


@pytest.mark.parametrize("durable", [True, False])
def test_durable_syncs_the_file_and_then_its_folder(tmp_path, monkeypatch, durable):
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    files.write_atomic(tmp_path / "f", "x", durable=durable)
    assert synced == (["file", "dir"] if durable else [])


def test_temp_files_match_the_sweepers_pattern(tmp_path, monkeypatch):
    seen: list[str] = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    files.write_atomic(tmp_path / "last_reserved_ip.0", "10.0.0.2")
    (name,) = seen
    assert name.startswith(".last_reserved_ip.0.") and name.endswith(files.TEMP_SUFFIX)
    assert list(tmp_path.glob(".*.tmp")) == []  # tartan-ipam sweeps ".*.tmp" after a crash
