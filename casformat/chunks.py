"""Chunk index objects: the content-defined chunks of one large file (pure, no I/O).

A chunked file's manifest entry keeps the whole file's size, BLAKE3 and SHA-256 (what
is signed does not change) and names its chunk index object::

    {"path": ..., "type": "file", "mode": ..., "size": N, "blake3": ..., "sha256": ...,
     "chunks": {"index": "<blake3 of the index object>", "size": <bytes of the index object>}}

The index object is binary (docs/http-api.md, "Chunked files")::

    magic     8 bytes  b"DCASCHK" + version byte 1
    min       u32 big-endian  the chunker's minimum chunk size
    avg       u32             its average (FastCDC's avg_size)
    max       u32             its maximum
    count     u32             number of chunks
    count x   32 bytes raw BLAKE3 of the chunk, u32 chunk length

Offsets are the running sum of the lengths, so overlapping, out-of-order or missing
ranges cannot be written.  ``parse_index`` is given the signed whole-file size and
refuses anything that does not describe exactly those bytes.  The parsed index keeps
the raw entry bytes and one offset array (8 bytes per chunk), never a Python object per
chunk: a 4 GiB file's index is ~2 MiB and parses into ~2.5 MiB.
"""
from __future__ import annotations

import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .errors import DocumentError

MAGIC = b"DCASCHK\x01"
HEADER = struct.Struct(">8sIIII")
ENTRY = struct.Struct(">32sI")
HEADER_SIZE = HEADER.size          # 24
ENTRY_SIZE = ENTRY.size            # 36
MIN_CHUNK_FLOOR = 64               # no chunker setting below this is accepted
MAX_CHUNK_BYTES = 16 << 20         # nor a maximum chunk above this (FastCDC's own limit)
MAX_CHUNKS = 1 << 21               # hard cap: ~75 MiB of index, 32 GiB+ of file at 16 KiB chunks
MAX_INDEX_BYTES = HEADER_SIZE + MAX_CHUNKS * ENTRY_SIZE


class ChunkIndexError(DocumentError):
    """A chunk index that does not describe the signed file exactly."""


@dataclass(frozen=True)
class ChunkParams:
    """FastCDC settings (bytes); stored in every index so a client chunks its local files alike."""

    min_size: int
    avg_size: int
    max_size: int

    def problems(self) -> list[str]:
        out = []
        if not MIN_CHUNK_FLOOR <= self.min_size <= self.avg_size <= self.max_size <= MAX_CHUNK_BYTES:
            out.append(f"chunk sizes must satisfy {MIN_CHUNK_FLOOR} <= min <= avg <= max <= {MAX_CHUNK_BYTES}")
        return out


class ChunkIndex:
    """A parsed, checked chunk index: chunk ``i`` is bytes ``[offset(i), offset(i) + length(i))``."""

    def __init__(self, params: ChunkParams, entries: bytes, file_size: int) -> None:
        self.params = params
        self._entries = entries
        self.file_size = file_size
        self.count = len(entries) // ENTRY_SIZE
        self._offsets = array("Q")
        total = 0
        for i in range(self.count):
            self._offsets.append(total)
            total += self.length(i)

    def raw_digest(self, i: int) -> bytes:
        start = i * ENTRY_SIZE
        return self._entries[start:start + 32]

    def digest(self, i: int) -> str:
        return self.raw_digest(i).hex()

    def length(self, i: int) -> int:
        start = i * ENTRY_SIZE + 32
        return int.from_bytes(self._entries[start:start + 4], "big")

    def offset(self, i: int) -> int:
        return self._offsets[i]

    def __iter__(self) -> Iterator[tuple[str, int, int]]:
        """(blake3 hex, offset, length) of every chunk in file order."""
        for i in range(self.count):
            yield self.digest(i), self._offsets[i], self.length(i)

    def digests(self) -> list[str]:
        """Every distinct chunk digest, in first-use order."""
        return list(dict.fromkeys(self.digest(i) for i in range(self.count)))

    def chunk_at(self, position: int) -> int:
        """The chunk holding byte ``position`` (0 <= position < file_size)."""
        if not 0 <= position < self.file_size:
            raise IndexError(position)
        return bisect_right(self._offsets, position) - 1

    def to_bytes(self) -> bytes:
        return encode_header(self.params, self.count) + self._entries


def encode_header(params: ChunkParams, count: int) -> bytes:
    return HEADER.pack(MAGIC, params.min_size, params.avg_size, params.max_size, count)


def encode_entry(blake3_raw: bytes, length: int) -> bytes:
    if len(blake3_raw) != 32:
        raise ValueError("a chunk digest is 32 raw bytes")
    return ENTRY.pack(blake3_raw, length)


def encode_index(params: ChunkParams, chunks: Iterable[tuple[bytes, int]]) -> bytes:
    """The index object of ``chunks`` ((raw BLAKE3, length) in file order)."""
    body = b"".join(encode_entry(d, n) for d, n in chunks)
    return encode_header(params, len(body) // ENTRY_SIZE) + body


def max_chunks_for(file_size: int, min_size: int) -> int:
    """The most chunks a file of ``file_size`` can have with this minimum (all but the last
    are at least ``min_size``), within the hard cap."""
    return min(MAX_CHUNKS, file_size // max(min_size, 1) + 1)


def check_index_size(index_size: int, file_size: int) -> list[str]:
    """What is wrong with a declared index size for a file of ``file_size`` (before any fetch)."""
    if not HEADER_SIZE <= index_size <= MAX_INDEX_BYTES or (index_size - HEADER_SIZE) % ENTRY_SIZE:
        return [f"chunk index size must be {HEADER_SIZE} + a multiple of {ENTRY_SIZE}, "
                f"at most {MAX_INDEX_BYTES}"]
    if (index_size - HEADER_SIZE) // ENTRY_SIZE > max_chunks_for(file_size, MIN_CHUNK_FLOOR):
        return ["chunk index lists more chunks than the file's size allows"]
    return []


def parse_index(data: bytes, file_size: int) -> ChunkIndex:
    """Check an index object against the signed ``file_size``; ChunkIndexError on any fault:
    wrong magic or version, bad chunker settings, a count above what the size allows or the
    hard cap, truncated or trailing bytes, a zero, undersized or oversized chunk, lengths that
    do not add up to ``file_size``."""
    if not isinstance(file_size, int) or file_size < 0:
        raise ChunkIndexError("file size must be a non-negative integer")
    if len(data) < HEADER_SIZE:
        raise ChunkIndexError(f"chunk index truncated: {len(data)} bytes, the header alone is {HEADER_SIZE}")
    magic, min_size, avg_size, max_size, count = HEADER.unpack_from(data)
    if magic[:7] != MAGIC[:7]:
        raise ChunkIndexError("not a chunk index (bad magic)")
    if magic != MAGIC:
        raise ChunkIndexError(f"unsupported chunk index version {magic[7]}")
    params = ChunkParams(min_size, avg_size, max_size)
    if params.problems():
        raise ChunkIndexError("bad chunk index settings", detail=params.problems())
    limit = max_chunks_for(file_size, min_size)
    if count > limit:
        raise ChunkIndexError(f"chunk index claims {count} chunks; a {file_size}-byte file has at most {limit}")
    expected = HEADER_SIZE + count * ENTRY_SIZE
    if len(data) < expected:
        raise ChunkIndexError(f"chunk index truncated: {len(data)} bytes for {count} chunks ({expected})")
    if len(data) > expected:
        raise ChunkIndexError(f"chunk index has {len(data) - expected} bytes after its {count} chunks")
    if count == 0 and file_size != 0:
        raise ChunkIndexError("chunk index lists no chunks for a non-empty file")
    entries = bytes(data[HEADER_SIZE:])
    total = 0
    for i, (_, length) in enumerate(ENTRY.iter_unpack(entries)):
        if length == 0 or length > max_size:
            raise ChunkIndexError(f"chunk {i} has {length} bytes (1..{max_size} allowed)")
        if length < min_size and i != count - 1:
            raise ChunkIndexError(f"chunk {i} has {length} bytes, below the minimum {min_size} (only the last may)")
        total += length
        if total > file_size:
            raise ChunkIndexError(f"chunk index covers more than the signed {file_size} bytes (at chunk {i})")
    if total != file_size:
        raise ChunkIndexError(f"chunk index covers {total} bytes, the signed size is {file_size}")
    return ChunkIndex(params, entries, file_size)


# ----------------------------------------------------------------- chunk packs

PACK_MAGIC = b"DCASCPK\x01"
PACK_HEADER = struct.Struct(">8sI")
PACK_ENTRY = struct.Struct(">32sIB32sI")
PACK_RAW, PACK_ZSTD, PACK_ZSTD_PATCH = 0, 1, 2   # how a chunk's payload is encoded
NO_BASE = bytes(32)


@dataclass(frozen=True)
class PackEntry:
    """One chunk of a chunk pack: its payload is ``[offset, offset + payload)`` of the pack."""

    chunk: bytes       # raw BLAKE3 of the chunk it rebuilds
    length: int        # the chunk's length
    method: int        # PACK_RAW, PACK_ZSTD or PACK_ZSTD_PATCH (zstd with the base chunk as dictionary)
    base: bytes        # raw BLAKE3 of the base chunk (NO_BASE unless PACK_ZSTD_PATCH)
    offset: int
    payload: int


def encode_pack_header(entries: list[tuple[bytes, int, int, bytes, int]]) -> bytes:
    """Header of a chunk pack: (chunk, length, method, base, payload length) per entry;
    the payloads follow in the same order."""
    return PACK_HEADER.pack(PACK_MAGIC, len(entries)) + b"".join(PACK_ENTRY.pack(*e) for e in entries)


def pack_header_size(prefix: bytes, pack_size: int) -> int:
    """From the first 12 bytes of a pack: the size of its whole header (checked against the
    pack size and the chunk cap before it is read)."""
    if len(prefix) < PACK_HEADER.size:
        raise ChunkIndexError("chunk pack truncated")
    magic, count = PACK_HEADER.unpack_from(prefix)
    count = int(count)
    if magic != PACK_MAGIC:
        raise ChunkIndexError("not a chunk pack (bad magic or version)")
    size = PACK_HEADER.size + count * PACK_ENTRY.size
    if count > MAX_CHUNKS or size > pack_size:
        raise ChunkIndexError(f"chunk pack claims {count} entries, more than its {pack_size} bytes hold")
    return size


def parse_pack_header(header: bytes, pack_size: int) -> list[PackEntry]:
    """A chunk pack's entries; every payload inside the pack, back to back, filling it exactly;
    lengths and methods in range.  The payloads themselves are checked by decoding them and
    hashing what they give."""
    size = pack_header_size(header[:PACK_HEADER.size], pack_size)
    if len(header) != size:
        raise ChunkIndexError("chunk pack header truncated")
    entries, offset = [], size
    for chunk, length, method, base, payload in PACK_ENTRY.iter_unpack(header[PACK_HEADER.size:]):
        if not 0 < length <= MAX_CHUNK_BYTES or method not in (PACK_RAW, PACK_ZSTD, PACK_ZSTD_PATCH):
            raise ChunkIndexError("chunk pack entry out of range")
        if payload < 1 or offset + payload > pack_size:
            raise ChunkIndexError("chunk pack payload runs past the pack")
        entries.append(PackEntry(chunk, length, method, base, offset, payload))
        offset += payload
    if offset != pack_size:
        raise ChunkIndexError(f"chunk pack has {pack_size - offset} bytes after its payloads")
    return entries


def pair_chunks(base: ChunkIndex, target: ChunkIndex) -> list[tuple[int, int | None]]:
    """For each distinct target chunk the base lacks: (target position, the base position of
    the chunk it most likely replaces, or None).  Walking both in file order, a new chunk is
    paired with the base chunk that follows the last chunk both share (an edit replaces the
    chunks around it in place; an insertion pairs with whatever follows, harmlessly)."""
    positions: dict[bytes, list[int]] = {}
    for j in range(base.count):
        positions.setdefault(base.raw_digest(j), []).append(j)
    pairs: list[tuple[int, int | None]] = []
    seen: set[bytes] = set()
    next_base = 0
    for i in range(target.count):
        digest = target.raw_digest(i)
        found = positions.get(digest)
        if found:
            later = [j for j in found[:16] if j >= next_base]
            next_base = (later[0] if later else found[0]) + 1
            continue
        if digest in seen:
            continue
        seen.add(digest)
        pairs.append((i, next_base if next_base < base.count else None))
        next_base += 1
    return pairs
