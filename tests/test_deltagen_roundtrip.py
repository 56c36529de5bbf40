"""Property: any old/new pair round-trips through every algorithm and the compressed form."""
from __future__ import annotations

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
        for algorithm in deltagen.ALGORITHMS:
            deltagen.make_patch(algorithm, d / "old", d / "new", d / f"p.{algorithm}", limits)
            got = deltagen.apply_patch(algorithm, d / "old", d / f"p.{algorithm}",
                                       d / f"o.{algorithm}", len(new), digest, limits)
            assert got == digest
            assert (d / f"o.{algorithm}").read_bytes() == new
        deltagen.compress_file(d / "new", d / "c", level=3)
        assert deltagen.decompress_file(d / "c", d / "oc", len(new), digest) == digest
