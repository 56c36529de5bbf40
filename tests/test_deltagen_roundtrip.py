"""Property: any old/new pair round-trips through every algorithm and the compressed form."""
from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltagen
from deltagen.digests import blake3_bytes

_edit = st.tuples(st.integers(0, 10_000), st.integers(0, 64), st.binary(max_size=64))


@st.composite
def _pairs(draw: st.DrawFn) -> tuple[bytes, bytes]:
    old = draw(st.binary(max_size=3000)) * draw(st.integers(1, 4))
    if draw(st.booleans()):
        return old, draw(st.binary(max_size=6000))
    new = bytearray(old)
    for at, cut, insert in draw(st.lists(_edit, max_size=8)):
        at = at % (len(new) + 1)
        new[at:at + cut] = insert
    return old, bytes(new)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_pairs())
def test_every_algorithm_round_trips(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    limits = deltagen.DeltaLimits(zstd_level=3)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "old").write_bytes(old)
        (d / "new").write_bytes(new)
        digest = blake3_bytes(new)
        (d / "old.gz").write_bytes(gzip.compress(old, 9, mtime=0))   # what gzip-inner patches
        (d / "new.gz").write_bytes(gzip.compress(new, 9, mtime=0))
        for algorithm in deltagen.ALGORITHMS:
            suffix = ".gz" if algorithm == "gzip-inner" else ""
            want = (d / f"new{suffix}").read_bytes()
            deltagen.make_patch(algorithm, d / f"old{suffix}", d / f"new{suffix}", d / f"p.{algorithm}", limits)
            got = deltagen.apply_patch(algorithm, d / f"old{suffix}", d / f"p.{algorithm}",
                                       d / f"o.{algorithm}", len(want), blake3_bytes(want), limits)
            assert got == blake3_bytes(want)
            assert (d / f"o.{algorithm}").read_bytes() == want
        deltagen.compress_file(d / "new", d / "c", level=3)
        assert deltagen.decompress_file(d / "c", d / "oc", len(new), digest) == digest
