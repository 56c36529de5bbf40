"""Chunked files on the server: chunk at publish, check at publish, read back whole.

A file of at least ``chunk_min_file_bytes`` (or too large for any patch,
``deltagen/limits.py``) is published as FastCDC chunks (``deltagen/chunker.py``), each an
ordinary BLAKE3-addressed object shared by every file, version and product, plus a chunk
index object (``casformat/chunks.py``) that its manifest entry names.  The file itself
is never stored whole: ``GET /v1/objects/{file blake3}`` streams its chunks in index order
(``ChunkedView``), with ranges, so old clients, mirrors and curl read it as before.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from casformat.chunks import (
    MAX_CHUNK_BYTES,
    MAX_INDEX_BYTES,
    NO_BASE,
    PACK_RAW,
    PACK_ZSTD_PATCH,
    ChunkIndex,
    ChunkIndexError,
    ChunkParams,
    encode_index,
    encode_pack_header,
    pack_header_size,
    pair_chunks,
    parse_index,
    parse_pack_header,
)
from casformat.manifests import is_chunked
from deltagen.chunker import chunk_file
from deltagen.chunkpatch import CHUNK_LEVEL, decode_chunk, encode_chunk
from deltagen.digests import FileDigest, StreamHasher, blake3_bytes, blake3_raw
from deltagen.errors import CorruptPatch
from deltagen.limits import DEFAULT_LIMITS

from .config import Config
from .errors import CasError, NotFound
from .objectstore import ObjectStore


@dataclass(frozen=True)
class ChunkSettings:
    """When and how files are chunked (from ``Config``)."""

    params: ChunkParams
    min_file_bytes: int

    @classmethod
    def of(cls, config: Config) -> ChunkSettings:
        params = ChunkParams(config.chunk_min_bytes, config.chunk_avg_bytes, config.chunk_max_bytes)
        if params.problems():
            raise ValueError("; ".join(params.problems()))
        # Anything too large for zstd patch-from (the largest patch cap: old + new) is chunked
        # whatever the setting says: no delta would ever be built for it.
        return cls(params, min(config.chunk_min_file_bytes, DEFAULT_LIMITS.zstd_patch_max_bytes // 2))

    def wants(self, size: int) -> bool:
        return size >= self.min_file_bytes


@dataclass(frozen=True)
class ChunkedSource:
    """A local file being published as chunks: its index object and where each chunk lies."""

    path: Path
    index_bytes: bytes
    index_digest: str
    index: ChunkIndex


def chunk_local_file(path: Path, settings: ChunkSettings) -> tuple[FileDigest, ChunkedSource]:
    """One pass over ``path``: whole-file BLAKE3 and SHA-256, and its chunk index."""
    whole = StreamHasher(sha256=True)
    p = settings.params
    entries = [(c.blake3, c.length) for c in chunk_file(path, p.min_size, p.avg_size, p.max_size, whole)]
    data = encode_index(p, entries)
    index = parse_index(data, whole.size)
    return (FileDigest(whole.blake3, whole.sha256, whole.size),
            ChunkedSource(path, data, blake3_bytes(data), index))


def read_chunk(source: ChunkedSource, i: int) -> bytes:
    """Chunk ``i`` of a local file, as it is now (the caller checks its digest)."""
    with open(source.path, "rb") as fh:
        fh.seek(source.index.offset(i))
        return fh.read(source.index.length(i))


def distinct_chunks(index: ChunkIndex) -> dict[str, int]:
    """{digest: size} of the index's chunks, each once, in first-use order."""
    out: dict[str, int] = {}
    for digest, _, length in index:
        out.setdefault(digest, length)
    return out


# ----------------------------------------------------------------- publish checks

def check_chunked_entries(store: ObjectStore, meta: Any, files: Iterable[Mapping[str, Any]]) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """For a manifest's chunked entries: the index object present with its declared size and
    parsing against the signed size, every chunk present, and (once per file and index) the
    chunks read at their listed lengths hashing, in order, to the signed BLAKE3 (as a whole
    object's upload is checked; SHA-256 is the client's check after rebuilding the file).

    Returns (problems, {index digest: [(chunk, size), ...]})."""
    problems: list[str] = []
    lists: dict[str, list[tuple[str, int]]] = {}
    for entry in files:
        if not is_chunked(entry):
            continue
        where = entry["path"]
        index_digest, index_size = entry["chunks"]["index"], entry["chunks"]["size"]
        found = store.size(index_digest)
        if found is None:
            problems.append(f"missing object {index_digest} (chunk index of {where})")
            continue
        if found != index_size or found > MAX_INDEX_BYTES:
            problems.append(f"{where}: chunk index object has {found} bytes, manifest says {index_size}")
            continue
        try:
            with store.open(index_digest) as fh:
                index = parse_index(fh.read(index_size + 1), entry["size"])
        except ChunkIndexError as exc:
            problems.append(f"{where}: bad chunk index: {exc.message}")
            continue
        chunks = distinct_chunks(index)
        absent = store.missing(list(chunks))
        if absent:
            problems.extend(f"missing object {d} (chunk of {where})" for d in absent)
            continue
        # Objects are named by their content, so a chunk listed with another length than its
        # object's reads back other bytes: the hash below catches it (no size query per chunk,
        # which on S3 would be a HEAD each).  An index already recorded with this file was
        # checked at that publish.
        if not meta.chunked_file_known(entry["blake3"], index_digest):
            whole = StreamHasher()  # BLAKE3 names the file, as ingest checks whole objects; the
            try:                    # client checks SHA-256 too, after rebuilding it
                for piece in ChunkedView(store, index).iter_range(0, index.file_size):
                    whole.update(piece)
            except CasError as exc:  # a chunk object shorter than its listed length, or gone meanwhile
                problems.append(f"{where}: its chunks cannot be read back: {exc.message}")
                continue
            if (whole.blake3, whole.size) != (entry["blake3"], entry["size"]):
                problems.append(f"{where}: its chunks do not hash to the signed blake3")
                continue
        lists[index_digest] = list(chunks.items())
    return problems, lists


# ----------------------------------------------------------------- reads

class ChunkedView:
    """A chunked file read as one object: ``open_range`` like an ``ObjectStore``'s."""

    def __init__(self, store: ObjectStore, index: ChunkIndex) -> None:
        self.store, self.index = store, index

    def iter_range(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of the file, chunk by chunk (each read in bounded pieces)."""
        index = self.index
        if start >= end:
            return
        i = index.chunk_at(start)
        position = start
        while position < end:
            offset, length = index.offset(i), index.length(i)
            a, b = position - offset, min(end, offset + length) - offset
            yield from self.store.open_range(index.digest(i), a, b)
            position = offset + b
            i += 1

    def open_range(self, digest: str, start: int, end: int) -> Iterator[bytes]:
        return self.iter_range(start, end)


def write_whole(store: ObjectStore, index: ChunkIndex, dest: Path, blake3: str) -> None:
    """Write a chunked file's bytes to ``dest`` (a new file), checked against its BLAKE3."""
    whole = StreamHasher()
    with open(dest, "xb") as fh:
        for piece in ChunkedView(store, index).iter_range(0, index.file_size):
            whole.update(piece)
            fh.write(piece)
        fh.flush()
    if whole.blake3 != blake3:
        dest.unlink()
        raise CasError(f"the chunks of {blake3} do not rebuild it (run cas fsck)", code="corrupt_object")


class IndexCache:
    """Parsed chunk indexes by file digest, the last few (an index is ~36 bytes per chunk)."""

    def __init__(self, entries: int = 16) -> None:
        self.entries = entries
        self._cache: OrderedDict[str, ChunkIndex] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, store: ObjectStore, meta: Any, digest: str) -> ChunkIndex | None:
        """The chunk index of the chunked file ``digest`` (None when no release names one)."""
        with self._lock:
            if digest in self._cache:
                self._cache.move_to_end(digest)
                return self._cache[digest]
        found = meta.chunk_index_of(digest)
        if found is None:
            return None
        index_digest, index_size, size = found
        try:
            with store.open(index_digest) as fh:
                index = parse_index(fh.read(index_size + 1), size)
        except (NotFound, ChunkIndexError):
            return None
        with self._lock:
            self._cache[digest] = index
            while len(self._cache) > self.entries:
                self._cache.popitem(last=False)
        return index


# ----------------------------------------------------------------- chunk packs (built ahead of time)

def chunk_pairs(base_files: Iterable[Mapping[str, Any]], target_files: Iterable[Mapping[str, Any]]
                ) -> list[tuple[str, str]]:
    """(base file, target file) pairs to build a chunk pack for: a chunked target whose path
    holds another chunked file in the base."""
    base = {e["path"]: e for e in base_files if is_chunked(e)}
    pairs = []
    for entry in target_files:
        old = base.get(entry["path"]) if is_chunked(entry) else None
        if old is not None and old["blake3"] != entry["blake3"]:
            pairs.append((old["blake3"], entry["blake3"]))
    return pairs


PACK_BATCH = 64   # chunks encoded at once by the pack builder's threads (bounds its memory)


def build_chunk_pack(store: ObjectStore, base: ChunkIndex, target: ChunkIndex, out: Path,
                     level: int = CHUNK_LEVEL, deadline: float | None = None, threads: int = 0) -> int:
    """Write the chunk pack taking a holder of ``base`` to ``target`` (every distinct target
    chunk the base lacks, each encoded against the base chunk it replaces when that is
    smallest; ``casformat.chunks``) at ``out``; returns the bytes of those chunks raw.
    Past ``deadline`` (monotonic) the remaining chunks go in raw, so the pack stays complete.
    Chunks are encoded by ``threads`` threads (0: the CPUs, at most 4; zstd releases the
    GIL), ``PACK_BATCH`` at a time, in order; payloads go to a side file, then after the header."""

    def encode(pair: tuple[int, int | None]) -> tuple[tuple[bytes, int, int, bytes, int], bytes]:
        i, j = pair
        with store.open(target.digest(i)) as fh:
            data = fh.read(target.length(i) + 1)
        if blake3_raw(data) != target.raw_digest(i):
            raise CasError(f"chunk {target.digest(i)} does not match its content", code="corrupt_object")
        old = None
        if j is not None:
            with store.open(base.digest(j)) as fh:
                old = fh.read(base.length(j) + 1)
        if deadline is not None and time.monotonic() > deadline:
            method, payload = PACK_RAW, data
        else:
            method, payload = encode_chunk(data, old, level, level)
        based = base.raw_digest(j) if method == PACK_ZSTD_PATCH and j is not None else NO_BASE
        return (target.raw_digest(i), len(data), method, based, len(payload)), payload

    entries: list[tuple[bytes, int, int, bytes, int]] = []
    pairs = pair_chunks(base, target)
    payloads = out.with_suffix(".payloads")
    workers = threads or min(4, os.cpu_count() or 1)
    try:
        with open(payloads, "wb") as sink, ThreadPoolExecutor(max_workers=workers) as pool:
            for k in range(0, len(pairs), PACK_BATCH):
                for entry, payload in pool.map(encode, pairs[k:k + PACK_BATCH]):
                    entries.append(entry)
                    sink.write(payload)
        with open(out, "wb") as fh, open(payloads, "rb") as source:
            fh.write(encode_pack_header(entries))
            shutil.copyfileobj(source, fh, 1 << 20)
    finally:
        payloads.unlink(missing_ok=True)
    return sum(e[1] for e in entries)


def verify_chunk_pack(store: ObjectStore, pack: Path) -> None:
    """Decode every payload of a built pack (with its base chunk from the store) and check
    the chunk it gives; CorruptPatch (a DeltaError: the job fails) otherwise."""
    size = pack.stat().st_size
    with open(pack, "rb") as fh:
        header_size = pack_header_size(fh.read(12), size)
        fh.seek(0)
        entries = parse_pack_header(fh.read(header_size), size)
        for entry in entries:
            fh.seek(entry.offset)
            payload = fh.read(entry.payload)
            base = None
            if entry.method == PACK_ZSTD_PATCH:
                with store.open(entry.base.hex()) as src:
                    base = src.read(MAX_CHUNK_BYTES + 1)
            data = decode_chunk(entry.method, payload, base, entry.length)
            if blake3_raw(data) != entry.chunk:
                raise CorruptPatch(f"chunk pack entry {entry.chunk.hex()[:12]} does not rebuild its chunk")
