"""The S3 object store: objects in any S3-compatible service (AWS S3, Ceph radosgw, MinIO...).

Objects keep their BLAKE3 names: key ``{s3_prefix}objects/ab/cdef...``, the
same sharding as the filesystem backend, so a bucket can be synced to or from
a filesystem store with any S3 tool.  Writes are staged exactly like the
filesystem backend's (``cas/objectstore/staging.py``: temp file under
``STORE/tmp``, hashed while streamed, bounded memory); only a verified file is
uploaded, as one PUT or a multipart upload above ``s3_multipart_threshold_bytes``.
S3 makes an object visible only when its PUT or CompleteMultipartUpload
succeeds, so a reader never sees a partial object; a killed writer leaves at
most an incomplete multipart upload, which ``sweep_temp`` aborts.  The size is
checked after the upload (HEAD) and the digest rides along as
``x-amz-meta-blake3`` for other tools.

Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_PROFILE...) through botocore's usual chain, never from
``config.toml``.
"""
from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator, cast

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from deltagen.digests import CHUNK, StreamHasher, is_digest

from ..errors import Invalid, NotFound, StoreCorrupt
from .interface import FsckReport
from .staging import StagedObjectStore

if TYPE_CHECKING:
    from ..config import Config

_MISSING = {"404", "NoSuchKey", "NotFound"}


def _is_missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


class S3ObjectStore(StagedObjectStore):
    """Objects in ``bucket`` under ``prefix``; temp files and local copies in ``root/tmp``."""

    def __init__(self, root: Path, bucket: str, prefix: str = "", endpoint: str | None = None,
                 region: str | None = None, max_object_bytes: int = 16 << 30,
                 multipart_threshold: int = 64 << 20, multipart_chunk: int = 16 << 20,
                 presign_seconds: int = 0, head_concurrency: int = 16) -> None:
        if not bucket:
            raise ValueError("object_store = \"s3\" needs s3_bucket")
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.max_object_bytes = max_object_bytes
        self.presign_seconds = presign_seconds
        self.head_concurrency = head_concurrency
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                       multipart_chunksize=multipart_chunk, use_threads=True)
        boto_config = BotoConfig(retries={"max_attempts": 5, "mode": "standard"},
                                 max_pool_connections=max(head_concurrency, 10),
                                 # Path-style addressing for radosgw, MinIO and moto on a bare endpoint.
                                 s3={"addressing_style": "path" if endpoint else "auto"})
        self.client: Any = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region,
                                                          config=boto_config)

    @classmethod
    def from_config(cls, config: Config) -> S3ObjectStore:
        """The store the ``s3_*`` settings of ``config.toml`` describe."""
        return cls(Path(config.store), config.s3_bucket, config.s3_prefix, config.s3_endpoint or None,
                   config.s3_region or None, config.max_object_bytes, config.s3_multipart_threshold_bytes,
                   config.s3_multipart_chunk_bytes,
                   config.s3_presign_seconds if config.s3_presign_downloads else 0)

    # -- naming: the one function from digest to key
    def key(self, digest: str) -> str:
        """The object's key (Invalid ``bad_digest`` for anything but a BLAKE3 hex digest)."""
        if not is_digest(digest):
            raise Invalid(f"not a BLAKE3 digest: {digest[:80]!r}", code="bad_digest")
        return f"{self.prefix}objects/{digest[:2]}/{digest[2:]}"

    def _head(self, digest: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], self.client.head_object(Bucket=self.bucket, Key=self.key(digest)))
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise

    def exists(self, digest: str) -> bool:
        """Whether the bucket holds the object (one HEAD)."""
        return self._head(digest) is not None

    def size(self, digest: str) -> int | None:
        """The object's size in bytes (one HEAD), or None when it is not stored."""
        head = self._head(digest)
        return None if head is None else int(head["ContentLength"])

    def missing(self, digests: list[str]) -> list[str]:
        """Which of ``digests`` are not stored, HEADs run ``head_concurrency`` at a time."""
        unique = list(dict.fromkeys(digests))
        if len(unique) < 4:
            return [d for d in unique if not self.exists(d)]
        with ThreadPoolExecutor(max_workers=self.head_concurrency) as pool:
            present = list(pool.map(self.exists, unique))
        return [d for d, here in zip(unique, present) if not here]

    def _get(self, digest: str, byte_range: str | None = None) -> Any:
        kwargs = {"Range": byte_range} if byte_range else {}
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(digest), **kwargs)
        except ClientError as exc:
            if _is_missing(exc):
                raise NotFound(f"object {digest} not found", code="object_not_found") from None
            raise

    def open(self, digest: str) -> BinaryIO:
        """The object's body, streamed from one GET (NotFound ``object_not_found`` when absent)."""
        return cast(BinaryIO, self._get(digest)["Body"])

    def open_range(self, digest: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)``: one ranged GET, streamed."""
        if end <= start:
            return
        body = self._get(digest, f"bytes={start}-{end - 1}")["Body"]
        try:
            left = end - start
            for chunk in body.iter_chunks(CHUNK):
                left -= len(chunk)
                yield chunk
            if left != 0:
                raise StoreCorrupt(f"object {digest}: ranged read returned {end - start - left} bytes, "
                                   f"not {end - start}")
        finally:
            body.close()

    def local_path(self, digest: str) -> Path | None:
        """None: S3 objects have no local file."""
        return None

    @contextlib.contextmanager
    def local_copy(self, digest: str) -> Iterator[Path]:
        """Download into ``STORE/tmp``, verifying the digest on the way; removed after the block."""
        with self._temp_file("get-") as path:
            hasher = StreamHasher()
            body = self._get(digest)["Body"]
            try:
                with open(path, "wb") as fh:
                    for chunk in body.iter_chunks(CHUNK):
                        fh.write(chunk)
                        hasher.update(chunk)
            finally:
                body.close()
            if hasher.blake3 != digest:
                raise StoreCorrupt(f"object {digest} in the bucket hashes to {hasher.blake3}",
                                   code="object_corrupt")
            os.chmod(path, 0o444)
            yield path

    def presigned_url(self, digest: str) -> str | None:
        """A presigned GET URL when ``s3_presign_downloads`` is on, else None."""
        if not self.presign_seconds:
            return None
        return cast(str, self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(digest)},
            ExpiresIn=self.presign_seconds))

    # -- writing (ObjectWriter and ingest_* come from StagedObjectStore)
    def install(self, temp_path: Path, digest: str) -> bool:
        """Upload a complete, verified temp file; the object appears whole or not at all."""
        try:
            if self.exists(digest):
                return False
            size = temp_path.stat().st_size
            self.client.upload_file(str(temp_path), self.bucket, self.key(digest), Config=self.transfer,
                                    ExtraArgs={"ContentType": "application/octet-stream",
                                               "Metadata": {"blake3": digest}})
            stored = self.size(digest)
            if stored != size:
                raise StoreCorrupt(f"object {digest}: the bucket holds {stored} bytes after uploading {size}")
            return True
        finally:
            temp_path.unlink(missing_ok=True)

    # -- parts of uploads in progress (cas/uploads.py, SharedUploads): any replica can add or read them
    def part_prefix(self, upload_id: str) -> str:
        """Where an upload's parts live: ``{prefix}uploads/{id}/``."""
        if not (len(upload_id) == 32 and all(c in "0123456789abcdef" for c in upload_id)):
            raise Invalid(f"not an upload id: {upload_id[:80]!r}", code="unknown_upload")
        return f"{self.prefix}uploads/{upload_id}/"

    def put_part(self, upload_id: str, start: int, path: Path) -> str:
        """Store a local file as a new part of an upload; its key (unique, never overwritten)."""
        key = f"{self.part_prefix(upload_id)}{start:020d}-{os.urandom(8).hex()}"
        self.client.upload_file(str(path), self.bucket, key, Config=self.transfer,
                                ExtraArgs={"ContentType": "application/octet-stream"})
        return key

    def open_part(self, key: str) -> Any:
        """A part's body, streamed (``iter_chunks``, ``close``)."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if _is_missing(exc):
                raise StoreCorrupt(f"upload part {key} is missing from the bucket", code="upload_part_missing") \
                    from None
            raise

    def delete_part(self, key: str) -> None:
        """Remove one part (a lost compare-and-set, or an append that failed after storing it)."""
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_parts(self, upload_id: str) -> int:
        """Remove every part of an upload, recorded or not; how many."""
        removed = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.part_prefix(upload_id)):
            for item in page.get("Contents", ()):
                self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
                removed += 1
        return removed

    def part_upload_ids(self) -> set[str]:
        """The uploads that have parts in the bucket."""
        base = f"{self.prefix}uploads/"
        out: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base, Delimiter="/"):
            for common in page.get("CommonPrefixes", ()):
                out.add(common["Prefix"][len(base):].rstrip("/"))
        return out

    def delete(self, digest: str) -> bool:
        """Remove the object; False if the bucket did not hold it."""
        if not self.exists(digest):
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.key(digest))
        return True

    # -- maintenance
    def _listing(self) -> Iterator[tuple[str, int]]:
        base = f"{self.prefix}objects/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", ()):
                rest = item["Key"][len(base):]
                shard, _, name = rest.partition("/")
                if len(shard) == 2 and is_digest(shard + name):
                    yield shard + name, int(item["Size"])

    def iter_digests(self) -> Iterator[str]:
        """Every stored object's digest, from the bucket listing."""
        for digest, _ in self._listing():
            yield digest

    def usage(self) -> tuple[int, int]:
        """(objects, bytes) stored, from the bucket listing."""
        count = total = 0
        for _, size in self._listing():
            count += 1
            total += size
        return count, total

    def fsck(self, quarantine: bool = True) -> FsckReport:
        """Download and re-hash every object; move corrupt ones to ``{prefix}quarantine/``."""
        checked = total = 0
        corrupt: list[str] = []
        moved: list[str] = []
        for digest, _ in list(self._listing()):
            hasher = StreamHasher()
            body = self._get(digest)["Body"]
            try:
                for chunk in body.iter_chunks(CHUNK):
                    hasher.update(chunk)
            finally:
                body.close()
            checked += 1
            total += hasher.size
            if hasher.blake3 != digest:
                corrupt.append(digest)
                if quarantine:
                    target = f"{self.prefix}quarantine/{digest}.{int(time.time())}"
                    self.client.copy_object(Bucket=self.bucket, Key=target,
                                            CopySource={"Bucket": self.bucket, "Key": self.key(digest)})
                    self.client.delete_object(Bucket=self.bucket, Key=self.key(digest))
                    moved.append(f"s3://{self.bucket}/{target}")
        stray = sum(1 for _ in self.tmp_dir.iterdir())
        return FsckReport(checked, total, corrupt, moved, stray)

    def sweep_temp(self, older_than: float = 3600.0) -> int:
        """Local temp files, and multipart uploads that a killed writer never completed."""
        removed = super().sweep_temp(older_than)
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}objects/"):
            for upload in page.get("Uploads", ()):
                if upload["Initiated"] < cutoff:
                    with contextlib.suppress(ClientError):
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        removed += 1
        return removed
