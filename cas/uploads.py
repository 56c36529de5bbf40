"""Resumable uploads, as in the OCI distribution spec.

An upload is a file ``STORE/uploads/{id}`` that grows by appends at its
current offset; completing it verifies the BLAKE3 the client names and moves
the file into the object store.  Abandoned uploads expire after
``upload_ttl_seconds`` of inactivity.
"""
from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

from deltagen.digests import StreamHasher, hash_stream, is_digest

from .errors import (
    Conflict,
    DigestMismatch,
    Invalid,
    NotFound,
    RangeNotSatisfiable,
    TooLarge,
    TooManyRequests,
)
from .objectstore import Ingested
from .repo import Repo

#: bytes an append of unknown length reserves at a time against its token's quota (one
#: transaction each; a declared length, Content-Range, is reserved whole before the body)
RESERVE_STEP = 8 << 20


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Uploads:
    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.dir = Path(repo.config.store) / "uploads"
        self.dir.mkdir(parents=True, exist_ok=True)
        # Running hash per upload while this process sees every append.
        self._hashers: dict[str, StreamHasher] = {}

    def _path(self, upload_id: str) -> Path:
        if not (len(upload_id) == 32 and all(c in "0123456789abcdef" for c in upload_id)):
            raise NotFound("unknown upload", code="unknown_upload")
        return self.dir / upload_id

    def _existing(self, upload_id: str) -> Path:
        path = self._path(upload_id)
        if not path.exists() or not self.repo.meta.upload_exists(upload_id):
            raise NotFound(f"unknown or expired upload {upload_id}", code="unknown_upload")
        return path

    def start(self, owner: str = "") -> str:
        """A new upload of ``owner`` (a token), within its ``upload_max_per_token``."""
        upload_id = secrets.token_hex(16)
        limit = self.repo.config.upload_max_per_token
        # record first: expire() removes unrecorded files
        if not self.repo.meta.create_upload(upload_id, owner, limit):
            raise TooManyRequests(f"this token has {limit} uploads in progress (upload_max_per_token); "
                                  "complete or cancel one, or wait for idle ones to expire",
                                  detail={"quota": "upload_max_per_token", "limit": limit}, code="upload_quota")
        self._path(upload_id).touch(mode=0o600, exist_ok=False)
        self._hashers[upload_id] = StreamHasher()
        return upload_id

    def offset(self, upload_id: str) -> int:
        return self._existing(upload_id).stat().st_size

    async def append(self, upload_id: str, start: int | None, end: int | None,
                     body: AsyncIterator[bytes], owner: str = "") -> int:
        """Append a body at ``start`` (must equal the current offset); new offset.

        The bytes of ``owner``'s uploads in progress stay within ``upload_max_bytes_per_token``
        (413 ``upload_quota``); a full disk is 507 ``insufficient_storage``.  Either way the
        upload is cut back to its previous offset: nothing half-written stays."""
        path = self._existing(upload_id)
        # Unbuffered: every byte is on its way to the disk when write returns, so a full disk
        # fails the write itself, and cutting back to ``offset`` leaves no buffered remains.
        with open(path, "r+b", buffering=0) as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict("another append to this upload is in progress", code="upload_busy") from None
            self._still_recorded(upload_id)
            offset = os.fstat(fh.fileno()).st_size
            if start is not None and start != offset:
                raise RangeNotSatisfiable(f"append starts at {start}, upload is at {offset}", offset=offset)
            hasher = self._hashers.get(upload_id)
            if hasher is not None and hasher.size != offset:
                hasher = None
            fh.seek(offset)
            written = 0
            limit = self.repo.config.max_object_bytes
            expected = None if end is None or start is None else end - start + 1
            reserved = offset
            try:
                if expected is not None and offset + expected <= limit:
                    reserved = self._reserve(upload_id, owner, offset + expected, offset + expected)
                async for chunk in body:
                    if offset + written + len(chunk) > limit:
                        raise TooLarge(f"upload exceeds the object limit of {limit} bytes")
                    if expected is not None and written + len(chunk) > expected:
                        raise Invalid(f"body is longer than Content-Range declares ({expected})",
                                      code="size_mismatch")
                    if offset + written + len(chunk) > reserved:
                        reserved = self._reserve(upload_id, owner, offset + written + len(chunk),
                                                 min(offset + written + len(chunk) + RESERVE_STEP, limit))
                    _write_all(fh.fileno(), chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    written += len(chunk)
                if expected is not None and written != expected:
                    raise Invalid(f"body has {written} bytes, Content-Range declares {expected}",
                                  code="size_mismatch")
            except BaseException:
                # Keep the upload at its previous, known-good offset (a full disk is answered
                # 507 by cas/http/errors.handle_outage).
                self._hashers.pop(upload_id, None)
                os.ftruncate(fh.fileno(), offset)
                if reserved != offset:  # give back what this append reserved
                    self.repo.meta.touch_upload(upload_id, offset)
                raise
            if hasher is not None:
                self._hashers[upload_id] = hasher
            else:
                self._hashers.pop(upload_id, None)
            # Touch while still holding the lock, so a sweep cannot find it stale in between;
            # the upload now holds what it has (the rest of the reservation is given back).
            self.repo.meta.touch_upload(upload_id, offset + written)
        return offset + written

    def _reserve(self, upload_id: str, owner: str, need: int, want: int) -> int:
        """Reserve ``want`` bytes for the upload (at least ``need``) within its token's
        ``upload_max_bytes_per_token``: the check and the reservation are one transaction
        (``reserve_upload_bytes``), so parallel appends of one token cannot overshoot it.
        Returns the bytes reserved; 413 ``upload_quota`` when ``need`` does not fit."""
        quota = self.repo.config.upload_max_bytes_per_token
        for size in dict.fromkeys((want, need)):
            if self.repo.meta.reserve_upload_bytes(upload_id, owner, size, quota):
                return size
        self._still_recorded(upload_id)
        raise TooLarge(f"this token's uploads in progress would exceed {quota} bytes "
                       "(upload_max_bytes_per_token); complete or cancel some first",
                       detail={"quota": "upload_max_bytes_per_token", "limit": quota}, code="upload_quota")

    def _still_recorded(self, upload_id: str) -> None:
        """After taking the lock: the upload may have been expired or cancelled meanwhile."""
        if not self.repo.meta.upload_exists(upload_id):
            raise NotFound(f"unknown or expired upload {upload_id}", code="unknown_upload")

    def complete(self, upload_id: str, digest: str) -> Ingested:
        if not is_digest(digest):
            raise Invalid("complete an upload with ?blake3=<64 lowercase hex>", code="bad_digest")
        path = self._existing(upload_id)
        with open(path, "r+b") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict("an append to this upload is in progress", code="upload_busy") from None
            self._still_recorded(upload_id)
            size = os.fstat(fh.fileno()).st_size
            hasher = self._hashers.get(upload_id)
            actual = hasher.blake3 if hasher is not None and hasher.size == size else hash_stream(fh).blake3
            if actual != digest:
                self.cancel(upload_id)
                raise DigestMismatch(f"upload hashes to {actual}, not {digest}; upload discarded",
                                     detail={"expected": digest, "actual": actual})
            os.fsync(fh.fileno())
        created = self.repo.objects.install(path, digest)
        self.repo.meta.delete_upload(upload_id)
        self._hashers.pop(upload_id, None)
        return Ingested(digest, size, created)

    def cancel(self, upload_id: str) -> None:
        path = self._path(upload_id)
        existed = self.repo.meta.delete_upload(upload_id)
        self._hashers.pop(upload_id, None)
        if path.exists():
            path.unlink()
            existed = True
        if not existed:
            raise NotFound(f"unknown upload {upload_id}", code="unknown_upload")

    def expire(self) -> int:
        """Remove uploads idle longer than the TTL, and files with no record."""
        removed = 0
        ttl = self.repo.config.upload_ttl_seconds
        for upload_id in self.repo.meta.stale_uploads(ttl):
            try:
                fh = open(self._path(upload_id), "rb")
            except (FileNotFoundError, NotFound):
                fh = None
            try:
                if fh is not None:
                    try:
                        # An append holds this lock while it streams: the upload is not abandoned.
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    if upload_id not in self.repo.meta.stale_uploads(ttl):
                        continue  # an append finished and touched it since we looked
                self.cancel(upload_id)
                removed += 1
            except NotFound:
                pass
            finally:
                if fh is not None:
                    fh.close()
        # List the files before reading the records: start() records an upload before it
        # creates the file, so every file listed here that is live has a record by now.
        entries = list(self.dir.iterdir())
        known = set(self.repo.meta.all_uploads())
        for entry in entries:
            if entry.name not in known:
                entry.unlink(missing_ok=True)
                removed += 1
        return removed
