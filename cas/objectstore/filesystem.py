"""The filesystem object store: the embedded default backend of ``ObjectStore``.

``objects/ab/cdef...`` sharded by the first two hex characters.  An object is
written to a temp file in ``tmp/`` (same filesystem), hashed while written,
fsynced, made read-only and renamed into place, then the shard directory is
fsynced.  Nothing is visible before it is complete and verified; a killed
writer leaves only a temp file that ``sweep_temp`` removes.  ``link_or_copy``
puts an object's file elsewhere (checkouts, mirrors): a hardlink, or a copy
where links cannot be made.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from pathlib import Path
from typing import BinaryIO, Iterator

from deltagen.digests import CHUNK, hash_stream, is_digest
from deltagen.output import fsync_dir

from ..errors import Invalid, NotFound
from .interface import FsckReport
from .staging import StagedObjectStore

#: objects are read-only files
OBJECT_MODE = 0o444


class FilesystemObjectStore(StagedObjectStore):
    """Objects as read-only files under ``root/objects``; temp files in ``root/tmp``."""

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
        """The object's file (Invalid ``bad_digest`` for anything but a BLAKE3 hex digest)."""
        if not is_digest(digest):
            raise Invalid(f"not a BLAKE3 digest: {digest[:80]!r}", code="bad_digest")
        return self.objects_dir / digest[:2] / digest[2:]

    def exists(self, digest: str) -> bool:
        """Whether the object's file is there."""
        return self.path(digest).is_file()

    def size(self, digest: str) -> int | None:
        """The object's size in bytes, or None when it is not stored."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open(self, digest: str) -> BinaryIO:
        """The object's file, open for reading (NotFound ``object_not_found`` when absent)."""
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"object {digest} not found", code="object_not_found") from None

    def open_range(self, digest: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of the object's file, in chunks."""
        with self.open(digest) as fh:
            fh.seek(start)
            left = end - start
            while left > 0:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:
                    raise NotFound(f"object {digest} is shorter than {end} bytes", code="object_truncated")
                left -= len(chunk)
                yield chunk

    def local_path(self, digest: str) -> Path | None:
        """The object's own file (sendfile, hardlinks)."""
        return self.path(digest)

    @contextlib.contextmanager
    def local_copy(self, digest: str) -> Iterator[Path]:
        """The object's own (read-only) file: no copy is needed here."""
        path = self.path(digest)
        if not path.is_file():
            raise NotFound(f"object {digest} not found", code="object_not_found")
        yield path

    def presigned_url(self, digest: str) -> str | None:
        """None: the server sends filesystem objects itself."""
        return None

    # -- writing (ObjectWriter and ingest_* come from StagedObjectStore)
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

    def delete(self, digest: str) -> bool:
        """Remove the object's file; False if it was not there."""
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        fsync_dir(self.path(digest).parent)
        return True

    # -- maintenance
    def iter_digests(self) -> Iterator[str]:
        """Every stored object's digest, shard by shard, sorted."""
        for shard in sorted(self.objects_dir.iterdir()):
            if not shard.is_dir() or len(shard.name) != 2:
                continue
            for entry in sorted(shard.iterdir()):
                digest = shard.name + entry.name
                if is_digest(digest):
                    yield digest

    def usage(self) -> tuple[int, int]:
        """(objects, bytes) stored: one ``scandir`` per shard, no path object per object (the
        dashboard asks every few seconds; a ``Path`` per object churned the interpreter's
        table of interned strings, which pathlib adds every name to)."""
        count = total = 0
        with os.scandir(self.objects_dir) as shards:
            for shard in shards:
                if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(shard.path) as entries:
                    for entry in entries:
                        if is_digest(shard.name + entry.name):
                            count += 1
                            total += entry.stat(follow_symlinks=False).st_size
        return count, total

    def fsck(self, quarantine: bool = True) -> FsckReport:
        """Re-hash every object, move corrupt ones to ``quarantine/`` and make writable ones read-only."""
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


FICLONE = 0x40049409  # ioctl(dest_fd, FICLONE, src_fd): share extents copy-on-write (btrfs, XFS, ...)
_NO_CLONE = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EPERM,
             errno.EBADF, errno.ENOSYS)


def clone_or_copy(source: Path, dest: Path) -> str:
    """A new file at ``dest`` with ``source``'s bytes and its own inode: a reflink where the
    file system has them ("reflink"), else a copy ("copy").  Never shares the inode, so a
    write into ``dest`` can never change ``source``."""
    with open(source, "rb") as src, open(dest, "xb") as out:
        try:
            import fcntl
            fcntl.ioctl(out.fileno(), FICLONE, src.fileno())
            return "reflink"
        except (OSError, ImportError) as exc:
            if isinstance(exc, OSError) and exc.errno not in _NO_CLONE:
                raise
        out.seek(0)
        out.truncate()
        shutil.copyfileobj(src, out, 1 << 20)
    return "copy"


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
