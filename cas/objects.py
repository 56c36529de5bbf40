"""The object store: immutable objects named by their BLAKE3 digest.

Filesystem backend (the embedded default): ``objects/ab/cdef...`` sharded by
the first two hex characters.  An object is written to a temp file in
``tmp/`` (same filesystem), hashed while written, fsynced, made read-only and
renamed into place, then the shard directory is fsynced.  Nothing is visible
before it is complete and verified; a killed writer leaves only a temp file
that ``sweep_temp`` removes.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from deltagen.digests import CHUNK, StreamHasher, hash_stream, is_digest

from .errors import DigestMismatch, Invalid, NotFound, TooLarge

OBJECT_MODE = 0o444


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


class ObjectWriter:
    """Streams bytes into a temp file while hashing; ``commit`` publishes them."""

    def __init__(self, store: "FilesystemObjectStore", max_bytes: int) -> None:
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


class FilesystemObjectStore:
    def __init__(self, root: Path, max_object_bytes: int = 16 << 30) -> None:
        self.root = Path(root)
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"
        self.max_object_bytes = max_object_bytes
        for d in (self.objects_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- naming: the one function from digest to location
    def path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise Invalid(f"not a BLAKE3 digest: {digest[:80]!r}", code="bad_digest")
        return self.objects_dir / digest[:2] / digest[2:]

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"object {digest} not found", code="object_not_found") from None

    def missing(self, digests: list[str]) -> list[str]:
        return [d for d in dict.fromkeys(digests) if not self.exists(d)]

    # -- writing
    def writer(self) -> ObjectWriter:
        return ObjectWriter(self, self.max_object_bytes)

    def install(self, temp_path: Path, digest: str) -> bool:
        """Move a complete, fsynced, verified temp file into place."""
        final = self.path(digest)
        if final.exists():
            temp_path.unlink(missing_ok=True)
            return False
        os.chmod(temp_path, OBJECT_MODE)
        shard = final.parent
        if not shard.is_dir():
            shard.mkdir(exist_ok=True)
            fsync_dir(self.objects_dir)
        os.replace(temp_path, final)
        fsync_dir(shard)
        return True

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

    # -- maintenance
    def iter_digests(self) -> Iterator[str]:
        for shard in sorted(self.objects_dir.iterdir()):
            if not shard.is_dir() or len(shard.name) != 2:
                continue
            for entry in sorted(shard.iterdir()):
                digest = shard.name + entry.name
                if is_digest(digest):
                    yield digest

    def usage(self) -> tuple[int, int]:
        """(objects, bytes) stored."""
        count = total = 0
        for digest in self.iter_digests():
            count += 1
            total += self.path(digest).stat().st_size
        return count, total

    def sweep_temp(self, older_than: float = 3600.0) -> int:
        """Remove temp files left by killed writers."""
        removed = 0
        cutoff = time.time() - older_than
        for entry in self.tmp_dir.iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def fsck(self, quarantine: bool = True) -> FsckReport:
        checked = total = 0
        corrupt: list[str] = []
        moved: list[str] = []
        for digest in self.iter_digests():
            path = self.path(digest)
            with open(path, "rb") as fh:
                h = hash_stream(fh)
            checked += 1
            total += h.size
            mode_ok = stat.S_IMODE(path.stat().st_mode) & 0o222 == 0
            if h.blake3 != digest:
                corrupt.append(digest)
                if quarantine:
                    self.quarantine_dir.mkdir(exist_ok=True)
                    target = self.quarantine_dir / f"{digest}.{int(time.time())}"
                    os.replace(path, target)
                    fsync_dir(path.parent)
                    moved.append(str(target))
            elif not mode_ok:
                os.chmod(path, OBJECT_MODE)
        stray = sum(1 for _ in self.tmp_dir.iterdir())
        return FsckReport(checked, total, corrupt, moved, stray)


def link_or_copy(source: Path, dest: Path) -> str:
    """Hardlink ``source`` at ``dest``; copy when links cannot be made there."""
    try:
        os.link(source, dest)
        return "link"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EACCES):
            raise
    shutil.copyfile(source, dest)
    return "copy"
