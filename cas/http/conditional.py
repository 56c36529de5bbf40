"""Conditional requests and bounded bodies: the one place for both."""
from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from ..errors import BadRequest, TooLarge


def etag_matches(header: str | None, etag: str) -> bool:
    """``If-None-Match`` uses weak comparison: W/"x" matches "x"."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == bare for candidate in header.split(","))


def declared_length(request: Request, limit: int) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise BadRequest("bad Content-Length", code="bad_content_length")
    length = int(value)
    if length > limit:
        raise TooLarge(f"body of {length} bytes exceeds the limit of {limit}")
    return length


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes before and while reading."""
    declared_length(request, limit)
    parts: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise TooLarge(f"body exceeds the limit of {limit} bytes")
            parts.append(chunk)
    except ClientDisconnect:
        raise BadRequest("client disconnected before the body was complete", code="truncated_body") from None
    return b"".join(parts)
