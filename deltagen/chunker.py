"""Content-defined chunking of a file with FastCDC (``pyfastcdc``), streaming.

``chunk_file`` reads a file once, in the chunker's own buffer (a few maximum-size
chunks), and yields every chunk's raw BLAKE3, offset and length; given a
``StreamHasher`` it also feeds it every byte, so the publisher gets the whole-file
digests in the same pass.  The server (``cas publish``) and the client (its local
chunk index of an installed file) chunk with the same settings, which every chunk
index records (``casformat.chunks``), so equal content gives equal chunks.

pyfastcdc: FastCDC 2020 in Cython, ~1.5 GB/s here; note that its average chunk is
``avg_size + min_size`` (the paper's cut-point skipping).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pyfastcdc import FastCDC

from .digests import StreamHasher, blake3_raw


@dataclass(frozen=True)
class Chunk:
    blake3: bytes    # raw 32 bytes
    offset: int
    length: int


class _Tee:
    """A reader that also feeds every byte it returns to a hasher."""

    def __init__(self, fh: BinaryIO, hasher: StreamHasher) -> None:
        self.fh, self.hasher = fh, hasher

    def readinto(self, buffer: memoryview) -> int:
        n = self.fh.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.hasher.update(buffer[:n])
        return int(n or 0)


def chunk_stream(fh: BinaryIO, min_size: int, avg_size: int, max_size: int,
                 whole: StreamHasher | None = None) -> Iterator[Chunk]:
    """The FastCDC chunks of what ``fh`` yields (and, with ``whole``, its digests)."""
    cdc = FastCDC(avg_size, min_size=min_size, max_size=max_size)
    reader = fh if whole is None else _Tee(fh, whole)
    for c in cdc.cut_stream(reader):
        yield Chunk(blake3_raw(c.data), int(c.offset), int(c.length))


def chunk_file(path: str | os.PathLike[str], min_size: int, avg_size: int, max_size: int,
               whole: StreamHasher | None = None) -> Iterator[Chunk]:
    """The FastCDC chunks of a file, read once in bounded memory."""
    with open(path, "rb", buffering=0) as fh:
        yield from chunk_stream(fh, min_size, avg_size, max_size, whole)
