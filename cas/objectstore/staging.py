"""Writing objects the one way every backend shares: stage, hash, verify, then install.

``ObjectWriter`` streams bytes into a temp file under ``STORE/tmp`` while hashing
them (bounded memory); ``commit`` checks the digest and size against what was
declared, fsyncs, and hands the complete file to the backend's ``install`` (a
rename, or one S3 upload).  ``StagedObjectStore`` gives a backend the writer, the
ingest helpers and the sweep of temp files killed writers left; a backend adds
``install`` and the reads.
"""
from __future__ import annotations

import abc
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Iterator

from deltagen.digests import CHUNK, StreamHasher

from ..errors import DigestMismatch, Invalid, TooLarge
from .interface import Ingested


def _last_change(directory: Path) -> float:
    """The newest mtime of ``directory`` and of everything in it (a live build keeps
    writing its outputs, so its directory stays young)."""
    newest = directory.lstat().st_mtime
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


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
        """Bytes written so far."""
        return self._hasher.size

    def write(self, data: bytes) -> None:
        """Append bytes (TooLarge, and the writer aborted, past ``max_bytes``)."""
        if self._hasher.size + len(data) > self._max:
            self.abort()
            raise TooLarge(f"object exceeds the limit of {self._max} bytes")
        self._fh.write(data)
        self._hasher.update(data)

    def commit(self, expected: str | None = None, expected_size: int | None = None) -> Ingested:
        """Check the digest (and size) against what was declared, fsync, then ``install``."""
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
        """Drop the temp file; nothing is stored."""
        self._done = True
        try:
            self._fh.close()
        except OSError:
            pass  # closing flushes: on a full disk that fails too, and the file goes anyway
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
        """Which of ``digests`` are not stored (each once, in order)."""
        return [d for d in dict.fromkeys(digests) if not self.exists(d)]

    def writer(self) -> ObjectWriter:
        """A writer streaming a new object into a temp file; ``commit`` stores it."""
        return ObjectWriter(self, self.max_object_bytes)

    def ingest_stream(self, fh: BinaryIO, expected: str | None = None) -> Ingested:
        """Store what ``fh`` yields, refusing it unless it hashes to ``expected`` (when given)."""
        writer = self.writer()
        try:
            while chunk := fh.read(CHUNK):
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return writer.commit(expected)

    def ingest_file(self, path: Path, expected: str | None = None) -> Ingested:
        """Store a local file's bytes, refusing them unless they hash to ``expected`` (when given)."""
        with open(path, "rb") as fh:
            return self.ingest_stream(fh, expected)

    def ingest_bytes(self, data: bytes) -> Ingested:
        """Store ``data``."""
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
        """Remove what killed writers left under ``STORE/tmp``: files, and directories (a
        killed delta build's ``delta-*``) in which nothing changed for ``older_than`` seconds."""
        removed = 0
        cutoff = time.time() - older_than
        for entry in self.tmp_dir.iterdir():
            try:
                if entry.is_dir() and not entry.is_symlink():
                    if _last_change(entry) < cutoff:
                        shutil.rmtree(entry)
                        removed += 1
                elif entry.lstat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed
