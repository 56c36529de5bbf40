"""Chunked files (``casformat/chunks.py``): rebuilt from chunks already here plus fetched ones.

For a target file whose manifest entry names a chunk index:

1. the index object is fetched (bounded by the signed index size, checked against its
   BLAKE3) and parsed against the signed file size; a bad index installs nothing;
2. local chunks: the candidate files of the installed versions (the same path, and every
   chunked file) are chunked with the index's own FastCDC settings and hashed, giving a
   local chunk index {digest: (file, offset, length)};
3. the chunks found neither locally nor earlier in the same file are fetched as byte
   ranges of the whole-file object, neighbouring chunks coalesced into one range (runs of
   at most ``RUN_MAX_BYTES``) and several ranges fetched at once; each run lands in
   ``.cas/downloads/<file>.<start>-<end>.run``, resumed after a cut, its chunks verified;
4. the file is written in order into staging, every chunk verified again as it is
   written (a local file changed since step 2 is caught), then the whole file (size,
   BLAKE3, SHA-256).  Memory: the index plus one chunk at a time.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from casformat.chunks import (
    PACK_ZSTD_PATCH,
    ChunkIndex,
    ChunkIndexError,
    PackEntry,
    pack_header_size,
    parse_index,
    parse_pack_header,
)
from deltagen.chunker import chunk_file
from deltagen.chunkpatch import decode_chunk
from deltagen.digests import StreamHasher, blake3_raw
from deltagen.errors import DeltaError

from .errors import ClientError, DownloadError, NotAvailable
from .log import Log

RUN_MAX_BYTES = 8 << 20   # one Range request fetches at most this many bytes of neighbouring chunks


class RangeSource(Protocol):
    """What chunked staging needs of ``client.fetcher.Fetcher``."""

    async def object(self, digest: str, size: int) -> Path: ...

    async def object_range(self, digest: str, start: int, end: int, part: Path,
                           check: Any) -> Path: ...


def local_chunks(candidates: Iterable[Path], index: ChunkIndex,
                 also: Iterable[bytes] = ()) -> dict[bytes, tuple[Path, int, int]]:
    """{raw digest: (file, offset, length)} of the index's chunks (and of ``also``: the base
    chunks a chunk pack patches) found in ``candidates``."""
    wanted = {index.raw_digest(i) for i in range(index.count)} | set(also)
    found: dict[bytes, tuple[Path, int, int]] = {}
    p = index.params
    scanned: set[tuple[int, int]] = set()   # a file hardlinked into several versions is read once
    for path in dict.fromkeys(candidates):
        if len(found) == len(wanted):
            break
        try:
            if path.is_symlink() or not path.is_file():
                continue
            st = path.stat()
            if (st.st_dev, st.st_ino) in scanned:
                continue
            scanned.add((st.st_dev, st.st_ino))
            for c in chunk_file(path, p.min_size, p.avg_size, p.max_size):
                if c.blake3 in wanted and c.blake3 not in found:
                    found[c.blake3] = (path, c.offset, c.length)
        except OSError:
            continue
    return found


def missing_runs(index: ChunkIndex, have: set[bytes], run_max: int = RUN_MAX_BYTES) -> list[tuple[int, int]]:
    """Chunk ranges ``[i, j)`` to fetch: chunks neither in ``have`` nor earlier in the file,
    neighbours coalesced up to ``run_max`` bytes per range."""
    runs: list[tuple[int, int]] = []
    seen = set(have)
    start: int | None = None
    for i in range(index.count):
        digest = index.raw_digest(i)
        needed = digest not in seen
        seen.add(digest)
        if start is not None and (not needed or index.offset(i) + index.length(i) - index.offset(start) > run_max):
            runs.append((start, i))
            start = None
        if needed and start is None:
            start = i
    if start is not None:
        runs.append((start, index.count))
    return runs


def _check_run(index: ChunkIndex, first: int, last: int, label: str) -> Any:
    def check(part: Path) -> None:
        with open(part, "rb") as fh:
            for i in range(first, last):
                if blake3_raw(fh.read(index.length(i))) != index.raw_digest(i):
                    raise DownloadError(f"{label}: chunk {i} does not match its digest in the index")
    return check


def _read_exact(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


async def load_pack(fetcher: RangeSource, pack: Mapping[str, Any]) -> tuple[Path, list[PackEntry]]:
    """A chunk pack (a recipe of the delta, capped by its size, checked against its BLAKE3)
    and its entries; ChunkIndexError when its header does not hold together."""
    path = await fetcher.object(pack["object"], int(pack["size"]))
    size = path.stat().st_size
    with open(path, "rb") as fh:
        header_size = pack_header_size(fh.read(12), size)
        fh.seek(0)
        return path, parse_pack_header(fh.read(header_size), size)


def apply_pack(path: Path, entries: list[PackEntry], downloads: Path, entry: Mapping[str, Any],
               index: ChunkIndex, local: dict[bytes, tuple[Path, int, int]]) -> int:
    """Rebuild from a chunk pack (``casformat.chunks``, built ahead of time from the delta's
    base) the chunks still needed whose base chunk is here; each rebuilt chunk is checked
    against its digest and added to ``local`` (in ``downloads/<file>.patched``).  Returns
    how many.  A payload that does not decode to its chunk raises DeltaError."""
    needed = {index.raw_digest(i) for i in range(index.count)} - set(local)
    if not needed:
        return 0
    out = downloads / f"{entry['blake3']}.patched"
    added = position = 0
    with open(path, "rb") as fh, open(out, "wb") as dst:
        for item in entries:
            if item.chunk not in needed:
                continue
            base = None
            if item.method == PACK_ZSTD_PATCH:
                found = local.get(item.base)
                if found is None:
                    continue   # we lack the chunk it was encoded against: fetched as a range instead
                base = _read_exact(*found)
                if blake3_raw(base) != item.base:
                    continue
            fh.seek(item.offset)
            data = decode_chunk(item.method, fh.read(item.payload), base, item.length)
            if blake3_raw(data) != item.chunk:
                raise DeltaError(f"chunk pack entry {item.chunk.hex()[:12]} does not rebuild its chunk")
            dst.write(data)
            local[item.chunk] = (out, position, item.length)
            needed.discard(item.chunk)
            position += item.length
            added += 1
    return added


async def build_chunked(fetcher: RangeSource, downloads: Path, entry: Mapping[str, Any], dest: Path,
                        candidates: Iterable[Path], log: Log, pack: Mapping[str, Any] | None = None) -> int:
    """Write ``entry``'s file at ``dest`` from local chunks, a chunk pack (``pack``, a recipe
    of the delta) and fetched ranges; returns the bytes taken from local files.  ClientError
    (and ``dest`` removed) when it cannot be rebuilt."""
    where = entry["path"]
    index_path = await fetcher.object(entry["chunks"]["index"], int(entry["chunks"]["size"]))
    try:
        index = parse_index(index_path.read_bytes(), int(entry["size"]))
    except ChunkIndexError as exc:
        raise ClientError(f"{where}: chunk index refused: {exc.message}") from None
    loaded: tuple[Path, list[PackEntry]] | None = None
    if pack is not None:
        try:
            loaded = await load_pack(fetcher, pack)
        except (ChunkIndexError, DownloadError, NotAvailable) as exc:
            log(f"{where}: chunk pack not used ({exc}); fetching its chunks instead")
    bases = [e.base for e in loaded[1] if e.method == PACK_ZSTD_PATCH] if loaded else []
    local = local_chunks(candidates, index, bases)
    from_local = sum(n for _, _, n in local.values())
    packed = 0
    if loaded is not None:
        try:
            packed = apply_pack(*loaded, downloads, entry, index, local)
        except DeltaError as exc:
            log(f"{where}: chunk pack not used ({exc}); fetching its chunks instead")
    runs = missing_runs(index, set(local))
    digest = entry["blake3"]

    async def fetch(run: tuple[int, int]) -> Path:
        first, last = run
        start, end = index.offset(first), index.offset(last - 1) + index.length(last - 1)
        part = downloads / f"{digest}.{start}-{end}.run"
        return await fetcher.object_range(digest, start, end, part, _check_run(index, first, last, where))

    fetched = dict(zip((r[0] for r in runs), await asyncio.gather(*(fetch(r) for r in runs))))
    run_end = dict(runs)
    whole = StreamHasher(sha256=True)
    written: dict[bytes, int] = {}   # chunks already in dest, by digest -> offset
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(dest, "w+b") as out:
            i = 0
            while i < index.count:
                if i in fetched:
                    with open(fetched[i], "rb") as run:
                        for j in range(i, run_end[i]):
                            _put(out, index, j, run.read(index.length(j)), whole, written, where)
                    i = run_end[i]
                    continue
                raw = index.raw_digest(i)
                if raw in written:
                    out.flush()
                    data = os.pread(out.fileno(), index.length(i), written[raw])
                else:
                    data = _read_exact(*local[raw])
                _put(out, index, i, data, whole, written, where)
                i += 1
            out.flush()
        if (whole.size, whole.blake3, whole.sha256) != (entry["size"], entry["blake3"], entry["sha256"]):
            raise ClientError(f"{where}: rebuilt from its chunks, the file does not match its signed "
                              "size, BLAKE3 and SHA-256")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    for part in fetched.values():
        part.unlink(missing_ok=True)
    (downloads / f"{digest}.patched").unlink(missing_ok=True)
    log(f"{where}: {index.count} chunks, {from_local:,} bytes found in local files, {packed} rebuilt from "
        f"a chunk pack, {len(runs)} ranges fetched")
    return from_local


def _put(out: Any, index: ChunkIndex, i: int, data: bytes, whole: StreamHasher, written: dict[bytes, int],
         where: str) -> None:
    """Write chunk ``i`` after checking it against the index (a local file may have changed)."""
    raw = index.raw_digest(i)
    if blake3_raw(data) != raw:
        raise ClientError(f"{where}: chunk {i} changed since it was found locally; start the update again")
    written.setdefault(raw, index.offset(i))
    out.write(data)
    whole.update(data)
