"""Request bodies: bounded before and while they are read, and JSON bodies parsed in one place."""
from __future__ import annotations

from typing import Any

from starlette.requests import ClientDisconnect, Request

from casformat.canonical import MAX_DEPTH, parse_json
from casformat.errors import DocumentError

from ..errors import BadRequest, CasError, TooLarge
from .numbers import byte_count


def declared_length(request: Request, limit: int) -> int | None:
    """The body's ``Content-Length``, refused when malformed or above ``limit``; None when absent."""
    value = request.headers.get("content-length")
    if value is None:
        return None
    return byte_count(value, limit, "body", BadRequest("bad Content-Length", code="bad_content_length"))


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


async def json_body(request: Request, limit: int | None = None, *, max_depth: int = MAX_DEPTH,
                    not_object: CasError | None = None, blank: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request's JSON object: read within ``limit`` bytes (default ``max_request_json_bytes``), parsed.

    Malformed JSON (duplicate keys, floats, nesting deeper than ``max_depth``...) is
    ``400 malformed_json``; a value other than an object raises ``not_object`` (default
    ``400 bad_request``).  A body of only whitespace is ``blank`` when one is given."""
    if limit is None:
        limit = request.app.state.config.max_request_json_bytes
    raw = await read_body(request, limit)
    if blank is not None and not raw.strip():
        return blank
    try:
        body = parse_json(raw, max_depth=max_depth)
    except DocumentError as exc:
        raise BadRequest(exc.message, code="malformed_json") from None
    if not isinstance(body, dict):
        raise not_object or BadRequest("send a JSON object", code="bad_request")
    return body
