"""The object store interface: immutable objects named by their BLAKE3 digest.

Two backends implement ``ObjectStore``: ``cas.objects.FilesystemObjectStore``
(the embedded default, ``STORE/objects/ab/cdef...``) and
``cas.s3store.S3ObjectStore`` (any S3-compatible service, key
``{prefix}objects/ab/cdef...``).  Callers never build a location themselves:
they read through ``open``/``open_range``, ask for ``local_copy`` when a tool
needs a real file (delta builds, checkouts), and use ``local_path`` only to
take a faster route the filesystem backend allows (sendfile, hardlinks).

Writing is the same for every backend (``StagedObjectStore``): bytes stream
into a temp file under ``STORE/tmp`` while hashed (bounded memory), the digest
is checked, and only then does the backend ``install`` the complete file (a
rename, or one S3 PUT / complete-multipart, both atomic).  Nothing is visible
before it is complete and verified.
"""
from __future__ import annotations

import abc
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, ContextManager, Iterator, Protocol

from deltagen.digests import CHUNK, StreamHasher

from .errors import DigestMismatch, Invalid, TooLarge

if TYPE_CHECKING:
    from .config import Config


@dataclass(frozen=True)
class Ingested:
    digest: str
    size: int
    created: bool  # False when the object was already present


@dataclass(frozen=True)
class FsckReport:
    checked: int
    bytes: int
    corrupt: list[str]
    quarantined: list[str]
    stray_temp: int


class ObjectStore(Protocol):
    """What the server needs from a place that keeps objects."""

    tmp_dir: Path          # local scratch space for writers and local copies
    max_object_bytes: int

    def exists(self, digest: str) -> bool: ...
    def size(self, digest: str) -> int | None: ...
    def missing(self, digests: list[str]) -> list[str]: ...
    def open(self, digest: str) -> BinaryIO: ...
    def open_range(self, digest: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of an object, in chunks."""
    def local_path(self, digest: str) -> Path | None:
        """The object's own file when the backend keeps one (filesystem), else None."""
    def local_copy(self, digest: str) -> ContextManager[Path]:
        """A verified local file with the object's bytes for the duration of the block."""
    def presigned_url(self, digest: str) -> str | None: ...
    def writer(self) -> ObjectWriter: ...
    def install(self, temp_path: Path, digest: str) -> bool: ...
    def ingest_stream(self, fh: BinaryIO, expected: str | None = None) -> Ingested: ...
    def ingest_file(self, path: Path, expected: str | None = None) -> Ingested: ...
    def ingest_bytes(self, data: bytes) -> Ingested: ...
    def delete(self, digest: str) -> bool: ...
    def iter_digests(self) -> Iterator[str]: ...
    def usage(self) -> tuple[int, int]: ...
    def fsck(self, quarantine: bool = True) -> FsckReport: ...
    def sweep_temp(self, older_than: float = 3600.0) -> int: ...


class ObjectWriter:
    """Streams bytes into a temp file while hashing; ``commit`` verifies and installs them."""

    def __init__(self, store: StagedObjectStore, max_bytes: int) -> None:
        self._store = store
        self._max = max_bytes
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="obj-")
        self._fh = os.fdopen(fd, "wb")
        self.temp_path = Path(name)
        self._hasher = StreamHasher()
        self._done = False

    @property
    def size(self) -> int:
        return self._hasher.size

    def write(self, data: bytes) -> None:
        if self._hasher.size + len(data) > self._max:
            self.abort()
            raise TooLarge(f"object exceeds the limit of {self._max} bytes")
        self._fh.write(data)
        self._hasher.update(data)

    def commit(self, expected: str | None = None, expected_size: int | None = None) -> Ingested:
        digest = self._hasher.blake3
        try:
            if expected is not None and digest != expected:
                raise DigestMismatch(f"content hashes to {digest}, not {expected}",
                                     detail={"expected": expected, "actual": digest})
            if expected_size is not None and self._hasher.size != expected_size:
                raise Invalid(f"received {self._hasher.size} bytes, declared {expected_size}",
                              code="size_mismatch")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            created = self._store.install(self.temp_path, digest)
            self._done = True
            return Ingested(digest, self._hasher.size, created)
        finally:
            if not self._done:
                self.abort()

    def abort(self) -> None:
        self._done = True
        try:
            self._fh.close()
        finally:
            self.temp_path.unlink(missing_ok=True)


class StagedObjectStore(abc.ABC):
    """Writing, ingest and temp sweeping shared by the backends; they add ``install`` and reads."""

    tmp_dir: Path
    max_object_bytes: int

    @abc.abstractmethod
    def exists(self, digest: str) -> bool:
        """Whether the object is stored."""

    @abc.abstractmethod
    def install(self, temp_path: Path, digest: str) -> bool:
        """Move a complete, fsynced, verified temp file into place; False if already present."""

    def missing(self, digests: list[str]) -> list[str]:
        return [d for d in dict.fromkeys(digests) if not self.exists(d)]

    def writer(self) -> ObjectWriter:
        return ObjectWriter(self, self.max_object_bytes)

    def ingest_stream(self, fh: BinaryIO, expected: str | None = None) -> Ingested:
        writer = self.writer()
        try:
            while chunk := fh.read(CHUNK):
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return writer.commit(expected)

    def ingest_file(self, path: Path, expected: str | None = None) -> Ingested:
        with open(path, "rb") as fh:
            return self.ingest_stream(fh, expected)

    def ingest_bytes(self, data: bytes) -> Ingested:
        writer = self.writer()
        writer.write(data)
        return writer.commit()

    @contextlib.contextmanager
    def _temp_file(self, prefix: str) -> Iterator[Path]:
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix=prefix)
        os.close(fd)
        try:
            yield Path(name)
        finally:
            Path(name).unlink(missing_ok=True)

    def sweep_temp(self, older_than: float = 3600.0) -> int:
        """Remove local temp files left by killed writers."""
        removed = 0
        cutoff = time.time() - older_than
        for entry in self.tmp_dir.iterdir():
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


BACKENDS = ("filesystem", "s3")


def open_object_store(config: Config) -> ObjectStore:
    """The backend ``config.object_store`` names; S3 is imported only when used."""
    store = Path(config.store)
    if config.object_store == "s3":
        from .s3store import S3ObjectStore
        return S3ObjectStore.from_config(config)
    if config.object_store != "filesystem":
        raise ValueError(f"object_store must be one of {BACKENDS}, not {config.object_store!r}")
    from .objects import FilesystemObjectStore
    return FilesystemObjectStore(store, config.max_object_bytes)
