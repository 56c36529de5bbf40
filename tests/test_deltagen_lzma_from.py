"""lzma-from patches (deltagen/lzma_from.py): made, checked and applied; hostile ones refused.

Hostile patches are built from the format: headers that lie about a size or a dictionary,
unknown flags or props, a stream that decodes to more than the header declares (a bomb),
truncations and trailing bytes, and a mutation fuzz.
"""
from __future__ import annotations

import random
import resource
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from patch_mutations import Mutation, apply_refused_or_exact, leftovers, mutate, mutations, refused

import deltagen
from deltagen import (
    CorruptPatch,
    DeltaError,
    DeltaLimits,
    DigestMismatch,
    SizeExceeded,
    SizeMismatch,
    lzma_from,
    lzma_prefix,
)
from deltagen.digests import blake3_bytes, blake3_file
from deltagen.policy import patch_order, worth_another

REFUSALS = (CorruptPatch, SizeExceeded, SizeMismatch, DigestMismatch)


def _elf_x86(body: bytes) -> bytes:
    """An ELF header naming x86-64 (e_machine 62) in front of ``body``."""
    head = bytearray(64)
    head[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<H", head, 18, 62)
    return bytes(head) + body


def _code(seed: int, size: int) -> bytes:
    """Bytes with x86 near calls (E8 rel32) every few bytes, as compiled code has."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rng.choice([b"\x48\x89\xe5", b"\x55", b"\x31\xc0", b"\xc3", b"\x48\x8b\x45\xf8"])
        if rng.random() < 0.3:
            out += b"\xe8" + struct.pack("<i", rng.randrange(-50_000, 50_000))
    return bytes(out[:size])


def _pair_bytes(x86: bool = True, size: int = 120_000) -> tuple[bytes, bytes]:
    body = _code(1, size)
    new = bytearray(body)
    rng = random.Random(2)
    for _ in range(20):
        at = rng.randrange(size - 100)
        new[at:at + rng.randrange(40)] = rng.randbytes(rng.randrange(60))
    if x86:
        return _elf_x86(body), _elf_x86(bytes(new))
    return b"DATA" + body, b"DATA" + bytes(new)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    old, new = _pair_bytes()
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    return tmp_path / "old", tmp_path / "new"


def _refused(tmp_path: Path, old: Path, patch: bytes, size: int, digest: str | None,
             error: type[Exception] | tuple[type[Exception], ...], limits: DeltaLimits | None = None) -> DeltaError:
    return refused("lzma-from", tmp_path, old, patch, size, digest, error, limits)



def _patch(old: bytes, new: bytes, *, flags: int = 0, props: tuple[int, int, int] = (0, 0, 0),
           old_size: int | None = None, new_size: int | None = None, dict_size: int | None = None,
           encoded: bytes | None = None, reserved: int = 0) -> bytes:
    """An lzma-from patch from parts (the LZMA data of ``encoded`` or ``new``, after ``old``)."""
    lc, lp, pb = props
    old_size = len(old) if old_size is None else old_size
    new_size = len(new) if new_size is None else new_size
    dict_size = max(4096, old_size + new_size) if dict_size is None else dict_size
    out: list[bytes] = []
    lzma_prefix.compress(old, new if encoded is None else encoded, out.append,
                         dict_size=max(4096, len(old) + len(new if encoded is None else encoded)),
                         lc=min(lc, 4), lp=min(lp, 4 - min(lc, 4)), pb=min(pb, 4))
    head = struct.pack("<8sBBIQQH", lzma_from.MAGIC, flags, (pb * 5 + lp) * 9 + lc, dict_size, old_size,
                       new_size, reserved)
    return head + b"".join(out)


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("x86", [True, False])
def test_round_trip_and_format(tmp_path: Path, x86: bool) -> None:
    old, new = _pair_bytes(x86)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    deltagen.make_patch("lzma-from", tmp_path / "old", tmp_path / "new", tmp_path / "p")
    data = (tmp_path / "p").read_bytes()
    header = lzma_from.parse_header(data[:lzma_from.HEADER_SIZE], len(data))
    assert (header.old_size, header.new_size, header.dict_size) == (len(old), len(new), len(old) + len(new))
    assert header.flags == (lzma_from.FLAG_X86 if x86 else 0)
    assert len(data) < len(new) // 4   # it found the old file
    digest = deltagen.apply_patch("lzma-from", tmp_path / "old", tmp_path / "p", tmp_path / "out", len(new),
                                  blake3_bytes(new))
    assert digest == blake3_bytes(new) and (tmp_path / "out").read_bytes() == new


def test_x86_filter_is_used_for_x86_code_only() -> None:
    assert lzma_from.is_x86(_elf_x86(b""))
    arm = bytearray(_elf_x86(b""))
    struct.pack_into("<H", arm, 18, 183)           # aarch64
    assert not lzma_from.is_x86(bytes(arm))
    assert not lzma_from.is_x86(b"MZ" + b"\0" * 100)  # no PE header behind it
    assert not lzma_from.is_x86(b"plain text")


def test_empty_files(tmp_path: Path) -> None:
    for old, new in ((b"", b""), (b"", b"abc" * 100), (b"abc" * 100, b"")):
        (tmp_path / "old").write_bytes(old)
        (tmp_path / "new").write_bytes(new)
        deltagen.make_patch("lzma-from", tmp_path / "old", tmp_path / "new", tmp_path / "p")
        deltagen.apply_patch("lzma-from", tmp_path / "old", tmp_path / "p", tmp_path / "out", len(new),
                             blake3_bytes(new))
        assert (tmp_path / "out").read_bytes() == new


def test_build_over_the_cap_writes_nothing(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    with pytest.raises(SizeExceeded):
        deltagen.make_patch("lzma-from", old, new, tmp_path / "p", DeltaLimits(lzma_from_max_bytes=100_000))
    assert not (tmp_path / "p").exists() and leftovers(tmp_path) == []


def test_cli_diff_and_apply(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    from deltagen.cli import run
    old, new = pair
    assert run(["diff", "--algorithm", "lzma-from", str(old), str(new), str(tmp_path / "p")]) == 0
    assert run(["apply", "--algorithm", "lzma-from", str(old), str(tmp_path / "p"), str(tmp_path / "out"),
                "--blake3", blake3_file(new)]) == 0
    assert (tmp_path / "out").read_bytes() == new.read_bytes()


# ----------------------------------------------------------------------------- hostile patches

def test_header_lies_and_unknown_fields_are_refused(tmp_path: Path) -> None:
    old, new = _pair_bytes(False, 20_000)
    (tmp_path / "old").write_bytes(old)
    size, digest = len(new), blake3_bytes(new)
    cases: list[tuple[bytes, type[Exception], str]] = [
        (b"NOTLZMA!" + _patch(old, new)[8:], CorruptPatch, "bad magic"),
        (_patch(old, new)[:20], CorruptPatch, "truncated"),
        (_patch(old, new, flags=2), CorruptPatch, "unknown flags"),
        (_patch(old, new, reserved=1), CorruptPatch, "unknown flags"),
        (_patch(old, new, props=(4, 1, 0)), CorruptPatch, "lc + lp > 4"),
        (_patch(old, new, dict_size=1 << 31), CorruptPatch, "dictionary"),
        (_patch(old, new, new_size=size + 1), SizeExceeded, "declares"),
        (_patch(old, new, new_size=size - 1), SizeMismatch, "declares"),
        (_patch(old, new, old_size=len(old) - 1), SizeMismatch, "old file of"),
    ]
    for patch, error, words in cases:
        exc = _refused(tmp_path, tmp_path / "old", patch, size, digest, error)
        assert words in str(exc)
    # props byte past the table
    bad = bytearray(_patch(old, new))
    bad[9] = 225
    assert "bad LZMA props" in str(_refused(tmp_path, tmp_path / "old", bytes(bad), size, digest, CorruptPatch))


def test_apply_over_the_cap_is_refused(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    deltagen.make_patch("lzma-from", old, new, tmp_path / "p")
    _refused(tmp_path, old, (tmp_path / "p").read_bytes(), new.stat().st_size, None, SizeExceeded,
             DeltaLimits(lzma_from_max_bytes=100_000))


def test_wrong_old_file_is_refused(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    """A wrong old file of the right size: the decoder desynchronises (corrupt) or the digest differs."""
    old, new = pair
    deltagen.make_patch("lzma-from", old, new, tmp_path / "p")
    patch = (tmp_path / "p").read_bytes()
    (tmp_path / "other").write_bytes(bytes(b ^ 0x55 for b in old.read_bytes()))
    _refused(tmp_path, tmp_path / "other", patch, new.stat().st_size, blake3_file(new),
             (DigestMismatch, CorruptPatch))


def test_truncated_and_padded_patches_are_refused(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    deltagen.make_patch("lzma-from", old, new, tmp_path / "p")
    patch = (tmp_path / "p").read_bytes()
    size, digest = new.stat().st_size, blake3_file(new)
    for cut in sorted({1, 10, lzma_from.HEADER_SIZE, lzma_from.HEADER_SIZE + 1, len(patch) // 2,
                       len(patch) - 5, len(patch) - 1}):
        _refused(tmp_path, old, patch[:cut], size, digest, REFUSALS)
    exc = _refused(tmp_path, old, patch + b"\0" * 7, size, digest, CorruptPatch)
    assert "after the end" in str(exc)


def test_decompression_bomb_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    """The header says 1 KiB; the stream holds 64 MiB of zeros (~10 KB of LZMA)."""
    old = b"o" * 1000
    (tmp_path / "old").write_bytes(old)
    declared = b"\0" * 1024
    patch = _patch(old, declared, encoded=b"\0" * (64 << 20))
    assert len(patch) < 64 << 10
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    exc = _refused(tmp_path, tmp_path / "old", patch, len(declared), blake3_bytes(declared), CorruptPatch)
    assert "more than 1024 bytes" in str(exc)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 << 10   # KiB


def test_stream_ending_short_is_refused(tmp_path: Path) -> None:
    old = b"o" * 1000
    (tmp_path / "old").write_bytes(old)
    new = b"n" * 5000
    patch = _patch(old, new, encoded=new[:4000])   # header says 5000, the stream ends at 4000
    _refused(tmp_path, tmp_path / "old", patch, len(new), blake3_bytes(new), (SizeMismatch, CorruptPatch))


# ----------------------------------------------------------------------------- mutation fuzz

_BASE: list[tuple[bytes, bytes, bytes]] = []


def _base() -> tuple[bytes, bytes, bytes]:
    if not _BASE:
        old, new = _pair_bytes(True, 30_000)
        import tempfile
        with tempfile.TemporaryDirectory() as td:
            (Path(td) / "o").write_bytes(old)
            (Path(td) / "n").write_bytes(new)
            deltagen.make_patch("lzma-from", Path(td) / "o", Path(td) / "n", Path(td) / "p")
            _BASE.append((old, new, (Path(td) / "p").read_bytes()))
    return _BASE[0]






@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(mutations=mutations(40), wrong_old=st.booleans())
def test_mutated_patches_are_refused_or_exact(tmp_path: Path, mutations: list[Mutation],
                                              wrong_old: bool) -> None:
    old, new, patch = _base()
    d = tmp_path / f"m-{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    apply_refused_or_exact("lzma-from", d, bytes(b ^ 1 for b in old) if wrong_old else old, mutate(patch, mutations), new)


# ----------------------------------------------------------------------------- the build policy

def test_policy_builds_lzma_from_only_after_a_poor_executable_patch() -> None:
    limits = DeltaLimits()
    assert patch_order("executable", 10_000, limits)[:2] == ("hdiffpatch", "lzma-from")
    for cls in ("text", "binary", "compressed"):
        assert "lzma-from" not in patch_order(cls, 10_000, limits)  # type: ignore[arg-type]
    assert worth_another("executable", 2_000, 10_000, limits, "lzma-from")       # 20%: poor
    assert not worth_another("executable", 1_000, 10_000, limits, "lzma-from")   # 10%: HDiffPatch keeps it
    assert worth_another("executable", 1_000, 10_000, DeltaLimits(build_policy="exhaustive"), "lzma-from")
    assert "lzma-from" not in patch_order("executable", 10_000, DeltaLimits(patch_algorithms=("zstd", "bsdiff4")))


def test_best_recipes_keeps_lzma_from_where_it_wins(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    old, new = pair
    attempts: list[deltagen.Attempt] = []
    limits = DeltaLimits(zstd_level=3, compress_level=3, build_policy="exhaustive")
    recipes = deltagen.best_recipes(old, new, tmp_path / "w", limits, attempts)
    sizes = {a.name: a.size for a in attempts if a.outcome.startswith(("verified", "dropped: not smaller"))}
    assert "lzma-from" in sizes
    best = min(sizes, key=lambda name: sizes[name] or 1 << 60)
    assert recipes[0].kind == "patch" and recipes[0].algorithm == best
    deltagen.apply_patch(recipes[0].algorithm or "", old, recipes[0].path, tmp_path / "out",
                         new.stat().st_size, blake3_file(new))


def test_an_lzma_from_best_comes_with_a_patch_older_clients_apply(tmp_path: Path) -> None:
    """A client from before lzma-from drops its recipe as unknown: the best patch of the
    algorithms it knows is kept beside it, so it does not fall back to the whole file."""
    from deltagen.recipes import OLDER_CLIENT_ALGORITHMS
    rng = random.Random(5)
    body = bytearray(rng.randbytes(200_000))
    changed = bytearray(body)
    for i in range(0, len(changed), 8):   # a byte in every 8 changed: covers too short for HDiffPatch
        changed[min(i + rng.randrange(8), len(changed) - 1)] = rng.randrange(256)
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(b"\x7fELF" + bytes(body))
    new.write_bytes(b"\x7fELF" + bytes(changed))
    attempts: list[deltagen.Attempt] = []
    limits = DeltaLimits(zstd_level=3, compress_level=3, build_policy="exhaustive")
    recipes = deltagen.best_recipes(old, new, tmp_path / "w", limits, attempts)
    patches = [r for r in recipes if r.kind == "patch"]
    assert [p.algorithm for p in patches][:1] == ["lzma-from"], attempts   # the fixture is one where it wins
    assert len(patches) == 2 and patches[1].algorithm in OLDER_CLIENT_ALGORITHMS
    assert patches[1].size > patches[0].size and patches[1].base == patches[0].base
    for patch in patches:
        deltagen.apply_patch(patch.algorithm or "", old, patch.path, tmp_path / f"out-{patch.algorithm}",
                             new.stat().st_size, blake3_file(new))
    # where an older algorithm is best, nothing extra is kept
    same = deltagen.best_recipes(old, old, tmp_path / "w2", DeltaLimits(compress_level=3))
    assert [r.algorithm for r in same if r.kind == "patch"] in ([], ["hdiffpatch"], ["zstd"], ["bsdiff4"])
