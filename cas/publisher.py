"""``cas publish``: scan a tree, sign its manifest, store what is missing, record it.

Against a local store the files are ingested directly; against a server only
the objects it lacks are uploaded, several at once, large ones through
resumable uploads whose state survives an interrupted publish (it resumes
from the server's offset).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from casformat.canonical import canonical_bytes, document_digest
from deltagen.output import write_atomic

from . import releases
from .chunked import ChunkedSource, read_chunk
from .remote import RemoteError, make_client, request
from .repo import Repo
from .signing import sign
from .trees import ScannedTree, manifest_signed

SMALL_OBJECT = 8 << 20
CHUNK = 8 << 20
MISSING_BATCH = 10_000


@dataclass
class PublishResult:
    product: str
    version: str
    manifest: str
    files: int
    logical_bytes: int
    uploaded_objects: int = 0
    uploaded_bytes: int = 0
    created: bool = True
    status: str = "draft"
    extra: dict[str, Any] = field(default_factory=dict)


def signed_manifest(product: str, version: str, tree: ScannedTree,
                    keys: Ed25519PrivateKey | list[Ed25519PrivateKey]) -> dict[str, Any]:
    return sign(manifest_signed(product, version, tree), keys if isinstance(keys, list) else [keys])


def _same_release(existing: dict[str, Any], signed: dict[str, Any]) -> bool:
    """The same release apart from its ``created`` time (a re-run of the same publish)."""
    ours = {k: v for k, v in signed.items() if k != "created"}
    return {k: v for k, v in existing.items() if k != "created"} == ours


def publish_local(repo: Repo, tree: ScannedTree, envelope: dict[str, Any],
                  progress: Callable[[int], None] | None = None) -> PublishResult:
    signed = envelope["signed"]
    existing = repo.meta.get_release(signed["product"], signed["version"])
    if existing is not None and _same_release(releases.manifest_of(existing)["signed"], signed):
        # Identical tree published again (only the timestamp differs): nothing to do.
        return PublishResult(signed["product"], signed["version"], existing.manifest_digest, len(tree.entries),
                             tree.logical_bytes, 0, 0, False, existing.status)
    uploaded = uploaded_bytes = 0
    have = repo.present(tree.sources)
    for digest, path in tree.sources.items():
        if digest in have:
            continue
        ingested = repo.ingest_file(path, expected=digest)
        uploaded += int(ingested.created)
        uploaded_bytes += ingested.size if ingested.created else 0
        if progress:
            progress(ingested.size)
    for source in tree.chunked.values():
        objects, nbytes = _store_chunks_local(repo, source, progress)
        uploaded += objects
        uploaded_bytes += nbytes
    result = releases.publish(repo, signed["product"], signed["version"], canonical_bytes(envelope), "local")
    return PublishResult(signed["product"], signed["version"], document_digest(signed), len(tree.entries),
                         tree.logical_bytes, uploaded, uploaded_bytes, result.created, result.release.status)


def _ingest_exact(repo: Repo, digest: str, data: bytes) -> bool:
    """Store ``data`` as ``digest`` (refused unless it hashes to it); True when new."""
    writer = repo.objects.writer()
    try:
        writer.write(data)
    except BaseException:
        writer.abort()
        raise
    return repo.ingested(writer.commit(digest, len(data))).created


def _store_chunks_local(repo: Repo, source: ChunkedSource,
                        progress: Callable[[int], None] | None) -> tuple[int, int]:
    """The chunks of one file the store lacks, then its index: (objects, bytes) stored.
    One chunk in memory at a time; each checked against its digest as it is stored."""
    index = source.index
    have = repo.present([source.index_digest, *index.digests()])
    created = created_bytes = 0
    with open(source.path, "rb") as fh:
        for digest, offset, length in index:
            if digest not in have:
                fh.seek(offset)
                if _ingest_exact(repo, digest, fh.read(length)):
                    created += 1
                    created_bytes += length
                have.add(digest)
            if progress:
                progress(length)
    if source.index_digest not in have and _ingest_exact(repo, source.index_digest, source.index_bytes):
        created += 1
        created_bytes += len(source.index_bytes)
    return created, created_bytes


# --------------------------------------------------------------------------- remote

def _state_file(server: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deltacas" / "uploads"
    base.mkdir(parents=True, exist_ok=True)
    return base / (hashlib.sha256(server.encode()).hexdigest()[:16] + ".json")


class UploadState:
    """digest -> upload location, kept on disk so a killed publish resumes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, str] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            self.data = {}

    def _save(self) -> None:
        write_atomic(self.path, json.dumps(self.data).encode(), 0o600)

    def get(self, digest: str) -> str | None:
        return self.data.get(digest)

    def put(self, digest: str, location: str) -> None:
        self.data[digest] = location
        self._save()

    def drop(self, digest: str) -> None:
        if self.data.pop(digest, None) is not None:
            self._save()


async def _upload_small(client: httpx.AsyncClient, digest: str, path: Path, size: int) -> None:
    await request(client, "PUT", f"/v1/objects/{digest}", params={"size": str(size)},
                  content=path.read_bytes())


async def _upload_large(client: httpx.AsyncClient, digest: str, path: Path, size: int,
                        state: UploadState, progress: Callable[[int], None] | None) -> None:
    location = state.get(digest)
    offset = 0
    if location is not None:
        try:
            response = await request(client, "HEAD", location)
            offset = int(response.headers.get("upload-offset", "0"))
        except RemoteError:
            location = None
    if location is None:
        response = await request(client, "POST", "/v1/uploads")
        location = response.headers["location"]
        state.put(digest, location)
    if progress and offset:
        progress(offset)
    with open(path, "rb") as fh:
        fh.seek(offset)
        while offset < size:
            chunk = fh.read(CHUNK)
            if not chunk:
                raise RemoteError(0, "file_changed", f"{path} shrank while publishing")
            end = offset + len(chunk) - 1
            try:
                response = await request(client, "PATCH", location, content=chunk,
                                         headers={"Content-Range": f"{offset}-{end}"})
            except RemoteError as exc:
                if exc.http_status != 416 or not isinstance(exc.detail, dict):
                    raise
                offset = int(exc.detail["offset"])  # the server tells where it is
                fh.seek(offset)
                continue
            offset = int(response.headers["upload-offset"])
            if progress:
                progress(len(chunk))
    await request(client, "PUT", location, params={"blake3": digest})
    state.drop(digest)


async def publish_remote_async(server: str, token: str | None, tree: ScannedTree, envelope: dict[str, Any],
                               concurrency: int = 4,
                               progress: Callable[[int], None] | None = None) -> PublishResult:
    signed = envelope["signed"]
    product, version = signed["product"], signed["version"]
    state = UploadState(_state_file(server))
    async with make_client(server, token, timeout=300) as client:
        try:  # through the retrying helper like every other request (a refused connection is one line)
            known: httpx.Response | None = await request(client, "GET",
                                                         f"/v1/products/{product}/releases/{version}/manifest")
        except RemoteError as exc:
            if exc.http_status != 404:
                raise
            known = None
        if known is not None:
            try:
                existing = known.json()["signed"]
            except (ValueError, KeyError, TypeError):
                existing = None
            if isinstance(existing, dict) and _same_release(existing, signed):
                info = await request(client, "GET", f"/v1/products/{product}/releases/{version}")
                return PublishResult(product, version, document_digest(existing), len(tree.entries),
                                     tree.logical_bytes, 0, 0, False, info.json().get("status", "draft"))
        # Chunked files: their indexes and chunks are objects like any other (each once).
        chunk_at: dict[str, tuple[ChunkedSource, int]] = {}
        sizes = {e["blake3"]: e["size"] for e in signed["files"] if e["type"] == "file" and "chunks" not in e}
        for source in tree.chunked.values():
            sizes[source.index_digest] = len(source.index_bytes)
            for i in range(source.index.count):
                chunk_at.setdefault(source.index.digest(i), (source, i))
                sizes[source.index.digest(i)] = source.index.length(i)
        digests = list(tree.sources) + list(dict.fromkeys(
            d for s in tree.chunked.values() for d in (s.index_digest, *s.index.digests())))
        missing: list[str] = []
        for i in range(0, len(digests), MISSING_BATCH):
            response = await request(client, "POST", "/v1/objects/missing",
                                     json={"objects": digests[i:i + MISSING_BATCH]})
            missing.extend(response.json()["missing"])
        gate = asyncio.Semaphore(concurrency)
        indexes = {s.index_digest: s for s in tree.chunked.values()}

        async def one(digest: str) -> None:
            async with gate:
                if digest in indexes or digest in chunk_at:
                    data = (indexes[digest].index_bytes if digest in indexes
                            else read_chunk(*chunk_at[digest]))
                    await request(client, "PUT", f"/v1/objects/{digest}", params={"size": str(len(data))},
                                  content=data)
                    if progress:
                        progress(len(data))
                    return
                path, size = tree.sources[digest], sizes[digest]
                if size <= SMALL_OBJECT:
                    await _upload_small(client, digest, path, size)
                    if progress:
                        progress(size)
                else:
                    await _upload_large(client, digest, path, size, state, progress)

        await asyncio.gather(*(one(d) for d in missing))
        body = canonical_bytes(envelope)
        response = await request(client, "PUT", f"/v1/products/{product}/releases/{version}", content=body,
                                 headers={"Content-Type": "application/json"})
        answer = response.json()
    return PublishResult(product, version, document_digest(signed), len(tree.entries), tree.logical_bytes,
                         len(missing), sum(sizes[d] for d in missing), response.status_code == 201,
                         answer.get("status", "draft"))
