"""Patches made by deltagen apply with the stock CLI tools, and the other way round."""
from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

import deltagen
from deltagen.digests import blake3_file

# The stock tools are the point of these tests: without them they fail (.ci/run installs
# Debian's bsdiff and zstd packages).


@pytest.fixture(autouse=True)
def _stock_tools() -> None:
    missing = [tool for tool in ("bspatch", "zstd") if shutil.which(tool) is None]
    assert not missing, f"{missing} not installed: apt-get install bsdiff zstd (.ci/run does)"


def _pair(tmp_path: Path, size: int = 600_000) -> tuple[Path, Path]:
    rng = random.Random(7)
    old = bytearray(rng.randbytes(size // 3) + bytes(size // 3) + rng.randbytes(size // 3))
    new = bytearray(old)
    for _ in range(40):
        at = rng.randrange(len(new) - 64)
        new[at:at + rng.randrange(1, 64)] = rng.randbytes(rng.randrange(0, 80))
    new += rng.randbytes(5000)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    return tmp_path / "old", tmp_path / "new"


def test_bsdiff4_patch_applies_with_stock_bspatch(tmp_path: Path) -> None:
    old, new = _pair(tmp_path)
    deltagen.make_patch("bsdiff4", old, new, tmp_path / "p")
    subprocess.run(["bspatch", str(old), str(tmp_path / "out"), str(tmp_path / "p")], check=True)
    assert blake3_file(tmp_path / "out") == blake3_file(new)


def test_zstd_patch_applies_with_stock_zstd_cli(tmp_path: Path) -> None:
    old, new = _pair(tmp_path)
    deltagen.make_patch("zstd", old, new, tmp_path / "p")
    subprocess.run(["zstd", "-q", "-d", "--long=31", f"--patch-from={old}", str(tmp_path / "p"),
                    "-o", str(tmp_path / "out")], check=True)
    assert blake3_file(tmp_path / "out") == blake3_file(new)


def test_zstd_patch_declares_content_size(tmp_path: Path) -> None:
    import zstandard
    old, new = _pair(tmp_path)
    deltagen.make_patch("zstd", old, new, tmp_path / "p")
    params = zstandard.get_frame_parameters((tmp_path / "p").read_bytes()[:18])
    assert params.content_size == os.path.getsize(new)
    assert params.has_checksum


def test_compressed_form_decompresses_with_stock_zstd(tmp_path: Path) -> None:
    _, new = _pair(tmp_path)
    deltagen.compress_file(new, tmp_path / "c")
    subprocess.run(["zstd", "-q", "-d", str(tmp_path / "c"), "-o", str(tmp_path / "out")], check=True)
    assert blake3_file(tmp_path / "out") == blake3_file(new)


def test_stock_tool_patches_apply_with_deltagen(tmp_path: Path) -> None:
    old, new = _pair(tmp_path)
    size, digest = os.path.getsize(new), blake3_file(new)
    subprocess.run(["bsdiff", str(old), str(new), str(tmp_path / "pb")], check=True)
    subprocess.run(["zstd", "-q", "-19", "--long=31", f"--patch-from={old}", str(new),
                    "-o", str(tmp_path / "pz")], check=True)
    assert deltagen.apply_patch("bsdiff4", old, tmp_path / "pb", tmp_path / "ob", size, digest) == digest
    assert deltagen.apply_patch("zstd", old, tmp_path / "pz", tmp_path / "oz", size, digest) == digest


def test_zstd_patch_is_as_small_as_the_cli_on_a_large_pair(tmp_path: Path) -> None:
    """Guards the refPrefix path: a dictionary-based patch of this pair is ~8 MiB."""
    rng = random.Random(11)
    old = rng.randbytes(8 << 20)
    new = bytearray(old)
    for _ in range(20):
        at = rng.randrange(len(new) - 100)
        new[at:at + 50] = rng.randbytes(50)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    limits = deltagen.DeltaLimits(zstd_level=3)
    deltagen.make_patch("zstd", tmp_path / "old", tmp_path / "new", tmp_path / "p", limits)
    subprocess.run(["zstd", "-q", "-3", "--long=31", f"--patch-from={tmp_path / 'old'}",
                    str(tmp_path / "new"), "-o", str(tmp_path / "pc")], check=True)
    ours, cli = (tmp_path / "p").stat().st_size, (tmp_path / "pc").stat().st_size
    assert ours <= cli * 1.05 + 64
    subprocess.run(["zstd", "-q", "-d", "--long=31", f"--patch-from={tmp_path / 'old'}",
                    str(tmp_path / "p"), "-o", str(tmp_path / "out")], check=True)
    assert (tmp_path / "out").read_bytes() == bytes(new)


def test_zstd_patch_without_libzstd_falls_back_to_a_raw_dictionary(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from deltagen import zstd_prefix
    monkeypatch.setattr(zstd_prefix, "available", lambda: False)
    old, new = _pair(tmp_path)
    deltagen.make_patch("zstd", old, new, tmp_path / "p")
    subprocess.run(["zstd", "-q", "-d", "--long=31", f"--patch-from={old}", str(tmp_path / "p"),
                    "-o", str(tmp_path / "out")], check=True)
    assert blake3_file(tmp_path / "out") == blake3_file(new)
