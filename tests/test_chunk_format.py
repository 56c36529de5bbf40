"""Chunk index objects (casformat/chunks.py) and the chunked manifest entry: pure checks."""
from __future__ import annotations

import os
import struct

import pytest

from casformat.chunks import (
    ENTRY_SIZE,
    HEADER_SIZE,
    MAX_CHUNKS,
    ChunkIndexError,
    ChunkParams,
    encode_header,
    encode_index,
    parse_index,
)
from casformat.manifests import manifest_problems
from deltagen.chunker import chunk_file
from deltagen.digests import StreamHasher, blake3_raw, file_digest

PARAMS = ChunkParams(1024, 4096, 16384)


def index_of(lengths: list[int], params: ChunkParams = PARAMS) -> bytes:
    return encode_index(params, [(blake3_raw(str(i).encode()), n) for i, n in enumerate(lengths)])


def test_round_trip_offsets_are_running_sums() -> None:
    data = index_of([2000, 5000, 300])
    index = parse_index(data, 7300)
    assert index.count == 3 and index.params == PARAMS
    assert [(o, n) for _, o, n in index] == [(0, 2000), (2000, 5000), (7000, 300)]
    assert index.chunk_at(0) == 0 and index.chunk_at(1999) == 0 and index.chunk_at(2000) == 1
    assert index.chunk_at(7299) == 2
    assert index.to_bytes() == data
    assert len(data) == HEADER_SIZE + 3 * ENTRY_SIZE


@pytest.mark.parametrize("mutate, size, message", [
    (lambda d: b"NOTCHUNK" + d[8:], 7300, "bad magic"),
    (lambda d: d[:7] + b"\x02" + d[8:], 7300, "version 2"),
    (lambda d: d[:-1], 7300, "truncated"),
    (lambda d: d[:10], 7300, "truncated"),
    (lambda d: d + b"\0", 7300, "after its 3 chunks"),
    (lambda d: d, 7301, "covers 7300 bytes"),
    (lambda d: d, 7299, "more than the signed"),
    (lambda d: d, 100, "at most"),        # 3 chunks cannot make a 100-byte file with min 1024
])
def test_hostile_indexes_are_refused(mutate, size: int, message: str) -> None:
    with pytest.raises(ChunkIndexError, match=message):
        parse_index(mutate(index_of([2000, 5000, 300])), size)


def test_chunk_lengths_are_bounded() -> None:
    with pytest.raises(ChunkIndexError, match="0 bytes"):
        parse_index(index_of([2000, 0, 300]), 2300)
    with pytest.raises(ChunkIndexError, match="16385 bytes"):
        parse_index(index_of([16385]), 16385)
    with pytest.raises(ChunkIndexError, match="below the minimum"):
        parse_index(index_of([500, 2000]), 2500)      # only the last chunk may be short
    with pytest.raises(ChunkIndexError, match="settings"):
        parse_index(index_of([2000], ChunkParams(8, 4, 2)), 2000)
    with pytest.raises(ChunkIndexError, match="no chunks"):
        parse_index(index_of([]), 10)


def test_endless_chunk_list_is_refused_before_reading_it() -> None:
    # A header claiming more chunks than any file may have: refused on the count alone.
    header = encode_header(ChunkParams(64, 64, 1024), MAX_CHUNKS + 1)
    with pytest.raises(ChunkIndexError, match="claims"):
        parse_index(header + b"\0" * ENTRY_SIZE, 1 << 40)
    # A count that fits the cap but not the signed size.
    with pytest.raises(ChunkIndexError, match="claims 1000 chunks"):
        parse_index(encode_header(PARAMS, 1000) + b"\0" * (1000 * ENTRY_SIZE), 5000)
    # Lengths summing past the signed size stop at the first chunk beyond it.
    big = struct.pack(">32sI", b"\1" * 32, 16384) * 10
    with pytest.raises(ChunkIndexError, match="more than the signed"):
        parse_index(encode_header(PARAMS, 10) + big, 16384 * 3)


def entry(**chunks) -> dict:
    return {"path": "disk.img", "type": "file", "mode": 0o644, "size": 100_000, "blake3": "a" * 64,
            "sha256": "b" * 64, "chunks": chunks}


def signed(*files) -> dict:
    return {"schema": 1, "product": "app", "version": "1.0", "created": "2026-01-01T00:00:00Z",
            "files": list(files)}


def test_manifest_entry_with_chunks() -> None:
    good = entry(index="c" * 64, size=HEADER_SIZE + 5 * ENTRY_SIZE)
    assert manifest_problems(signed(good)) == []
    assert any("chunks must be exactly" in p for p in manifest_problems(signed(entry(index="c" * 64))))
    assert any("64 lowercase" in p for p in manifest_problems(signed(entry(index="C" * 64, size=60))))
    assert any("multiple of" in p for p in manifest_problems(signed(entry(index="c" * 64, size=61))))
    too_many = entry(index="c" * 64, size=HEADER_SIZE + 100_000 * ENTRY_SIZE)
    assert any("more chunks than" in p for p in manifest_problems(signed(too_many)))
    assert any("fields must be exactly" in p
               for p in manifest_problems(signed({**good, "chunkz": 1})))


def test_fastcdc_chunks_parse_and_cover_the_file(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(3 << 20) + bytes(1 << 20) + os.urandom(777))
    whole = StreamHasher(sha256=True)
    chunks = list(chunk_file(path, 16 << 10, 64 << 10, 256 << 10, whole))
    assert (whole.blake3, whole.sha256, whole.size) == tuple(file_digest(path).__dict__.values())
    index = parse_index(encode_index(ChunkParams(16 << 10, 64 << 10, 256 << 10),
                                     [(c.blake3, c.length) for c in chunks]), whole.size)
    data = path.read_bytes()
    for digest, offset, length in index:
        assert blake3_raw(data[offset:offset + length]).hex() == digest
    # An edit in the middle changes only the chunks around it (content-defined boundaries).
    edited = tmp_path / "g"
    edited.write_bytes(data[:1 << 20] + b"x" * 100 + data[1 << 20:])
    again = {c.blake3 for c in chunk_file(edited, 16 << 10, 64 << 10, 256 << 10)}
    assert len({c.blake3 for c in chunks} - again) <= 3
