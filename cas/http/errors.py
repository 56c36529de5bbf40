"""HTTP errors: the one place a CasError becomes a JSON answer."""
from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import CasError, RangeNotSatisfiable, Unauthorized, storage_full


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "detail": detail}}


def error_response(exc: CasError) -> Response:
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="deltacas"'
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


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    full = storage_full(exc)  # a disk-full write anywhere: 507, not 500
    if full is not None:
        return error_response(full)
    return JSONResponse(error_body("internal", f"internal error: {type(exc).__name__}"), status_code=500)
