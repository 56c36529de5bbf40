"""gzip-inner patches (deltagen/gzip_inner.py): made, checked and applied; hostile ones refused.

Targets are gzip files made by GNU ``gzip -9n`` (ends its DEFLATE blocks where zlib would
not: the recorded block ends reproduce them) and by Python's ``gzip`` module.  Hostile
patches are built from the format: zlib parameters out of range, gzip headers that lie,
block ends out of order or past the size, absurd counts, declared sizes that lie, wrong or
bomb old files, truncations, and a mutation fuzz.
"""
from __future__ import annotations

import gzip
import random
import resource
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from patch_mutations import Mutation, apply_refused_or_exact, leftovers, mutate, mutations, refused

import deltagen
from deltagen import CorruptPatch, DeltaError, DeltaLimits, DigestMismatch, SizeExceeded, SizeMismatch, gzip_inner
from deltagen.bundles import bundle_candidates
from deltagen.cli import run
from deltagen.digests import blake3_bytes, blake3_file
from deltagen.policy import patch_order, worth_another
from deltagen.recipes import OLDER_CLIENT_ALGORITHMS, Attempt, best_recipes

REFUSALS = (CorruptPatch, SizeExceeded, SizeMismatch, DigestMismatch)
PHRASES = ["".join(random.Random(n).choice("abcdefghijklmnopqrstuvwxyz    ") for _ in range(20 + n % 40))
           for n in range(300)]


def changelog(seed: int, lines: int) -> bytes:
    """Lines of a short random word and one of 300 "phrases" (runs of one letter or space,
    20-59 long): many literals between matches, on which GNU gzip ends DEFLATE blocks
    early (its "is it profitable to end the block here" check every 4096 symbols) where
    zlib does not, and long hash chains (the runs)."""
    rng = random.Random(seed)
    return "".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(2, 6)))
                   + rng.choice(PHRASES) + "\n" for _ in range(lines)).encode()


def gnu_gzip(data: bytes) -> bytes:
    gz = shutil.which("gzip")
    assert gz, "GNU gzip is needed (Debian's gzip package; .ci/run installs it)"
    return subprocess.run([gz, "-9n"], input=data, capture_output=True, check=True).stdout


def python_gzip(data: bytes, name: str = "changelog") -> bytes:
    import io
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buf, compresslevel=9, mtime=1_700_000_000) as fh:
        fh.write(data)
    return buf.getvalue()


OLD_TEXT = changelog(1, 3000)
NEW_TEXT = changelog(2, 60) + OLD_TEXT   # an entry prepended, as every Debian upload does


@pytest.fixture(params=["gnu", "python"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    make = gnu_gzip if request.param == "gnu" else python_gzip
    (tmp_path / "old.gz").write_bytes(make(OLD_TEXT))
    (tmp_path / "new.gz").write_bytes(make(NEW_TEXT))
    return tmp_path / "old.gz", tmp_path / "new.gz"



def _apply(d: Path, old: Path, patch: bytes, new: bytes, limits: DeltaLimits | None = None) -> str:
    (d / "p").write_bytes(patch)
    return deltagen.apply_patch("gzip-inner", old, d / "p", d / "out", len(new), blake3_bytes(new),
                                limits or DeltaLimits())


def _refused(d: Path, old: Path, patch: bytes, new: bytes, error: type[Exception] | tuple[type[Exception], ...],
             limits: DeltaLimits | None = None) -> DeltaError:
    return refused("gzip-inner", d, old, patch, len(new), blake3_bytes(new), error, limits)



def _parts(patch: bytes) -> tuple[list[int], bytes, list[int], bytes]:
    """(header fields, gzip header, block ends, inner patch) of a patch."""
    fields = list(struct.unpack_from("<8sBBBBQQQII", patch))
    at = gzip_inner.HEADER_SIZE
    gz = patch[at:at + fields[8]]
    at += fields[8]
    ends = list(struct.unpack_from(f"<{fields[9]}Q", patch, at))
    return fields, gz, ends, patch[at + 8 * fields[9]:]


def _pack(fields: list[int], gz: bytes, ends: list[int], inner: bytes) -> bytes:
    return struct.pack("<8sBBBBQQQII", *fields) + gz + struct.pack(f"<{len(ends)}Q", *ends) + inner


# ----------------------------------------------------------------------------- feasibility, round trips

def test_gnu_gzip_ends_blocks_where_zlib_does_not_and_the_recorded_ends_reproduce_it(tmp_path: Path) -> None:
    """Without the block ends zlib's output differs from GNU gzip's on a multi-block file."""
    data = gnu_gzip(NEW_TEXT)
    (tmp_path / "new.gz").write_bytes(data)
    with open(tmp_path / "inner", "wb") as out:
        layout = gzip_inner.inflate_with_blocks(tmp_path / "new.gz", out, 1 << 30)
    assert (tmp_path / "inner").read_bytes() == NEW_TEXT and layout.inner_size == len(NEW_TEXT)
    assert len(layout.ends) >= 2 and layout.header == data[:10]
    for mem_level in (8, 9):
        plain = zlib.compressobj(9, zlib.DEFLATED, -15, mem_level)
        assert plain.compress(NEW_TEXT) + plain.flush() != data[10:-8]
        assert not gzip_inner._reproduces(tmp_path / "inner", tmp_path / "new.gz", layout, 6, mem_level)
    # memLevel 8 has gzip's 15-bit hash (the same hash chains); 9 has its 32767-symbol
    # blocks.  This file's blocks are short enough for 8; its long chains need the 15-bit hash
    assert gzip_inner._reproduces(tmp_path / "inner", tmp_path / "new.gz", layout, 9, 8)
    assert not gzip_inner._reproduces(tmp_path / "inner", tmp_path / "new.gz", layout, 9, 9)


def test_round_trip_and_format(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    deltagen.make_patch("gzip-inner", old, new, tmp_path / "p")
    patch = (tmp_path / "p").read_bytes()
    header = gzip_inner.parse_header(patch[:gzip_inner.HEADER_SIZE], len(patch))
    assert (header.old_size, header.inner_size, header.new_size) == (len(OLD_TEXT), len(NEW_TEXT),
                                                                   new.stat().st_size)
    assert header.level == 9 and header.inner in ("zstd", "hdiffpatch")
    fields, gz, ends, inner = _parts(patch)
    assert gz == new.read_bytes()[:len(gz)] and ends == sorted(set(ends))
    # the whole point: far below a patch of the compressed bytes
    deltagen.make_patch("hdiffpatch", old, new, tmp_path / "h")
    assert len(patch) * 10 < (tmp_path / "h").stat().st_size
    got = deltagen.apply_patch("gzip-inner", old, tmp_path / "p", tmp_path / "out", new.stat().st_size,
                               blake3_file(new))
    assert got == blake3_file(new) and (tmp_path / "out").read_bytes() == new.read_bytes()
    assert leftovers(tmp_path) == ["out"]


def test_gzip_header_is_kept_verbatim(tmp_path: Path) -> None:
    """Name, comment, extra field, mtime and OS byte come back as they were."""
    body = zlib.compressobj(9, zlib.DEFLATED, -15, 8)
    deflate = body.compress(NEW_TEXT) + body.flush()
    head = (b"\x1f\x8b\x08" + bytes([4 | 8 | 16]) + struct.pack("<I", 123456) + b"\x02\x03"
            + struct.pack("<H", 5) + b"extra" + b"name.txt\0" + b"a comment\0")
    new = head + deflate + struct.pack("<II", zlib.crc32(NEW_TEXT), len(NEW_TEXT))
    (tmp_path / "old.gz").write_bytes(python_gzip(OLD_TEXT))
    (tmp_path / "new.gz").write_bytes(new)
    deltagen.make_patch("gzip-inner", tmp_path / "old.gz", tmp_path / "new.gz", tmp_path / "p")
    _, gz, _, _ = _parts((tmp_path / "p").read_bytes())
    assert gz == head
    assert _apply(tmp_path, tmp_path / "old.gz", (tmp_path / "p").read_bytes(), new) == blake3_bytes(new)


@pytest.mark.parametrize("what", ["level0", "multi-member", "trailing", "bad-crc", "not-gzip", "full-flush"])
def test_targets_it_cannot_reproduce_get_no_patch(tmp_path: Path, what: str) -> None:
    good = python_gzip(NEW_TEXT)
    if what == "level0":   # stored blocks: no level 1..9 gives them
        new = gzip.compress(NEW_TEXT, compresslevel=0)
    elif what == "multi-member":
        new = good + python_gzip(b"second member")
    elif what == "trailing":
        new = good + b"\0\0\0\0"
    elif what == "bad-crc":
        new = good[:-8] + struct.pack("<II", 1234, len(NEW_TEXT))
    elif what == "not-gzip":
        new = NEW_TEXT
    else:   # an empty stored block after a Z_FULL_FLUSH in the middle
        c = zlib.compressobj(9, zlib.DEFLATED, -15, 8)
        deflate = c.compress(NEW_TEXT[:5000]) + c.flush(zlib.Z_FULL_FLUSH) + c.compress(NEW_TEXT[5000:]) + c.flush()
        new = good[:10] + deflate + good[-8:]
    (tmp_path / "old.gz").write_bytes(python_gzip(OLD_TEXT))
    (tmp_path / "new.gz").write_bytes(new)
    with pytest.raises(DeltaError):
        deltagen.make_patch("gzip-inner", tmp_path / "old.gz", tmp_path / "new.gz", tmp_path / "p")
    assert not (tmp_path / "p").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_build_stops_at_gzip_inner_max_bytes(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    limits = DeltaLimits(gzip_inner_max_bytes=100_000)
    with pytest.raises(SizeExceeded, match="gzip_inner_max_bytes"):
        deltagen.make_patch("gzip-inner", old, new, tmp_path / "p", limits)
    assert not (tmp_path / "p").exists()
    attempts: list[Attempt] = []   # best_recipes skips it from the trailers' sizes
    best_recipes(old, new, tmp_path / "w", limits, attempts)
    assert [a.outcome for a in attempts if a.name == "gzip-inner"] == [
        "skipped: uncompressed size above gzip_inner_max_bytes (100000)"], attempts


def test_scratch_falls_back_to_the_temporary_directory(tmp_path: Path) -> None:
    """Apply's temporary files go beside the patch, or where the system keeps them when
    that directory cannot take them."""
    with gzip_inner._scratch(tmp_path / "p") as beside:
        assert beside.parent == tmp_path and beside.is_dir()
    with gzip_inner._scratch(tmp_path / "missing" / "p") as elsewhere:
        assert elsewhere.parent == Path(tempfile.gettempdir()) and elsewhere.is_dir()
    assert not beside.exists() and not elsewhere.exists()


def test_large_writes_are_recompressed_a_piece_at_a_time(tmp_path: Path) -> None:
    """One write of several MiB (HDiffPatch's apply hands over the whole file) comes back
    as pieces of at most ~1 MiB of input each, the same bytes as one zlib pass."""
    data = changelog(3, 100_000)
    assert len(data) > 3 * gzip_inner.CHUNK
    pieces: list[bytes] = []
    deflater = gzip_inner.Deflater(9, 8, 0, [], pieces.append)
    deflater.write(data)
    deflater.finish()
    plain = zlib.compressobj(9, zlib.DEFLATED, -15, 8)
    assert b"".join(pieces) == plain.compress(data) + plain.flush() + struct.pack("<II", zlib.crc32(data), len(data))
    assert len(pieces) > 3


def test_cli_diff_and_apply_without_a_size(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    assert run(["diff", "--algorithm", "gzip-inner", str(old), str(new), str(tmp_path / "p")]) == 0
    assert run(["apply", "--algorithm", "gzip-inner", str(old), str(tmp_path / "p"), str(tmp_path / "out"),
                "--blake3", blake3_file(new)]) == 0
    assert (tmp_path / "out").read_bytes() == new.read_bytes()


# ----------------------------------------------------------------------------- hostile patches and bases

@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, bytes]:
    d = tmp_path_factory.mktemp("gzip-inner")
    (d / "old.gz").write_bytes(gnu_gzip(OLD_TEXT))
    new = gnu_gzip(NEW_TEXT)
    (d / "new.gz").write_bytes(new)
    deltagen.make_patch("gzip-inner", d / "old.gz", d / "new.gz", d / "p")
    return d / "old.gz", new, (d / "p").read_bytes()


# index into the header fields: 1 inner, 2 level, 3 memLevel, 4 strategy, 5 old size, 6 inner size,
# 7 new size, 8 gzip header size, 9 block count
HOSTILE_FIELDS = [
    (1, 0), (1, 3), (1, 255), (2, 0), (2, 10), (3, 0), (3, 10), (4, 5), (4, 255),
    (8, 0), (8, 9), (8, 70_000), (8, 1 << 31), (9, 1 << 31), (9, (1 << 32) - 1), (9, 1 << 20), (9, (1 << 20) + 1),
    (6, 0), (6, 1 << 62), (5, 1 << 62), (5, 0), (7, 1 << 40),
]


@pytest.mark.parametrize(("field", "value"), HOSTILE_FIELDS)
def test_hostile_header_values_are_refused(tmp_path: Path, made: tuple[Path, bytes, bytes], field: int,
                                           value: int) -> None:
    old, new, patch = made
    fields, gz, ends, inner = _parts(patch)
    fields[field] = value
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _refused(tmp_path, old, struct.pack("<8sBBBBQQQII", *fields) + patch[gzip_inner.HEADER_SIZE:], new, REFUSALS)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10   # KiB


def test_declared_sizes_are_checked_before_anything_is_decompressed(tmp_path: Path,
                                                                    made: tuple[Path, bytes, bytes]) -> None:
    old, new, patch = made
    fields, gz, ends, inner = _parts(patch)
    exc = _refused(tmp_path, old, patch, new, SizeExceeded, DeltaLimits(gzip_inner_max_bytes=len(NEW_TEXT) - 1))
    assert "gzip_inner_max_bytes" in str(exc)
    declared = fields[6]
    fields[6] = gzip_inner.DEFLATE_MAX_RATIO * len(new) + 1   # within the cap, more than DEFLATE can hold
    assert fields[6] < DeltaLimits().gzip_inner_max_bytes
    exc = _refused(tmp_path, old, _pack(fields, gz, ends, inner), new, CorruptPatch)
    assert "more than DEFLATE can hold" in str(exc)
    fields[6] = declared
    fields[7] += 1
    _refused(tmp_path, old, _pack(fields, gz, ends, inner), new, SizeExceeded)   # more than expected
    fields[7] -= 2
    _refused(tmp_path, old, _pack(fields, gz, ends, inner), new, SizeMismatch)


@pytest.mark.parametrize("ends_of", ["reversed", "duplicate", "zero", "at-size", "past-size"])
def test_block_ends_out_of_order_or_range_are_refused(tmp_path: Path, made: tuple[Path, bytes, bytes],
                                                      ends_of: str) -> None:
    old, new, patch = made
    fields, gz, ends, inner = _parts(patch)
    assert len(ends) >= 2
    bad = {"reversed": ends[::-1], "duplicate": [ends[0], *ends], "zero": [0, *ends[1:]],
           "at-size": [*ends[:-1], len(NEW_TEXT)], "past-size": [*ends[:-1], 1 << 60]}[ends_of]
    fields[9] = len(bad)
    exc = _refused(tmp_path, old, _pack(fields, gz, bad, inner), new, CorruptPatch)
    assert "block end" in str(exc)


def test_a_lying_gzip_header_is_refused(tmp_path: Path, made: tuple[Path, bytes, bytes]) -> None:
    old, new, patch = made
    fields, gz, ends, inner = _parts(patch)
    for bad in (b"\x1f\x8b\x07" + gz[3:], gz[:3] + b"\x08" + gz[4:], gz[:3] + b"\x80" + gz[4:], b"x" * 10):
        exc = _refused(tmp_path, old, _pack(fields, bad, ends, inner), new, CorruptPatch)
        assert "gzip header" in str(exc)
    longer = gz + b"\0"   # flags say 10 bytes, the field 11
    fields[8] = len(longer)
    _refused(tmp_path, old, _pack(fields, longer, ends, inner), new, CorruptPatch)


def test_truncated_and_padded_patches_are_refused(tmp_path: Path, made: tuple[Path, bytes, bytes]) -> None:
    old, new, patch = made
    for cut in sorted({1, 8, gzip_inner.HEADER_SIZE - 1, gzip_inner.HEADER_SIZE, gzip_inner.HEADER_SIZE + 5,
                       len(patch) // 2, len(patch) - 5, len(patch) - 1}):
        _refused(tmp_path, old, patch[:cut], new, REFUSALS)
    _refused(tmp_path, old, patch + b"\0" * 7, new, REFUSALS)
    _refused(tmp_path, old, b"DGLZFROM" + patch[8:], new, CorruptPatch)


@pytest.mark.parametrize("base", ["other-gzip", "plain", "truncated", "multi-member", "corrupt", "bomb", "empty"])
def test_wrong_old_files_are_refused(tmp_path: Path, made: tuple[Path, bytes, bytes], base: str) -> None:
    old, new, patch = made
    good = old.read_bytes()
    data = {"other-gzip": gnu_gzip(OLD_TEXT[:-1] + b"!"), "plain": OLD_TEXT, "truncated": good[:len(good) // 2],
            "multi-member": good + good, "corrupt": good[:100] + bytes(b ^ 0x55 for b in good[100:200]) + good[200:],
            "bomb": gzip.compress(b"\0" * (256 << 20), 9), "empty": b""}[base]
    (tmp_path / "old").write_bytes(data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _refused(tmp_path, tmp_path / "old", patch, new, REFUSALS)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10   # KiB: streamed, bounded


def test_an_inner_patch_that_makes_more_than_declared_is_refused(tmp_path: Path,
                                                                 made: tuple[Path, bytes, bytes]) -> None:
    old, new, patch = made
    fields, gz, ends, inner = _parts(patch)
    fields[6] = len(NEW_TEXT) - 1000   # the inner patch makes 1000 bytes more than this
    _refused(tmp_path, old, _pack(fields, gz, [e for e in ends if e < fields[6]], inner), new, REFUSALS)


# ----------------------------------------------------------------------------- mutation fuzz





@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(mutations=mutations(80), wrong_old=st.booleans())
def test_mutated_patches_are_refused_or_exact(tmp_path: Path, made: tuple[Path, bytes, bytes],
                                              mutations: list[Mutation], wrong_old: bool) -> None:
    old, new, patch = made
    d = tmp_path / f"m-{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    apply_refused_or_exact("gzip-inner", d, gnu_gzip(OLD_TEXT[::-1]) if wrong_old else old.read_bytes(), mutate(patch, mutations), new)


# ----------------------------------------------------------------------------- the build policy

def test_policy_builds_gzip_inner_after_hdiffpatch_for_gzip_pairs() -> None:
    limits = DeltaLimits()
    assert patch_order("compressed", 10_000, limits)[:2] == ("hdiffpatch", "gzip-inner")
    assert worth_another("compressed", 10, 10_000, limits, "gzip-inner")   # whatever HDiffPatch kept
    assert not worth_another("compressed", 9_000, 10_000, limits, "zstd")
    assert "gzip-inner" not in patch_order("compressed", 10_000, DeltaLimits(patch_algorithms=("zstd", "bsdiff4")))
    assert "gzip-inner" not in OLDER_CLIENT_ALGORITHMS


def test_best_recipes_keeps_gzip_inner_and_a_patch_older_clients_apply(tmp_path: Path,
                                                                        pair: tuple[Path, Path]) -> None:
    old, new = pair
    attempts: list[Attempt] = []
    recipes = best_recipes(old, new, tmp_path / "w", attempts=attempts)
    patches = [r for r in recipes if r.kind == "patch"]
    hdiff = [a for a in attempts if a.name == "hdiffpatch"][0]
    if hdiff.outcome.startswith("verified"):   # smaller than the file: kept for older clients
        assert [p.algorithm for p in patches] == ["gzip-inner", "hdiffpatch"], attempts
        assert patches[0].size * 10 < patches[1].size
    else:   # no better than the file itself: older clients get that
        assert hdiff.outcome == "dropped: not smaller than the alternatives", attempts
        assert [p.algorithm for p in patches] == ["gzip-inner"], attempts
    assert patches[0].size * 10 < new.stat().st_size
    for patch in patches:
        deltagen.apply_patch(patch.algorithm or "", old, patch.path, tmp_path / f"out-{patch.algorithm}",
                             new.stat().st_size, blake3_file(new))


def test_best_recipes_leaves_gzip_inner_out_for_other_files(tmp_path: Path) -> None:
    rng = random.Random(5)
    old = b"PK\x03\x04" + rng.randbytes(20_000)
    (tmp_path / "old.zip").write_bytes(old)
    (tmp_path / "new.zip").write_bytes(old[:10_000] + rng.randbytes(100) + old[10_000:])
    (tmp_path / "new.gz").write_bytes(python_gzip(NEW_TEXT))
    (tmp_path / "old.txt").write_bytes(OLD_TEXT)
    for old_path, new_path in ((tmp_path / "old.zip", tmp_path / "new.zip"), (tmp_path / "old.zip", tmp_path / "new.gz"),
                               (tmp_path / "old.txt", tmp_path / "new.gz")):
        attempts: list[Attempt] = []
        best_recipes(old_path, new_path, tmp_path / "w", attempts=attempts)
        assert "hdiffpatch" in [a.name for a in attempts]
        assert "gzip-inner" not in [a.name for a in attempts], attempts   # not even listed as skipped


def test_files_whose_offer_is_gzip_inner_join_no_bundle() -> None:
    def f(n: int, algorithm: str) -> dict[str, object]:
        return {"target": f"{n:064x}", "path": f"usr/share/man/man1/p{n}.1.gz", "size": 5_000,
                "base": f"{n + 100:064x}", "base_size": 5_000, "best_size": 94 if algorithm == "gzip-inner" else 4_900,
                "best_algorithm": algorithm}
    files = [f(1, "gzip-inner"), f(2, "gzip-inner"), f(3, "hdiffpatch"), f(4, "hdiffpatch")]
    chosen = {t for c in bundle_candidates(files, DeltaLimits()) for t in c.targets}
    assert chosen == {files[2]["target"], files[3]["target"]}
    exhaustive = {t for c in bundle_candidates(files, DeltaLimits(build_policy="exhaustive")) for t in c.targets}
    assert exhaustive == {x["target"] for x in files}
