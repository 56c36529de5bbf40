"""The apply paths' hostile-patch checks, one copy for every algorithm: refusals that leave
nothing behind, and byte-level mutations for the fuzz tests (flip a bit, cut the tail,
insert or delete bytes anywhere, or set a byte in the first ``header`` bytes, where the
sizes and counts an apply must check before it allocates are)."""
from __future__ import annotations

import resource
from pathlib import Path

import pytest
from hypothesis import strategies as st

import deltagen
from deltagen import CorruptPatch, DeltaError, DeltaLimits, DigestMismatch, SizeExceeded, SizeMismatch
from deltagen.digests import blake3_bytes

REFUSALS = (CorruptPatch, SizeExceeded, SizeMismatch, DigestMismatch)

Mutation = tuple[str, int, int]


def mutations(header: int) -> st.SearchStrategy[list[Mutation]]:
    """One to four mutations; ``header``: how many leading bytes the 'byte' mutation targets."""
    one = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 30), st.integers(0, 7)),
        st.tuples(st.just("cut"), st.integers(0, 1 << 30), st.just(0)),
        st.tuples(st.just("insert"), st.integers(0, 1 << 30), st.integers(0, 255)),
        st.tuples(st.just("delete"), st.integers(0, 1 << 30), st.integers(1, 16)),
        st.tuples(st.just("byte"), st.integers(0, header), st.integers(0, 255)),
    )
    return st.lists(one, min_size=1, max_size=4)


def mutate(data: bytes, changes: list[Mutation]) -> bytes:
    out = bytearray(data)
    for kind, where, arg in changes:
        at = where % max(len(out), 1)
        if kind == "flip" and out:
            out[at] ^= 1 << arg
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = bytes([arg])
        elif kind == "delete":
            del out[at:at + arg]
        elif kind == "byte" and where < len(out):
            out[where] = arg
    return bytes(out)


def apply_refused_or_exact(algorithm: str, workdir: Path, old: bytes, patch: bytes, new: bytes) -> None:
    """Apply a mutated patch: it is refused with one of deltagen's errors and leaves no output
    and no temporary file, or it gives exactly ``new``; either way without a large allocation."""
    (workdir / "old").write_bytes(old)
    (workdir / "p").write_bytes(patch)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        got = deltagen.apply_patch(algorithm, workdir / "old", workdir / "p", workdir / "out", len(new),
                                   blake3_bytes(new))
    except REFUSALS:
        assert not (workdir / "out").exists()
    else:
        assert got == blake3_bytes(new) and (workdir / "out").read_bytes() == new
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".")] == []
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10   # KiB


def leftovers(directory: Path) -> list[str]:
    """An apply's output or temporary files left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.name == "out")


def refused(algorithm: str, workdir: Path, old: Path, patch: bytes, size: int, digest: str | None,
            error: type[Exception] | tuple[type[Exception], ...], limits: DeltaLimits | None = None) -> DeltaError:
    """Apply ``patch`` (written to ``workdir/p``): it must fail with ``error``, one of
    deltagen's errors, leaving no output and no temporary file."""
    (workdir / "p").write_bytes(patch)
    with pytest.raises(error) as info:
        deltagen.apply_patch(algorithm, old, workdir / "p", workdir / "out", size, digest, limits or DeltaLimits())
    assert leftovers(workdir) == []
    assert isinstance(info.value, DeltaError)
    return info.value
