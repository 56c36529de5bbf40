"""Conditional requests and content negotiation: the one place ``If-None-Match`` is compared
and ``Accept-Encoding`` read."""
from __future__ import annotations

import gzip
from collections.abc import Mapping

from starlette.responses import Response

#: manifests and delta documents this large or larger go gzipped to a client that accepts it
GZIP_MIN_BYTES = 1024


def etag_matches(header: str | None, etag: str) -> bool:
    """``If-None-Match`` uses weak comparison: W/"x" matches "x"."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == bare for candidate in header.split(","))


def accepts_gzip(header: str | None) -> bool:
    """Whether ``Accept-Encoding`` takes gzip (``gzip``, ``x-gzip`` or ``*`` without ``q=0``)."""
    for item in (header or "").split(","):
        name, *params = (part.strip().lower() for part in item.split(";"))
        if name in ("gzip", "x-gzip", "*"):
            q = next((p[2:].strip() for p in params if p.startswith("q=")), "1")
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


def document_response(request_headers: Mapping[str, str], body: bytes, etag: str, cache: str,
                      compressible: bool = False) -> Response:
    """A JSON document with its ETag and Cache-Control; 304 on a matching ``If-None-Match``.
    ``compressible``: gzipped (deterministic bytes, weak ETag, ``Vary: Accept-Encoding``) when
    the client accepts it -- a small update's delta document is often larger than its patches."""
    headers = {"ETag": etag, "Cache-Control": cache}
    if compressible:
        headers["Vary"] = "Accept-Encoding"
    if etag_matches(request_headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if compressible and len(body) >= GZIP_MIN_BYTES and accepts_gzip(request_headers.get("accept-encoding")):
        body = gzip.compress(body, 6, mtime=0)
        headers.update({"Content-Encoding": "gzip", "ETag": "W/" + etag.removeprefix("W/")})
    return Response(body, media_type="application/json", headers=headers)
