"""The client's staged tree is made durable at once (one syncfs), not file by file, and
falls back to an fsync of every file written and every directory where syncfs is missing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import deltagen
from client import install
from deltagen.output import sync_filesystem


def _count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_sync_filesystem_flushes_and_reports_a_bad_path(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    assert sync_filesystem(tmp_path) is True  # this is Linux: syncfs exists
    with pytest.raises(OSError):
        sync_filesystem(tmp_path / "missing")


def test_apply_without_durable_skips_the_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(b"hello world, " * 1000)
    new.write_bytes(b"hello world! " * 1000)
    deltagen.make_patch("zstd", old, new, tmp_path / "p")
    fsyncs = _count_fsyncs(monkeypatch)
    digest = deltagen.apply_patch("zstd", old, tmp_path / "p", tmp_path / "a", new.stat().st_size, durable=False)
    assert fsyncs == []
    deltagen.apply_patch("zstd", old, tmp_path / "p", tmp_path / "b", new.stat().st_size, digest)
    assert os.stat(tmp_path / "b").st_ino in fsyncs  # the default stays durable
    (tmp_path / "a").unlink()


def test_fsync_tree_uses_one_syncfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d").mkdir()
    files = [tmp_path / "d" / f"f{i}" for i in range(20)]
    for f in files:
        f.write_bytes(b"data")
    calls: list[Path] = []
    monkeypatch.setattr(install, "sync_filesystem", lambda p: calls.append(Path(p)) or True)
    fsyncs = _count_fsyncs(monkeypatch)
    install.fsync_tree(tmp_path, files)
    assert calls == [tmp_path] and fsyncs == []


def test_fsync_tree_without_syncfs_fsyncs_every_written_file_and_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    written = [tmp_path / "d" / "w1", tmp_path / "d" / "e" / "w2"]
    linked = tmp_path / "d" / "linked"
    for f in [*written, linked]:
        f.write_bytes(b"data")
    monkeypatch.setattr(install, "sync_filesystem", lambda p: False)
    fsyncs = _count_fsyncs(monkeypatch)
    install.fsync_tree(tmp_path, written)
    expected = {p.stat().st_ino for p in [*written, tmp_path, tmp_path / "d", tmp_path / "d" / "e"]}
    assert expected <= set(fsyncs)
    assert linked.stat().st_ino not in fsyncs  # hardlinked, not written: already durable
