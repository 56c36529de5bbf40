"""Resumable uploads, as in the OCI distribution spec.

With the filesystem object store (``Uploads``) an upload is a file
``STORE/uploads/{id}`` that grows by appends at its current offset; completing it
verifies the BLAKE3 the client names and moves the file into the object store.
With the S3 object store (``SharedUploads``) replicas keep nothing of an upload:
its state is the ``uploads`` row in the shared metadata and each append is one part
object in the bucket (``{prefix}uploads/{id}/...``), recorded in ``upload_parts`` by
a compare-and-set on the upload's size; completing it streams the parts, in order,
through the object writer (hashed, verified, then installed).  An upload started on
one replica continues and completes on any other.  Abandoned uploads expire after
``upload_ttl_seconds`` of inactivity either way.
"""
from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from deltagen.digests import CHUNK, StreamHasher, hash_stream, is_digest

from .errors import (
    Conflict,
    DigestMismatch,
    Invalid,
    NotFound,
    RangeNotSatisfiable,
    StoreCorrupt,
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


def _over_quota(quota: int) -> TooLarge:
    return TooLarge(f"this token's uploads in progress would exceed {quota} bytes "
                    "(upload_max_bytes_per_token); complete or cancel some first",
                    detail={"quota": "upload_max_bytes_per_token", "limit": quota}, code="upload_quota")


def _checked_id(upload_id: str) -> str:
    """An upload id as ``start`` makes them (32 lowercase hex), else NotFound ``unknown_upload``."""
    if not (len(upload_id) == 32 and all(c in "0123456789abcdef" for c in upload_id)):
        raise NotFound("unknown upload", code="unknown_upload")
    return upload_id


class Uploads:
    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.dir = Path(repo.config.store) / "uploads"
        self.dir.mkdir(parents=True, exist_ok=True)
        # Running hash per upload while this process sees every append.
        self._hashers: dict[str, StreamHasher] = {}

    def _path(self, upload_id: str) -> Path:
        return self.dir / _checked_id(upload_id)

    def _existing(self, upload_id: str) -> Path:
        path = self._path(upload_id)
        if not path.exists() or not self.repo.meta.upload_exists(upload_id):
            raise NotFound(f"unknown or expired upload {upload_id}", code="unknown_upload")
        return path

    def _record_new(self, owner: str) -> str:
        """Record a new upload of ``owner`` (a token) within its ``upload_max_per_token``; its id."""
        upload_id = secrets.token_hex(16)
        limit = self.repo.config.upload_max_per_token
        if not self.repo.meta.create_upload(upload_id, owner, limit):
            raise TooManyRequests(f"this token has {limit} uploads in progress (upload_max_per_token); "
                                  "complete or cancel one, or wait for idle ones to expire",
                                  detail={"quota": "upload_max_per_token", "limit": limit}, code="upload_quota")
        return upload_id

    def start(self, owner: str = "") -> str:
        """A new upload of ``owner`` (a token), within its ``upload_max_per_token``."""
        upload_id = self._record_new(owner)  # record first: expire() removes unrecorded files
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
            try:
                written = await self._receive(upload_id, owner, offset, start, end, body, fh.fileno(), hasher)
            except BaseException:
                # Keep the upload at its previous, known-good offset (a full disk is answered
                # 507 by cas/http/errors.handle_outage).
                self._hashers.pop(upload_id, None)
                os.ftruncate(fh.fileno(), offset)
                self.repo.meta.touch_upload(upload_id, offset)  # give back what this append reserved
                raise
            if hasher is not None:
                self._hashers[upload_id] = hasher
            else:
                self._hashers.pop(upload_id, None)
            # Touch while still holding the lock, so a sweep cannot find it stale in between;
            # the upload now holds what it has (the rest of the reservation is given back).
            self.repo.meta.touch_upload(upload_id, offset + written)
        return offset + written

    def _reserve(self, upload_id: str, owner: str, offset: int, held: int, need: int, want: int) -> int:
        """Reserve up to ``want`` bytes of upload (at least ``need``; offsets from its start)
        within its token's ``upload_max_bytes_per_token``, for an append from ``offset`` that
        holds ``held`` so far: the check and the reservation are one transaction
        (``reserve_upload_bytes``), so parallel appends of one token cannot overshoot it.
        Returns what the append now holds; 413 ``upload_quota`` when ``need`` does not fit."""
        quota = self.repo.config.upload_max_bytes_per_token
        for size in dict.fromkeys((want, need)):
            if self.repo.meta.reserve_upload_bytes(upload_id, owner, size, quota):
                return size
        self._still_recorded(upload_id)
        raise _over_quota(quota)

    async def _receive(self, upload_id: str, owner: str, offset: int, start: int | None, end: int | None,
                       body: AsyncIterator[bytes], fd: int, hasher: StreamHasher | None = None,
                       held: list[int] | None = None) -> int:
        """Write a request body to ``fd``, within the object limit, the owner's byte quota and
        the Content-Range it declared; the bytes written.

        The bytes are reserved before they are written (``_reserve``: a declared length whole,
        else ``RESERVE_STEP`` at a time); ``held[0]``, when given, follows how far the
        reservation reaches, for the caller to give back what the append does not use."""
        written = 0
        limit = self.repo.config.max_object_bytes
        expected = None if end is None or start is None else end - start + 1
        reserved = offset
        if expected is not None and offset + expected <= limit:
            reserved = await asyncio.to_thread(self._reserve, upload_id, owner, offset, reserved,
                                               offset + expected, offset + expected)
        if held is not None:
            held[0] = reserved
        async for chunk in body:
            reach = offset + written + len(chunk)
            if reach > limit:
                raise TooLarge(f"upload exceeds the object limit of {limit} bytes")
            if expected is not None and written + len(chunk) > expected:
                raise Invalid(f"body is longer than Content-Range declares ({expected})",
                              code="size_mismatch")
            if reach > reserved:
                reserved = await asyncio.to_thread(self._reserve, upload_id, owner, offset, reserved, reach,
                                                   min(reach + RESERVE_STEP, limit))
                if held is not None:
                    held[0] = reserved
            _write_all(fd, chunk)
            if hasher is not None:
                hasher.update(chunk)
            written += len(chunk)
        if expected is not None and written != expected:
            raise Invalid(f"body has {written} bytes, Content-Range declares {expected}",
                          code="size_mismatch")
        return written

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


class SharedUploads(Uploads):
    """Uploads whose state is in the shared metadata and whose bytes are in the shared object
    store (the S3 backend): any replica continues, completes or cancels any upload."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.store: Any = repo.objects  # an S3ObjectStore: put_part, open_part, delete_part(s)
        self._hashers = {}

    def start(self, owner: str = "") -> str:
        """A new upload of ``owner`` (a token), within its ``upload_max_per_token``: a row, no bytes yet."""
        return self._record_new(owner)

    def _size(self, upload_id: str) -> int:
        size = self.repo.meta.upload_size(_checked_id(upload_id))
        if size is None:
            raise NotFound(f"unknown or expired upload {upload_id}", code="unknown_upload")
        return size

    def offset(self, upload_id: str) -> int:
        return self._size(upload_id)

    async def append(self, upload_id: str, start: int | None, end: int | None,
                     body: AsyncIterator[bytes], owner: str = "") -> int:
        """Append a body at ``start`` (must equal the current offset); new offset.

        The body is staged in a local temp file (limits checked as it arrives), stored as one
        part object, then recorded only if the upload still holds ``start`` bytes; if anything
        fails the part is deleted and the upload keeps its previous offset."""
        offset = await asyncio.to_thread(self._size, upload_id)
        if start is not None and start != offset:
            raise RangeNotSatisfiable(f"append starts at {start}, upload is at {offset}", offset=offset)
        fd, name = tempfile.mkstemp(dir=self.store.tmp_dir, prefix="part-")
        temp = Path(name)
        held = [offset]  # how far this append's reservation reaches (given back at the end)
        try:
            try:
                written = await self._receive(upload_id, owner, offset, start, end, body, fd, held=held)
                os.fsync(fd)
            finally:
                os.close(fd)
            if written == 0:
                await asyncio.to_thread(self.repo.meta.touch_upload, upload_id)
                return offset
            # The bucket and the database are reached from a worker thread, never the event loop.
            return await asyncio.to_thread(self._store_part, upload_id, offset, written, temp)
        finally:
            temp.unlink(missing_ok=True)
            if held[0] > offset:  # recorded or not, the part's bytes no longer need a reservation
                # (not awaited: this runs also when the request is being cancelled)
                self.repo.meta.release_append_bytes(upload_id, held[0] - offset)

    def _reserve(self, upload_id: str, owner: str, offset: int, held: int, need: int, want: int) -> int:
        """A shared upload's recorded size is its offset (what its parts hold): an append in
        flight reserves what it may add in the ``reserved`` column instead
        (``reserve_append_bytes``, a transaction with the token's rows locked, on any
        replica), so parallel appends, on one replica or several, cannot pass the quota."""
        quota = self.repo.config.upload_max_bytes_per_token
        for size in dict.fromkeys((want, need)):
            if self.repo.meta.reserve_append_bytes(upload_id, owner, size - held, quota):
                return size
        if self.repo.meta.upload_size(upload_id) is None:
            raise NotFound(f"unknown or expired upload {upload_id}", code="unknown_upload")
        raise _over_quota(quota)

    def _store_part(self, upload_id: str, offset: int, written: int, temp: Path) -> int:
        key = self.store.put_part(upload_id, offset, temp)
        try:
            recorded = self.repo.meta.record_upload_part(upload_id, offset, written, key)
        except BaseException:
            self.store.delete_part(key)
            raise
        if recorded is None:
            self.store.delete_part(key)
            raise NotFound(f"unknown or expired upload {upload_id}", code="unknown_upload")
        if not recorded:
            self.store.delete_part(key)
            now = self.repo.meta.upload_size(upload_id)
            raise Conflict("another append to this upload was recorded first; ask for its offset and resume",
                           detail={"offset": now}, code="upload_busy")
        return offset + written

    def complete(self, upload_id: str, digest: str) -> Ingested:
        """Stream the parts in order through the object writer: hashed, verified, installed."""
        if not is_digest(digest):
            raise Invalid("complete an upload with ?blake3=<64 lowercase hex>", code="bad_digest")
        size = self._size(upload_id)
        parts = self.repo.meta.upload_parts(upload_id)
        at = 0
        for part_start, part_size, _ in parts:
            if part_start != at:
                raise StoreCorrupt(f"upload {upload_id}: parts do not follow each other at byte {at}")
            at += part_size
        if at != size:
            raise StoreCorrupt(f"upload {upload_id}: parts hold {at} bytes, the upload {size}")
        writer = self.repo.objects.writer()
        try:
            for _, part_size, key in parts:
                body = self.store.open_part(key)
                try:
                    got = 0
                    for chunk in body.iter_chunks(CHUNK):
                        writer.write(chunk)
                        got += len(chunk)
                finally:
                    body.close()
                if got != part_size:
                    raise StoreCorrupt(f"upload part {key} holds {got} bytes, recorded {part_size}")
        except BaseException:
            writer.abort()
            raise
        try:
            ingested = writer.commit(digest, expected_size=size)
        except DigestMismatch as exc:
            self.cancel(upload_id)
            actual = exc.detail.get("actual") if isinstance(exc.detail, dict) else None
            raise DigestMismatch(f"upload hashes to {actual}, not {digest}; upload discarded",
                                 detail={"expected": digest, "actual": actual}) from None
        self.cancel(upload_id, missing_ok=True)
        return ingested

    def cancel(self, upload_id: str, missing_ok: bool = False) -> None:
        _checked_id(upload_id)
        existed = self.repo.meta.delete_upload(upload_id)
        if self.store.delete_parts(upload_id):
            existed = True
        if not existed and not missing_ok:
            raise NotFound(f"unknown upload {upload_id}", code="unknown_upload")

    def expire(self) -> int:
        """Remove uploads idle longer than the TTL (rows and parts), and parts of no upload."""
        removed = 0
        for upload_id in self.repo.meta.stale_uploads(self.repo.config.upload_ttl_seconds):
            try:
                self.cancel(upload_id)
                removed += 1
            except NotFound:
                pass
        # List the parts before reading the records: start() records an upload before any part exists.
        with_parts = self.store.part_upload_ids()
        known = set(self.repo.meta.all_uploads())
        for upload_id in with_parts - known:
            self.store.delete_parts(upload_id)
            removed += 1
        return removed


def open_uploads(repo: Repo) -> Uploads:
    """Uploads kept where the store's replicas can all reach them: parts in the bucket with
    the S3 object store, files under ``STORE/uploads`` with the filesystem one."""
    if repo.config.object_store == "s3":
        return SharedUploads(repo)
    return Uploads(repo)
