"""Objects and uploads over HTTP: GET/HEAD with ranges, PUT, missing, OCI uploads."""
from __future__ import annotations

import os
import re
import secrets
from typing import Any

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    MalformedRangeHeader,
    RangeNotSatisfiable,
    RedirectResponse,
    Response,
)
from starlette.types import Receive, Scope, Send

from deltagen.digests import is_digest

from ..chunked import ChunkedView
from ..errors import BadRequest, Invalid, NotFound, TooLarge
from ..objectstore import ObjectStore
from .auth import require, token_owner
from .bodies import declared_length, json_body
from .conditional import etag_matches
from .errors import error_body
from .numbers import byte_count, decimal

IMMUTABLE = "public, max-age=31536000, immutable"


class ObjectResponse(FileResponse):
    """Starlette's FileResponse (Range, If-Range, multipart, 416) with 1 MiB reads:
    16x fewer thread-pool hops than its 64 KiB default on large objects.

    ``whole``: send the whole object whatever the Range header says (RFC 9110: a range
    unit the server does not support is ignored, not an error)."""

    chunk_size = 1 << 20

    def __init__(self, *args: Any, whole: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.whole = whole

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.whole:
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"range"]}
        await super().__call__(scope, receive, send)


class StreamedObjectResponse(Response):
    """An object from a backend without local files (S3), streamed with ``open_range``.

    The ranges were parsed and checked by ``_requested_ranges`` (Starlette's own parser,
    so the filesystem and S3 backends answer the same): ``[]`` is the whole object,
    one range is a 206 with ``Content-Range``, several a 206 ``multipart/byteranges``.
    Every read of the backend runs in the thread pool, one chunk at a time."""

    def __init__(self, store: ObjectStore | ChunkedView, digest: str, size: int, ranges: list[tuple[int, int]],
                 headers: dict[str, str]) -> None:
        super().__init__(status_code=206 if ranges else 200, headers=headers,
                         media_type="application/octet-stream")
        self.store, self.digest, self.size = store, digest, size
        self.ranges = ranges
        self.boundary = secrets.token_hex(13)
        if len(ranges) > 1:
            self.headers["content-type"] = f"multipart/byteranges; boundary={self.boundary}"
            self.headers["content-length"] = str(sum(len(self._part_header(a, b)) + (b - a) + 2 for a, b in ranges)
                                                 + len(self._closing()))
        else:
            start, end = ranges[0] if ranges else (0, size)
            if ranges:
                self.headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
            self.headers["content-length"] = str(end - start)

    def _part_header(self, start: int, end: int) -> bytes:
        return (f"--{self.boundary}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {start}-{end - 1}/{self.size}\r\n\r\n").encode("latin-1")

    def _closing(self) -> bytes:
        return f"--{self.boundary}--".encode("latin-1")

    async def _stream(self, send: Send, start: int, end: int) -> None:
        async for chunk in iterate_in_threadpool(self.store.open_range(self.digest, start, end)):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if len(self.ranges) > 1:
            for start, end in self.ranges:
                await send({"type": "http.response.body", "body": self._part_header(start, end), "more_body": True})
                await self._stream(send, start, end)
                await send({"type": "http.response.body", "body": b"\r\n", "more_body": True})
            await send({"type": "http.response.body", "body": self._closing(), "more_body": False})
            return
        start, end = self.ranges[0] if self.ranges else (0, self.size)
        await self._stream(send, start, end)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _digest(request: Request) -> str:
    digest = request.path_params["digest"]
    if not is_digest(digest):
        raise BadRequest("object names are 64 lowercase hex characters (BLAKE3-256)", code="bad_digest")
    return digest


async def get_object(request: Request) -> Response:
    require(request, "read")
    digest = _digest(request)
    repo = request.app.state.repo
    store: ObjectStore = repo.objects
    path = store.local_path(digest)
    etag = f'"{digest}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    found: int | None = None
    if path is not None:
        try:
            st = os.stat(path)
            found = st.st_size
        except FileNotFoundError:
            pass
    else:
        found = await run_in_threadpool(store.size, digest)
    chunked = None
    if found is None:
        # Not stored whole: a chunked file is read back from its chunks (cas/chunked.py).
        chunked = await run_in_threadpool(repo.chunk_indexes.get, store, repo.meta, digest)
        if chunked is None:
            raise NotFound(f"object {digest} not found", code="object_not_found")
        size = chunked.file_size
    else:
        size = found
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    prefix = repo.config.accel_redirect_prefix
    if prefix and found is not None and path is not None:
        # Behind nginx (docs/nginx-production-tokens.conf): the token was checked above; nginx
        # sends the file itself from an internal location (Range, If-Range, sendfile).
        return Response(status_code=200, media_type="application/octet-stream",
                        headers={**headers, "X-Accel-Redirect": f"{prefix}{digest[:2]}/{digest[2:]}"})
    ranges = _requested_ranges(request, etag, size)
    if isinstance(ranges, Response):
        return ranges
    if chunked is not None:
        return StreamedObjectResponse(ChunkedView(store, chunked), digest, size, ranges,
                                      {**headers, "Accept-Ranges": "bytes"})
    if path is not None:
        return ObjectResponse(path, headers=headers, stat_result=st, media_type="application/octet-stream",
                              whole=not ranges)
    if request.method == "GET" and len(ranges) <= 1 and repo.config.s3_presign_downloads:
        # S3 answers one range itself; several (multipart/byteranges) it does not, so those stay here.
        url = await run_in_threadpool(store.presigned_url, digest)
        if url is not None:
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    return StreamedObjectResponse(store, digest, size, ranges, {**headers, "Accept-Ranges": "bytes"})


def _requested_ranges(request: Request, etag: str, size: int) -> list[tuple[int, int]] | Response:
    """The byte ranges to send (``[]``: the whole object), or the JSON error for a bad Range.

    Starlette's parser decides (overlaps merged, too many ranges -> whole object); its
    FileResponse would answer bad ranges in plain text, so they are answered here as JSON."""
    header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if header is None or (if_range is not None and if_range != etag):
        return []  # no range, or If-Range says send the whole object
    if header.partition("=")[0].strip().lower() != "bytes":
        return []  # a unit we do not support is ignored (RFC 9110 14.2)
    try:
        return FileResponse._parse_range_header(header, size)
    except RangeNotSatisfiable:
        return JSONResponse(error_body("range_not_satisfiable", f"range {header!r} is outside the object",
                                       {"size": size}),
                            status_code=416, headers={"Content-Range": f"bytes */{size}", "Cache-Control": "no-store"})
    except MalformedRangeHeader as exc:
        return JSONResponse(error_body("bad_range", exc.content or "malformed Range header", None),
                            status_code=400, headers={"Cache-Control": "no-store"})


async def put_object(request: Request) -> Response:
    require(request, "publish")
    digest = _digest(request)
    repo = request.app.state.repo
    store: ObjectStore = repo.objects
    limit = repo.config.max_object_bytes
    declared = declared_length(request, limit)
    size_param = request.query_params.get("size")
    expected_size = declared
    if size_param is not None:
        expected_size = byte_count(size_param, limit, "object",
                                   BadRequest("?size must be a decimal byte count", code="bad_size"))
    if digest in await run_in_threadpool(repo.present, [digest]):  # present, and spared by GC
        # Already stored: drain nothing more than needed and answer at once.
        return JSONResponse({"blake3": digest, "created": False}, status_code=200,
                            headers={"Location": f"/v1/objects/{digest}"})
    writer = store.writer()
    try:
        async for chunk in request.stream():
            if expected_size is not None and writer.size + len(chunk) > expected_size:
                raise TooLarge(f"body is longer than the declared {expected_size} bytes", code="body_too_long")
            writer.write(chunk)
    except ClientDisconnect:
        writer.abort()
        raise BadRequest("client disconnected before the body was complete", code="truncated_body") from None
    except BaseException:
        writer.abort()  # nothing half-written stays in STORE/tmp; a full disk is 507 (handle_outage)
        raise
    committed = await run_in_threadpool(writer.commit, digest, expected_size)  # aborts itself on error
    ingested = repo.ingested(committed)
    request.app.state.metrics.ingested(ingested.size if ingested.created else 0)
    return JSONResponse({"blake3": digest, "size": ingested.size, "created": ingested.created},
                        status_code=201 if ingested.created else 200,
                        headers={"Location": f"/v1/objects/{digest}"})


async def missing_objects(request: Request) -> Response:
    require(request, "publish")
    repo = request.app.state.repo
    shape = Invalid('send {"objects": [<blake3 hex>, ...]}', code="bad_request")
    body = await json_body(request, repo.config.max_request_json_bytes * 16, not_object=shape)
    objects = body.get("objects")
    if not isinstance(objects, list) or not all(is_digest(o) for o in objects):
        raise shape
    if len(objects) > repo.config.max_missing_query:
        raise TooLarge(f"at most {repo.config.max_missing_query} objects per query")
    missing = await run_in_threadpool(repo.missing, objects)  # also spares what it finds from GC
    return JSONResponse({"missing": missing})


# ----------------------------------------------------------------- uploads (OCI-style)

_CONTENT_RANGE = re.compile(r"^(?:bytes )?([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?$")


def _upload_headers(upload_id: str, offset: int) -> dict[str, str]:
    headers = {"Location": f"/v1/uploads/{upload_id}", "Upload-Offset": str(offset),
               "Docker-Upload-UUID": upload_id, "Cache-Control": "no-store"}
    if offset > 0:
        headers["Range"] = f"0-{offset - 1}"
    return headers


async def start_upload(request: Request) -> Response:
    require(request, "publish")
    upload_id = await run_in_threadpool(request.app.state.uploads.start, token_owner(request))
    return Response(status_code=202, headers=_upload_headers(upload_id, 0))


async def upload_offset(request: Request) -> Response:
    require(request, "publish")
    upload_id = request.path_params["upload_id"]
    offset = await run_in_threadpool(request.app.state.uploads.offset, upload_id)
    return Response(status_code=204, headers=_upload_headers(upload_id, offset))


async def append_upload(request: Request) -> Response:
    require(request, "publish")
    upload_id = request.path_params["upload_id"]
    header = request.headers.get("content-range")
    start = end = None
    if header is not None:
        match = _CONTENT_RANGE.match(header.strip())
        if not match:
            raise BadRequest("Content-Range must be 'start-end' or 'bytes start-end/total'",
                             code="bad_content_range")
        start, end = decimal(match[1]), decimal(match[2])
        if start is None or end is None:
            raise BadRequest("Content-Range offsets are beyond any object this server stores",
                             code="bad_content_range")
        if end < start:
            raise BadRequest("Content-Range end is before its start", code="bad_content_range")
    try:
        offset = await request.app.state.uploads.append(upload_id, start, end, request.stream(),
                                                        token_owner(request))
    except ClientDisconnect:
        raise BadRequest("client disconnected; the upload keeps its previous offset",
                         code="truncated_body") from None
    return Response(status_code=202, headers=_upload_headers(upload_id, offset))


async def complete_upload(request: Request) -> Response:
    require(request, "publish")
    upload_id = request.path_params["upload_id"]
    uploads = request.app.state.uploads
    digest = request.query_params.get("blake3", "")
    offset = await run_in_threadpool(uploads.offset, upload_id)
    if request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers:
        offset = await uploads.append(upload_id, offset, None, request.stream(), token_owner(request))
    ingested = request.app.state.repo.ingested(
        await run_in_threadpool(uploads.complete, upload_id, digest))
    request.app.state.metrics.ingested(ingested.size if ingested.created else 0)
    return JSONResponse({"blake3": ingested.digest, "size": ingested.size, "created": ingested.created},
                        status_code=201, headers={"Location": f"/v1/objects/{ingested.digest}"})


async def cancel_upload(request: Request) -> Response:
    require(request, "publish")
    await run_in_threadpool(request.app.state.uploads.cancel, request.path_params["upload_id"])
    return Response(status_code=204)
