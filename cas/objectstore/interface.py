"""The object store interface: immutable objects named by their BLAKE3 digest.

Two backends implement ``ObjectStore``: ``FilesystemObjectStore``
(``cas/objectstore/filesystem.py``, the embedded default, ``STORE/objects/ab/cdef...``)
and ``S3ObjectStore`` (``cas/objectstore/s3.py``, any S3-compatible service, key
``{prefix}objects/ab/cdef...``).  Callers never build a location themselves:
they read through ``open``/``open_range``, ask for ``local_copy`` when a tool
needs a real file (delta builds, checkouts), and use ``local_path`` only to
take a faster route the filesystem backend allows (sendfile, hardlinks).

Writing is the same for every backend (``cas/objectstore/staging.py``): bytes
stream into a temp file under ``STORE/tmp`` while hashed (bounded memory), the
digest is checked, and only then does the backend ``install`` the complete file
(a rename, or one S3 PUT / complete-multipart, both atomic).  Nothing is visible
before it is complete and verified.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ContextManager, Iterator, Protocol


@dataclass(frozen=True)
class Ingested:
    """An object written (or found already present) by an ingest."""

    digest: str
    size: int
    created: bool  # False when the object was already present


@dataclass(frozen=True)
class FsckReport:
    """What ``fsck`` checked and found."""

    checked: int
    bytes: int
    corrupt: list[str]
    quarantined: list[str]
    stray_temp: int


class Writer(Protocol):
    """One object being written: bytes go to a temp file while hashed; nothing is stored before ``commit``."""

    temp_path: Path

    @property
    def size(self) -> int:
        """Bytes written so far."""

    def write(self, data: bytes) -> None:
        """Append bytes (TooLarge, and the writer aborted, past the store's object limit)."""

    def commit(self, expected: str | None = None, expected_size: int | None = None) -> Ingested:
        """Check the digest (and size) against what was declared, then store the object."""

    def abort(self) -> None:
        """Drop the temp file; nothing is stored."""


class ObjectStore(Protocol):
    """What the server needs from a place that keeps objects."""

    tmp_dir: Path          # local scratch space for writers and local copies
    max_object_bytes: int

    def exists(self, digest: str) -> bool:
        """Whether the object is stored."""

    def size(self, digest: str) -> int | None:
        """The object's size in bytes, or None when it is not stored."""

    def missing(self, digests: list[str]) -> list[str]:
        """Which of ``digests`` are not stored (each once, in order)."""

    def open(self, digest: str) -> BinaryIO:
        """The object's bytes as a file (NotFound ``object_not_found`` when absent)."""

    def open_range(self, digest: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of an object, in chunks."""

    def local_path(self, digest: str) -> Path | None:
        """The object's own file when the backend keeps one (filesystem), else None."""

    def local_copy(self, digest: str) -> ContextManager[Path]:
        """A verified local file with the object's bytes for the duration of the block."""

    def presigned_url(self, digest: str) -> str | None:
        """A URL a client may fetch the object from directly, or None (the server streams it)."""

    def writer(self) -> Writer:
        """A writer streaming a new object into a temp file; ``commit`` stores it."""

    def install(self, temp_path: Path, digest: str) -> bool:
        """Move a complete, fsynced, verified temp file into place; False if already present."""

    def ingest_stream(self, fh: BinaryIO, expected: str | None = None) -> Ingested:
        """Store what ``fh`` yields, refusing it unless it hashes to ``expected`` (when given)."""

    def ingest_file(self, path: Path, expected: str | None = None) -> Ingested:
        """Store a local file's bytes, refusing them unless they hash to ``expected`` (when given)."""

    def ingest_bytes(self, data: bytes) -> Ingested:
        """Store ``data``."""

    def delete(self, digest: str) -> bool:
        """Remove an object; False if it was not stored."""

    def iter_digests(self) -> Iterator[str]:
        """Every stored object's digest."""

    def usage(self) -> tuple[int, int]:
        """(objects, bytes) stored."""

    def fsck(self, quarantine: bool = True) -> FsckReport:
        """Re-hash every object; move corrupt ones to quarantine (unless told not to)."""

    def sweep_temp(self, older_than: float = 3600.0) -> int:
        """Remove what killed writers left (temp files, incomplete uploads); returns how many."""
