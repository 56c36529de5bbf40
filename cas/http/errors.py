"""HTTP errors: the one place a CasError becomes a JSON answer."""
from __future__ import annotations

import sqlite3
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import CasError, RangeNotSatisfiable, Unauthorized, Unavailable, storage_full
from ..metadata.errors import metadata_unavailable


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "detail": detail}}


def error_response(exc: CasError) -> Response:
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="deltacas"'
    if isinstance(exc, Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, RangeNotSatisfiable):
        headers["Range"] = f"0-{exc.offset - 1}" if exc.offset else "0-0"
        headers["Upload-Offset"] = str(exc.offset)
    detail = exc.detail
    if isinstance(exc, RangeNotSatisfiable):
        detail = {"offset": exc.offset, **(detail if isinstance(detail, dict) else {})}
    return JSONResponse(error_body(exc.code, exc.message, detail), status_code=exc.status, headers=headers)


async def handle_cas_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CasError)
    return error_response(exc)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                        headers=dict(exc.headers or {}))


def outage_classes() -> tuple[type[Exception], ...]:
    """The exception classes ``handle_outage`` answers (registered by ``cas/http/stack.py``)."""
    classes: list[type[Exception]] = [OSError, sqlite3.OperationalError]
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        pass
    else:
        classes += [psycopg.OperationalError, psycopg.InterfaceError]
    return tuple(classes)


async def handle_outage(request: Request, exc: Exception) -> Response:
    """A full disk (507) or an unavailable database (503 + Retry-After, which clients retry),
    answered like any CasError; anything else of these classes stays a 500 ``internal``."""
    mapped = storage_full(exc) or metadata_unavailable(exc)
    if mapped is None:
        raise exc
    return error_response(mapped)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    return JSONResponse(error_body("internal", f"internal error: {type(exc).__name__}"), status_code=500)
