"""Corrupt, truncated, wrong-base and hostile patches raise a DeltaError and leave nothing."""
from __future__ import annotations

import bz2
import os
import random
import struct
from pathlib import Path

import pytest
import zstandard
from patch_mutations import leftovers

import deltagen
from deltagen import CorruptPatch, DigestMismatch, SizeExceeded, SizeMismatch
from deltagen.digests import blake3_file

SIZE = 200_000


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(3)
    old = bytearray(rng.randbytes(SIZE))
    new = bytearray(old)
    new[1000:1010] = b"0123456789"
    new[150_000:150_100] = rng.randbytes(100)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    return tmp_path / "old", tmp_path / "new"



def _apply_fails(tmp_path: Path, algorithm: str, old: Path, patch: Path, size: int,
                 digest: str | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        deltagen.apply_patch(algorithm, old, patch, tmp_path / "out", size, digest)
    assert leftovers(tmp_path) == []


def _bsdiff_int(value: int) -> bytes:
    return struct.pack("<Q", value if value >= 0 else (-value) | (1 << 63))


def _bsdiff_patch(new_size: int, control: list[tuple[int, int, int]], diff: bytes, extra: bytes,
                  raw_control: bytes | None = None) -> bytes:
    ctrl = raw_control if raw_control is not None else b"".join(
        _bsdiff_int(x) + _bsdiff_int(y) + _bsdiff_int(z) for x, y, z in control)
    bc, bd, be = bz2.compress(ctrl), bz2.compress(diff), bz2.compress(extra)
    return (b"BSDIFF40" + _bsdiff_int(len(bc)) + _bsdiff_int(len(bd)) + _bsdiff_int(new_size)
            + bc + bd + be)


@pytest.mark.parametrize("algorithm", ["bsdiff4", "zstd"])
def test_truncated_patch(tmp_path: Path, pair: tuple[Path, Path], algorithm: str) -> None:
    old, new = pair
    deltagen.make_patch(algorithm, old, new, tmp_path / "p")
    data = (tmp_path / "p").read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 20, 5):
        (tmp_path / "t").write_bytes(data[:cut])
        _apply_fails(tmp_path, algorithm, old, tmp_path / "t", SIZE, blake3_file(new), CorruptPatch)


@pytest.mark.parametrize("algorithm", ["bsdiff4", "zstd"])
def test_corrupt_patch_bytes(tmp_path: Path, pair: tuple[Path, Path], algorithm: str) -> None:
    old, new = pair
    deltagen.make_patch(algorithm, old, new, tmp_path / "p")
    data = bytearray((tmp_path / "p").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0x5A for b in data[middle:middle + 8])
    (tmp_path / "p").write_bytes(data)
    with pytest.raises((CorruptPatch, DigestMismatch)):
        deltagen.apply_patch(algorithm, old, tmp_path / "p", tmp_path / "out", SIZE, blake3_file(new))
    assert leftovers(tmp_path) == []


def test_garbage_is_not_a_patch(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, _ = pair
    (tmp_path / "p").write_bytes(os.urandom(1000))
    for algorithm in ("bsdiff4", "zstd"):
        _apply_fails(tmp_path, algorithm, old, tmp_path / "p", SIZE, None, CorruptPatch)


@pytest.mark.parametrize("algorithm", ["bsdiff4", "zstd"])
def test_wrong_base_is_detected_by_digest(tmp_path: Path, pair: tuple[Path, Path], algorithm: str) -> None:
    old, new = pair
    deltagen.make_patch(algorithm, old, new, tmp_path / "p")
    other = tmp_path / "other"
    other.write_bytes(os.urandom(SIZE))  # same size, different content
    _apply_fails(tmp_path, algorithm, other, tmp_path / "p", SIZE, blake3_file(new), DigestMismatch)


def test_zstd_wrong_base_caught_by_frame_checksum_even_without_digest(tmp_path: Path,
                                                                        pair: tuple[Path, Path]) -> None:
    old, new = pair
    deltagen.make_patch("zstd", old, new, tmp_path / "p")
    (tmp_path / "other").write_bytes(os.urandom(SIZE))
    with pytest.raises((DigestMismatch, CorruptPatch)):
        deltagen.apply_patch("zstd", tmp_path / "other", tmp_path / "p", tmp_path / "out", SIZE)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("algorithm", ["bsdiff4", "zstd"])
def test_expected_size_differs_from_declared(tmp_path: Path, pair: tuple[Path, Path], algorithm: str) -> None:
    old, new = pair
    deltagen.make_patch(algorithm, old, new, tmp_path / "p")
    _apply_fails(tmp_path, algorithm, old, tmp_path / "p", SIZE - 1, None, SizeExceeded)
    _apply_fails(tmp_path, algorithm, old, tmp_path / "p", SIZE + 1, None, SizeMismatch)


def test_zstd_bomb_frame_declaring_more_than_expected(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, _ = pair
    bomb = zstandard.ZstdCompressor(level=1).compress(bytes(64 << 20))  # 64 MiB of zeros, ~2 KiB
    (tmp_path / "p").write_bytes(bomb)
    _apply_fails(tmp_path, "zstd", old, tmp_path / "p", 1000, None, SizeExceeded)
    with pytest.raises(SizeExceeded):
        deltagen.decompress_file(tmp_path / "p", tmp_path / "out", 1000)
    assert leftovers(tmp_path) == []


def test_zstd_bomb_hidden_in_a_second_frame_is_refused(tmp_path: Path) -> None:
    honest = zstandard.ZstdCompressor().compress(b"x" * 1000)
    bomb = zstandard.ZstdCompressor(level=1).compress(bytes(256 << 20))
    (tmp_path / "c").write_bytes(honest + bomb)
    with pytest.raises(CorruptPatch, match="after the zstd frame"):
        deltagen.decompress_file(tmp_path / "c", tmp_path / "out", 1000)
    assert leftovers(tmp_path) == []


def test_zstd_frame_without_content_size_is_refused(tmp_path: Path) -> None:
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    (tmp_path / "c").write_bytes(cobj.compress(b"y" * 5000) + cobj.flush())
    with pytest.raises(CorruptPatch):
        deltagen.decompress_file(tmp_path / "c", tmp_path / "out", 5000)
    assert leftovers(tmp_path) == []


def test_compressed_with_wrong_digest(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    _, new = pair
    deltagen.compress_file(new, tmp_path / "c")
    with pytest.raises(DigestMismatch):
        deltagen.decompress_file(tmp_path / "c", tmp_path / "out", SIZE, "0" * 64)
    assert leftovers(tmp_path) == []


def test_bsdiff_header_declaring_huge_size_is_refused_before_allocating(tmp_path: Path,
                                                                         pair: tuple[Path, Path]) -> None:
    old, _ = pair
    (tmp_path / "p").write_bytes(_bsdiff_patch(1 << 50, [(0, 10, 0)], b"", b"a" * 10))
    _apply_fails(tmp_path, "bsdiff4", old, tmp_path / "p", 10, None, SizeExceeded)
    with pytest.raises(SizeExceeded):  # even when the caller expects that size: the cap holds
        deltagen.apply_patch("bsdiff4", old, tmp_path / "p", tmp_path / "out", 1 << 50)


def test_bsdiff_control_writing_past_new(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, _ = pair
    (tmp_path / "p").write_bytes(_bsdiff_patch(10, [(0, 20, 0)], b"", b"a" * 20))
    _apply_fails(tmp_path, "bsdiff4", old, tmp_path / "p", 10, None, CorruptPatch)


def test_bsdiff_control_reading_outside_old(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, _ = pair
    for seek in (10**12, -5):
        (tmp_path / "p").write_bytes(_bsdiff_patch(20, [(0, 0, seek), (20, 0, 0)], bytes(20), b""))
        _apply_fails(tmp_path, "bsdiff4", old, tmp_path / "p", 20, None, CorruptPatch)


def test_bsdiff_control_negative_lengths(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, _ = pair
    (tmp_path / "p").write_bytes(_bsdiff_patch(10, [(-5, 15, 0)], b"", b"a" * 15))
    _apply_fails(tmp_path, "bsdiff4", old, tmp_path / "p", 10, None, CorruptPatch)


def test_bsdiff_blocks_not_matching_control(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, _ = pair
    (tmp_path / "p").write_bytes(_bsdiff_patch(10, [(5, 5, 0)], bytes(5), b"a" * 50))
    _apply_fails(tmp_path, "bsdiff4", old, tmp_path / "p", 10, None, CorruptPatch)


def test_bsdiff_bz2_bomb_in_control_block(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, _ = pair
    (tmp_path / "p").write_bytes(_bsdiff_patch(10, [], b"", b"a" * 10, raw_control=bytes(50 << 20)))
    _apply_fails(tmp_path, "bsdiff4", old, tmp_path / "p", 10, None, CorruptPatch)


def test_bsdiff_header_lengths_past_end_of_file(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, _ = pair
    good = _bsdiff_patch(10, [(0, 10, 0)], b"", b"a" * 10)
    bad = good[:8] + _bsdiff_int(10**9) + good[16:]
    (tmp_path / "p").write_bytes(bad)
    _apply_fails(tmp_path, "bsdiff4", old, tmp_path / "p", 10, None, CorruptPatch)


def test_crafted_valid_bsdiff_patch_applies(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    """The hand-made format used above is right: a well-formed one applies."""
    old, _ = pair
    (tmp_path / "p").write_bytes(_bsdiff_patch(10, [(4, 6, 0)], bytes(4), b"abcdef"))
    deltagen.apply_patch("bsdiff4", old, tmp_path / "p", tmp_path / "out", 10)
    assert (tmp_path / "out").read_bytes() == old.read_bytes()[:4] + b"abcdef"


def test_bsdiff_seek_only_entries_between_others_apply(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    """bsdiff4 writes entries that only seek (0, 0, z) between others (89 in lxml 5.3.0 -> 5.3.1
    objectify.so): more than 64 of them are fine as long as entries that build outnumber them."""
    old, _ = pair
    control = [(1, 0, 9), (0, 0, -9)] * 100 + [(0, 0, 0)] * 64     # 164 seek-only entries for 100
    (tmp_path / "p").write_bytes(_bsdiff_patch(100, control, bytes(100), b""))
    deltagen.apply_patch("bsdiff4", old, tmp_path / "p", tmp_path / "ok", 100)
    assert (tmp_path / "ok").read_bytes() == old.read_bytes()[:100]
    (tmp_path / "p").write_bytes(_bsdiff_patch(100, control + [(0, 0, 0)], bytes(100), b""))
    _apply_fails(tmp_path, "bsdiff4", old, tmp_path / "p", 100, None, CorruptPatch)


def test_unknown_algorithm(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    with pytest.raises(deltagen.UnknownAlgorithm):
        deltagen.make_patch("xdelta", old, new, tmp_path / "p")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- issue 13, D7

def test_bsdiff_control_of_zeros_24x_the_target_stays_small(tmp_path: Path) -> None:
    """D7: a patch whose control block is bz2-compressed zeros, 24x the target size (the most
    the header allows), is refused while memory stays small: the control block is streamed,
    never decompressed whole (before: all of it in memory, 1.2 GiB for a 16 MiB file)."""
    import tracemalloc
    size = 4 << 20
    old = tmp_path / "old"
    old.write_bytes(random.Random(7).randbytes(size))
    patch = _bsdiff_patch(size, [], b"", b"", raw_control=bytes(24 * size))
    assert len(patch) < 4096
    (tmp_path / "p").write_bytes(patch)
    tracemalloc.start()
    try:
        _apply_fails(tmp_path, "bsdiff4", old, tmp_path / "p", size, None, CorruptPatch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size + (8 << 20), f"peak {peak} bytes for a {size}-byte target"


def test_bsdiff_many_one_byte_entries_apply_in_bounded_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               pair: tuple[Path, Path]) -> None:
    """Entries are split across batches at any byte (tiny BATCH): the output is still exact."""
    from deltagen import bsdiff_format
    old, new = pair
    patch = tmp_path / "p"
    deltagen.make_patch("bsdiff4", old, new, patch)
    expected = blake3_file(new)
    for batch in (1, 7, 4096, 1 << 20):
        monkeypatch.setattr(bsdiff_format, "BATCH", batch)
        assert deltagen.apply_patch("bsdiff4", old, patch, tmp_path / "out", SIZE, expected) == expected
    # a hand-made patch of seeks, copies and adds, split every 3 bytes
    monkeypatch.setattr(bsdiff_format, "BATCH", 3)
    data = old.read_bytes()
    control = [(5, 2, 10), (0, 0, -3), (4, 0, 100), (0, 6, 0), (7, 1, -50)]
    want = bytearray()
    pos = 0
    diff = bytes(range(1, 17))
    extra = b"EXTRA-BYTES"
    d = e = 0
    for x, y, z in control:
        want += bytes((data[pos + i] + diff[d + i]) & 0xFF for i in range(x))
        d += x
        pos += x
        want += extra[e:e + y]
        e += y
        pos += z
    (tmp_path / "h").write_bytes(_bsdiff_patch(len(want), control, diff[:d], extra[:e]))
    deltagen.apply_patch("bsdiff4", old, tmp_path / "h", tmp_path / "out", len(want))
    assert (tmp_path / "out").read_bytes() == bytes(want)


def test_bsdiff_old_file_above_the_cap_is_refused(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    from deltagen.limits import DeltaLimits
    old, new = pair
    deltagen.make_patch("bsdiff4", old, new, tmp_path / "p")
    with pytest.raises(SizeExceeded):
        deltagen.apply_patch("bsdiff4", old, tmp_path / "p", tmp_path / "out", SIZE,
                             limits=DeltaLimits(bsdiff_max_bytes=SIZE - 1))
    assert leftovers(tmp_path) == []
