"""HDiffPatch patches: made, checked and applied; hostile ones refused before allocating.

Each hostile patch is built by hand from the format (deltagen/hdiff_format.py): a header
that lies about a size, a stream that holds more than the header says (a decompression
bomb), a dictionary or window far larger than the data, a compressor nobody knows.
"""
from __future__ import annotations

import json
import lzma
import os
import random
import resource
import struct
import threading
from pathlib import Path

import hdiffpatch
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from patch_mutations import Mutation, apply_refused_or_exact, leftovers, mutate, mutations, refused

import deltagen
from deltagen import CorruptPatch, DeltaError, DeltaLimits, DigestMismatch, SizeExceeded, SizeMismatch, hdiff_format
from deltagen.digests import blake3_bytes, blake3_file
from deltagen.hdiff_format import MAGIC, encode_varint
from fixtures import write_release

SIZE = 200_000
REFUSALS = (CorruptPatch, SizeExceeded, SizeMismatch, DigestMismatch)


def _pair_bytes(seed: int = 3, size: int = SIZE) -> tuple[bytes, bytes]:
    rng = random.Random(seed)
    text = b" ".join(rng.choice([b"alpha", b"beta", b"gamma", b"delta", b"\x00\x01"]) for _ in range(size // 6))
    old = bytearray((text + rng.randbytes(size))[:size])
    new = bytearray(old)
    for _ in range(30):
        at = rng.randrange(size - 200)
        new[at:at + rng.randrange(60)] = rng.randbytes(rng.randrange(120))
    new[size // 2:size // 2] = b"".join(b"line %d of new text\n" % i for i in range(300))  # no cover gives it
    return bytes(old), bytes(new)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    old, new = _pair_bytes()
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    return tmp_path / "old", tmp_path / "new"


def _refused(tmp_path: Path, old: Path, patch: bytes, size: int, digest: str | None,
             error: type[Exception] | tuple[type[Exception], ...], limits: DeltaLimits | None = None) -> DeltaError:
    return refused("hdiffpatch", tmp_path, old, patch, size, digest, error, limits)



def _build(compressor: str, new_size: int, old_size: int, cover_count: int,
           streams: list[tuple[int, bytes, bool]]) -> bytes:
    """An HDIFF13 patch from parts: streams are (declared size, stored bytes, compressed?)."""
    head = MAGIC + compressor.encode() + b"\0" + b"".join(map(encode_varint, (new_size, old_size, cover_count)))
    for size, body, compressed in streams:
        head += encode_varint(size) + encode_varint(len(body) if compressed else 0)
    return head + b"".join(body for _, body, _ in streams)


def _parts(patch: bytes) -> tuple[hdiff_format.HDiffHeader, list[bytes]]:
    header = hdiff_format.parse_header(patch[:hdiff_format.HEADER_MAX], len(patch))
    bodies, pos = [], header.header_size
    for stream in header.streams:
        bodies.append(patch[pos:pos + stream.stored])
        pos += stream.stored
    return header, bodies


def _lzma_stream(data: bytes, dict_size: int = 1 << 16, zeros: int = 0) -> bytes:
    """A stream as HDiffPatch stores it: props size, 5 props bytes, raw LZMA1; of ``data``
    and ``zeros`` zero bytes after it, fed 1 MiB at a time (a bomb is never whole in memory)."""
    filters = [{"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": 3, "lp": 0, "pb": 2}]
    props = bytes([(2 * 5 + 0) * 9 + 3]) + struct.pack("<I", dict_size)
    encoder = lzma.LZMACompressor(format=lzma.FORMAT_RAW, filters=filters)
    parts = [encoder.compress(data)]
    block = bytes(1 << 20)
    for start in range(0, zeros, len(block)):
        parts.append(encoder.compress(block[:zeros - start]))
    return bytes([5]) + props + b"".join(parts) + encoder.flush()


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("compressor", ["lzma", "zstd"])
def test_round_trip_and_format(tmp_path: Path, pair: tuple[Path, Path], compressor: str) -> None:
    old, new = pair
    limits = DeltaLimits(hdiffpatch_compressor=compressor)  # type: ignore[arg-type]
    deltagen.make_patch("hdiffpatch", old, new, tmp_path / "p", limits)
    data = (tmp_path / "p").read_bytes()
    assert data.startswith(b"HDIFF13&" + compressor.encode() + b"\0")
    header, _ = _parts(data)
    assert (header.new_size, header.old_size) == (new.stat().st_size, old.stat().st_size)
    assert any(s.compressed for s in header.streams)
    digest = deltagen.apply_patch("hdiffpatch", old, tmp_path / "p", tmp_path / "out",
                                  new.stat().st_size, blake3_file(new), limits)
    assert digest == blake3_file(new) and (tmp_path / "out").read_bytes() == new.read_bytes()
    # the library's own apply agrees (what hpatchz runs)
    assert hdiffpatch.apply(old.read_bytes(), data) == new.read_bytes()


def test_lzma_streams_carry_their_own_props(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    """deltagen codes each stream with the best of a few lc/lp/pb (hdiff_format.STREAM_PROPS);
    the patch is still one the library's own patcher (what hpatchz runs) applies."""
    # liblzma 5.4+ (Debian 12's liblzma5 is 5.4.1): without it the tuned coding is never taken
    assert hdiff_format._tuned_available(), "liblzma < 5.4: the per-stream props are never used"
    old, new = pair
    deltagen.make_patch("hdiffpatch", old, new, tmp_path / "p")
    data = (tmp_path / "p").read_bytes()
    header, bodies = _parts(data)
    seen = 0
    for stream, body, choices in zip(header.streams, bodies, hdiff_format.STREAM_PROPS, strict=True):
        if stream.compressed:
            assert body[0] == 5 and body[1] in {(pb * 5 + lp) * 9 + lc for lc, lp, pb in choices}, stream.name
            seen += 1
    assert seen >= 1
    assert hdiffpatch.apply(old.read_bytes(), data) == new.read_bytes()
    own = hdiffpatch.diff(old.read_bytes(), new.read_bytes(), compression=hdiff_format.build_config("lzma"))
    assert len(data) <= len(own) * 1.01
    # forced props are what the streams carry, and the patch still applies
    forced = hdiff_format.tuned_lzma_patch(old.read_bytes(), new.read_bytes(), (((0, 0, 0),),) * 4)
    header, bodies = _parts(forced)
    assert all(body[:2] == b"\x05\x00" for s, body in zip(header.streams, bodies, strict=True) if s.compressed)
    assert hdiffpatch.apply(old.read_bytes(), forced) == new.read_bytes()
    deltagen.apply_patch("hdiffpatch", old, tmp_path / "p", tmp_path / "out", new.stat().st_size, blake3_file(new))


def test_without_liblzma_5_4_the_library_codes_the_streams(tmp_path: Path, pair: tuple[Path, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """On an older liblzma the patch is HDiffPatch's own: byte for byte what the library makes."""
    monkeypatch.setattr(hdiff_format, "_tuned_available", lambda: False)
    old, new = pair
    deltagen.make_patch("hdiffpatch", old, new, tmp_path / "p")
    own = hdiffpatch.diff(old.read_bytes(), new.read_bytes(), compression=hdiff_format.build_config("lzma"),
                          validate=False)
    assert (tmp_path / "p").read_bytes() == own
    deltagen.apply_patch("hdiffpatch", old, tmp_path / "p", tmp_path / "out", new.stat().st_size, blake3_file(new))


def test_lzma_stream_keeps_the_smallest_props() -> None:
    rng = random.Random(5)
    code = bytes(rng.choice(b"\x00\x01\x02\x03\xff\x48\x89") for _ in range(40_000))   # small: every props built
    sizes = {p: len(hdiff_format._lzma_stream(code, (p,)) or b"") for p in ((3, 0, 2), (0, 0, 0), (4, 0, 0))}
    chosen = hdiff_format._lzma_stream(code, tuple(sizes))
    assert chosen is not None and len(chosen) == min(sizes.values())
    big = code * 8   # large: chosen on a sample, still one of the candidates
    chosen = hdiff_format._lzma_stream(big, tuple(sizes))
    assert chosen is not None and chosen[1] in {(pb * 5 + lp) * 9 + lc for lc, lp, pb in sizes}
    assert hdiff_format._lzma_stream(rng.randbytes(5000), tuple(sizes)) is None   # stored raw


def test_patches_made_by_the_library_with_other_settings_apply(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    for compression in (None, "lzma", "zstd", hdiffpatch.LzmaConfig(level=6, window=20),
                        hdiffpatch.ZStdConfig(level=3)):
        (tmp_path / "p").write_bytes(hdiffpatch.diff(old.read_bytes(), new.read_bytes(), compression=compression))
        deltagen.apply_patch("hdiffpatch", old, tmp_path / "p", tmp_path / "out", new.stat().st_size,
                             blake3_file(new))
        assert (tmp_path / "out").read_bytes() == new.read_bytes()


def test_empty_files(tmp_path: Path) -> None:
    for old, new in ((b"", b""), (b"", b"abc" * 100), (b"abc" * 100, b"")):
        (tmp_path / "old").write_bytes(old)
        (tmp_path / "new").write_bytes(new)
        deltagen.make_patch("hdiffpatch", tmp_path / "old", tmp_path / "new", tmp_path / "p")
        deltagen.apply_patch("hdiffpatch", tmp_path / "old", tmp_path / "p", tmp_path / "out", len(new),
                             blake3_bytes(new))
        assert (tmp_path / "out").read_bytes() == new


def test_build_over_the_cap_writes_nothing(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    with pytest.raises(SizeExceeded):
        deltagen.make_patch("hdiffpatch", old, new, tmp_path / "p", DeltaLimits(hdiffpatch_max_bytes=SIZE // 2))
    assert not (tmp_path / "p").exists() and leftovers(tmp_path) == []


def test_apply_over_the_cap_is_refused(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    deltagen.make_patch("hdiffpatch", old, new, tmp_path / "p")
    with pytest.raises(SizeExceeded):
        deltagen.apply_patch("hdiffpatch", old, tmp_path / "p", tmp_path / "out", new.stat().st_size,
                             limits=DeltaLimits(hdiffpatch_max_bytes=SIZE // 2))
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- the header

def test_header_lies_about_the_new_size(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    header, bodies = _parts(hdiffpatch.diff(old.read_bytes(), new.read_bytes(), compression="lzma"))
    streams = [(s.size, b, bool(s.compressed)) for s, b in zip(header.streams, bodies)]
    size = new.stat().st_size
    huge = _build("lzma", 1 << 60, header.old_size, header.cover_count, streams)
    _refused(tmp_path, old, huge, size, None, SizeExceeded)       # before any allocation
    small = _build("lzma", size - 1, header.old_size, header.cover_count, streams)
    _refused(tmp_path, old, small, size, None, SizeMismatch)
    # an expected size above max_output_bytes is refused before the patch is opened
    with pytest.raises(SizeExceeded):
        deltagen.apply_patch("hdiffpatch", old, tmp_path / "p", tmp_path / "out", 1 << 60)


def test_wrong_old_file(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    deltagen.make_patch("hdiffpatch", old, new, tmp_path / "p")
    patch = (tmp_path / "p").read_bytes()
    (tmp_path / "shorter").write_bytes(old.read_bytes()[:-1])
    err = _refused(tmp_path, tmp_path / "shorter", patch, new.stat().st_size, None, SizeMismatch)
    assert "old file" in str(err)
    (tmp_path / "other").write_bytes(os.urandom(SIZE))     # same size, other bytes: only the digest tells
    _refused(tmp_path, tmp_path / "other", patch, new.stat().st_size, blake3_file(new), DigestMismatch)


def test_header_lies_about_stream_sizes(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    size = new.stat().st_size
    header, bodies = _parts(hdiffpatch.diff(old.read_bytes(), new.read_bytes(), compression="lzma"))
    streams = [(s.size, b, bool(s.compressed)) for s, b in zip(header.streams, bodies)]
    for i in range(4):
        lying = list(streams)
        lying[i] = (1 << 40, streams[i][1], streams[i][2])   # a stream "of 1 TiB" in a small patch
        # compressed: over the new size; stored raw: the streams no longer end at the file's end
        error = SizeExceeded if streams[i][2] else CorruptPatch
        _refused(tmp_path, old, _build("lzma", size, SIZE, header.cover_count, lying), size, None, error)
    # a billion covers in a few bytes
    _refused(tmp_path, old, _build("lzma", size, SIZE, 10**9, streams), size, None, CorruptPatch)
    # stored sizes that do not tile the file
    _refused(tmp_path, old, _build("lzma", size, SIZE, header.cover_count, streams) + b"x", size, None,
             CorruptPatch)


def test_unknown_formats_and_compressors_are_refused(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    size = new.stat().st_size
    for compression in ("bzip2", "zlib", "lzma2", "xz", "brotli"):
        patch = hdiffpatch.diff(old.read_bytes(), new.read_bytes(), compression=compression)
        err = _refused(tmp_path, old, patch, size, None, CorruptPatch)
        assert "not supported" in str(err)
    for junk in (b"HDIFFSF20&lzma\0" + bytes(40), b"HDIFF19&lzma\0" + bytes(40), b"HDIFF13&" + b"a" * 300,
                 b"BSDIFF40" + bytes(100), os.urandom(1000), b"", b"HDIFF13&lzma\0"):
        _refused(tmp_path, old, junk, size, None, CorruptPatch)


def test_truncated_patches(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    deltagen.make_patch("hdiffpatch", old, new, tmp_path / "p")
    data = (tmp_path / "p").read_bytes()
    for cut in (len(data) - 1, len(data) - 2, len(data) // 2, 40, 20, 9, 0):
        _refused(tmp_path, old, data[:cut], new.stat().st_size, blake3_file(new), CorruptPatch)


# ----------------------------------------------------------------------------- bombs

def test_lzma_stream_holding_more_than_declared_is_refused(tmp_path: Path) -> None:
    """Honest sizes, but the new-data stream decodes to 64 MiB more than the header says."""
    new = b"".join(b"line %d\n" % i for i in range(20_000))            # 128 KiB, compresses well
    bomb = _lzma_stream(new + bytes(64 << 20))                     # ~40 KiB
    assert len(bomb) < len(new)
    patch = _build("lzma", len(new), 0, 0, [(0, b"", False), (1, b"\x00", False), (0, b"", False),
                                           (len(new), bomb, True)])
    (tmp_path / "old").write_bytes(b"")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = _refused(tmp_path, tmp_path / "old", patch, len(new), None, CorruptPatch)
    assert "more in it" in str(err)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 << 10   # KiB: nothing big


def test_lzma_dictionary_far_larger_than_the_data_is_refused(tmp_path: Path) -> None:
    new = os.urandom(1000)
    stream = bytearray(_lzma_stream(new))
    stream[2:6] = struct.pack("<I", 0xFFFFFFFF)                   # "allocate 4 GiB"
    patch = _build("lzma", len(new), 0, 0, [(0, b"", False), (1, b"\x00", False), (0, b"", False),
                                           (len(new), bytes(stream), True)])
    (tmp_path / "old").write_bytes(b"")
    _refused(tmp_path, tmp_path / "old", patch, len(new), None, SizeExceeded)


def test_zstd_stream_declaring_more_or_a_huge_window_is_refused(tmp_path: Path) -> None:
    new = b"".join(b"line %d\n" % i for i in range(20_000))
    (tmp_path / "old").write_bytes(b"")

    def patch(stream: bytes) -> bytes:
        return _build("zstd", len(new), 0, 0, [(0, b"", False), (1, b"\x00", False), (0, b"", False),
                                              (len(new), stream, True)])

    bomb = zstandard.ZstdCompressor(level=1).compress(new + bytes(64 << 20))
    _refused(tmp_path, tmp_path / "old", patch(bomb), len(new), None, SizeExceeded)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(new)
    _refused(tmp_path, tmp_path / "old", patch(unsized), len(new), None, CorruptPatch)
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=27)
    wide = zstandard.ZstdCompressor(compression_params=params).compress(new)
    _refused(tmp_path, tmp_path / "old", patch(wide), len(new), None, CorruptPatch)
    second = zstandard.ZstdCompressor().compress(new) + zstandard.ZstdCompressor().compress(bytes(1 << 20))
    _refused(tmp_path, tmp_path / "old", patch(second), len(new), None, CorruptPatch)


def test_covers_reading_outside_the_old_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"x" * 100)
    # one cover: old position +90, new position 0, length 50 -> reads old[90:140]
    covers = encode_varint(90 << 1) + encode_varint(0) + encode_varint(50)
    patch = _build("", 50, 100, 1, [(len(covers), covers, False), (1, b"\x00", False), (0, b"", False),
                                    (0, b"", False)])
    _refused(tmp_path, tmp_path / "old", patch, 50, None, CorruptPatch)


# ----------------------------------------------------------------------------- streams decoded in parallel

@pytest.fixture
def parallel_decode(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every patch's compressed streams decoded on two threads (however small); returns the
    names of the threads each stream was decoded on."""
    monkeypatch.setattr(hdiff_format, "PARALLEL_DECODE_MIN", 0)
    monkeypatch.setattr(hdiff_format, "DECODE_THREADS", 2)
    threads: list[str] = []
    decode = hdiff_format._decode_stream

    def spy(*args: object) -> bytes:
        threads.append(threading.current_thread().name)
        return decode(*args)  # type: ignore[arg-type]
    monkeypatch.setattr(hdiff_format, "_decode_stream", spy)
    return threads


def _relocated_pair() -> tuple[bytes, bytes]:
    """Old and new like a rebuilt binary: a small add every 97 bytes (relocations) and new
    text, so that three of the four streams are stored compressed."""
    rng = random.Random(7)
    old = b" ".join(rng.choice([b"alpha", b"beta", b"gamma", b"\x00\x01", b"call", b"ret"]) for _ in range(60_000))
    new = bytearray(old)
    for i in range(0, len(new) - 8, 97):
        new[i] = (new[i] + 1) & 0xFF
    new[len(new) // 2:len(new) // 2] = b"".join(b"line %d of new text\n" % i for i in range(3000))
    return old, bytes(new)


@pytest.fixture
def relocated(tmp_path: Path) -> tuple[Path, Path]:
    old, new = _relocated_pair()
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    return tmp_path / "old", tmp_path / "new"


@pytest.mark.parametrize("compressor", ["lzma", "zstd"])
def test_parallel_decode_round_trip(tmp_path: Path, relocated: tuple[Path, Path], compressor: str,
                                    parallel_decode: list[str]) -> None:
    old, new = relocated
    limits = DeltaLimits(hdiffpatch_compressor=compressor)  # type: ignore[arg-type]
    deltagen.make_patch("hdiffpatch", old, new, tmp_path / "p", limits)
    header, _ = _parts((tmp_path / "p").read_bytes())
    digest = deltagen.apply_patch("hdiffpatch", old, tmp_path / "p", tmp_path / "out",
                                  new.stat().st_size, blake3_file(new), limits)
    assert digest == blake3_file(new) and (tmp_path / "out").read_bytes() == new.read_bytes()
    assert len(parallel_decode) == sum(1 for s in header.streams if s.compressed) >= 2
    assert all(name.startswith("hdiff-decode") for name in parallel_decode)


def test_parallel_decode_refuses_a_bomb_beside_honest_streams(tmp_path: Path, relocated: tuple[Path, Path],
                                                              parallel_decode: list[str]) -> None:
    """A real patch with one of its compressed streams swapped for one holding 8-64 MiB more."""
    old, new = relocated
    size = new.stat().st_size
    deltagen.make_patch("hdiffpatch", old, new, tmp_path / "p")
    header, bodies = _parts((tmp_path / "p").read_bytes())
    _, raw = _parts(hdiff_format.raw_patch(header, (tmp_path / "p").read_bytes()))
    streams = [(s.size, b, bool(s.compressed)) for s, b in zip(header.streams, bodies)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    swapped = 0
    for i, stream in enumerate(header.streams):
        if not stream.compressed:
            continue
        bombed = list(streams)
        dict_size = 1 << max(12, (stream.size - 1).bit_length())     # what the encoder would pick
        bombed[i] = (stream.size, _lzma_stream(raw[i], dict_size, zeros=(64 if i == 3 else 8) << 20), True)
        parallel_decode.clear()
        err = _refused(tmp_path, old, _build("lzma", size, header.old_size, header.cover_count, bombed), size,
                       None, CorruptPatch)
        assert "more in it" in str(err) and len(parallel_decode) >= 2
        swapped += 1
        # the same stream with a dictionary "of 4 GiB", then cut short
        wide = bytearray(bodies[i])
        wide[2:6] = struct.pack("<I", 0xFFFFFFFF)
        bombed[i] = (stream.size, bytes(wide), True)
        _refused(tmp_path, old, _build("lzma", size, header.old_size, header.cover_count, bombed), size, None,
                 SizeExceeded)
        bombed[i] = (stream.size, bodies[i][:len(bodies[i]) // 2], True)
        _refused(tmp_path, old, _build("lzma", size, header.old_size, header.cover_count, bombed), size, None,
                 CorruptPatch)
    assert swapped >= 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 << 10   # KiB: nothing big


def test_parallel_decode_refuses_truncated_and_mutated_patches(tmp_path: Path, relocated: tuple[Path, Path],
                                                               parallel_decode: list[str]) -> None:
    old, new = relocated
    deltagen.make_patch("hdiffpatch", old, new, tmp_path / "p")
    data = (tmp_path / "p").read_bytes()
    for cut in (len(data) - 1, len(data) - 2, len(data) // 2, 40):
        _refused(tmp_path, old, data[:cut], new.stat().st_size, blake3_file(new), CorruptPatch)
    header, _ = _parts(data)
    rng = random.Random(5)
    for _ in range(40):   # flipped bits inside the streams: refused, or (a bit the decoder ignores) exact
        mutated = bytearray(data)
        at = rng.randrange(header.header_size, len(data))
        mutated[at] ^= 1 << rng.randrange(8)
        (tmp_path / "m").write_bytes(bytes(mutated))
        try:
            deltagen.apply_patch("hdiffpatch", old, tmp_path / "m", tmp_path / "out", new.stat().st_size,
                                 blake3_file(new))
        except REFUSALS:
            assert not (tmp_path / "out").exists()
        else:
            assert (tmp_path / "out").read_bytes() == new.read_bytes()
            (tmp_path / "out").unlink()
    assert len(parallel_decode) > 0


# ----------------------------------------------------------------------------- mutation fuzz

_BASE: dict[str, tuple[bytes, bytes, bytes]] = {}


def _base(compressor: str) -> tuple[bytes, bytes, bytes]:
    if compressor not in _BASE:
        old, new = _pair_bytes(seed=11, size=30_000)
        config = hdiff_format.build_config(compressor)   # what make_patch uses
        _BASE[compressor] = old, new, hdiffpatch.diff(old, new, compression=config)
    return _BASE[compressor]






@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(compressor=st.sampled_from(["lzma", "zstd"]), mutations=mutations(40),
       wrong_old=st.booleans())
def test_mutated_patches_are_refused_or_exact(tmp_path: Path, compressor: str,
                                              mutations: list[Mutation], wrong_old: bool) -> None:
    old, new, patch = _base(compressor)
    d = tmp_path / f"{compressor}-{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    apply_refused_or_exact("hdiffpatch", d, bytes(b ^ 1 for b in old) if wrong_old else old, mutate(patch, mutations), new)


# ----------------------------------------------------------------------------- in the recipes

def test_best_recipes_builds_and_verifies_hdiffpatch(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    attempts: list[deltagen.Attempt] = []
    recipes = deltagen.best_recipes(old, new, tmp_path / "w", DeltaLimits(zstd_level=3, compress_level=3),
                                    attempts)
    names = [a.name for a in attempts]
    assert names.index("hdiffpatch") < names.index("zstd") < names.index("bsdiff4")
    assert attempts[names.index("hdiffpatch")].outcome.startswith("verified")
    assert recipes[0].kind == "patch"
    deltagen.apply_patch(recipes[0].algorithm or "", old, recipes[0].path, tmp_path / "out",
                         new.stat().st_size, blake3_file(new))


def test_hdiffpatch_above_its_cap_is_skipped(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    attempts: list[deltagen.Attempt] = []
    limits = DeltaLimits(zstd_level=3, compress_level=3, hdiffpatch_max_bytes=SIZE // 2)
    recipes = deltagen.best_recipes(old, new, tmp_path / "w", limits, attempts)
    outcomes = {a.name: a.outcome for a in attempts}
    assert outcomes["hdiffpatch"].startswith("skipped: old or new above hdiffpatch_max_bytes")
    assert recipes[0].kind == "patch" and recipes[0].algorithm in ("zstd", "bsdiff4")


def test_limits_name_known_algorithms_only() -> None:
    with pytest.raises(ValueError):
        DeltaLimits(patch_algorithms=("xdelta3",))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DeltaLimits(hdiffpatch_compressor="bzip2")  # type: ignore[arg-type]
    limits = DeltaLimits(patch_algorithms=("zstd", "bsdiff4"))    # only what stock tools read
    assert DeltaLimits.from_dict(json.loads(json.dumps(limits.to_dict()))) == limits  # the build worker's way


def test_hdiffpatch_kept_for_the_fixture_shared_library(tmp_path: Path) -> None:
    """On the fixture product's compiled files HDiffPatch+LZMA is the smallest (docs/deltagen.md)."""
    write_release(tmp_path / "a", 0)
    write_release(tmp_path / "b", 1)
    attempts: list[deltagen.Attempt] = []
    old, new = tmp_path / "a" / "lib" / "libfoo.so.1", tmp_path / "b" / "lib" / "libfoo.so.1"
    recipes = deltagen.best_recipes(old, new, tmp_path / "w", DeltaLimits(), attempts)
    assert recipes[0].kind == "patch" and recipes[0].algorithm == "hdiffpatch", attempts
