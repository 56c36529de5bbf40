"""The server's error hierarchy: one code and one HTTP status per error.

Handlers raise these; ``cas.http.errors`` turns them into
``{"error": {"code", "message", "detail"}}`` answers and the CLI into a one-line
reason.  Document errors from ``client.errors`` map here via ``from_document``.
"""
from __future__ import annotations

import errno

from casformat.errors import DocumentError, DocumentTooLarge, SignatureError


class CasError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, detail: object = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if code is not None:
            self.code = code


class BadRequest(CasError):
    status, code = 400, "bad_request"


class Unauthorized(CasError):
    status, code = 401, "unauthorized"


class Forbidden(CasError):
    status, code = 403, "forbidden"


class NotFound(CasError):
    status, code = 404, "not_found"


class Conflict(CasError):
    status, code = 409, "conflict"


class TooLarge(CasError):
    status, code = 413, "too_large"


class RangeNotSatisfiable(CasError):
    status, code = 416, "range_not_satisfiable"

    def __init__(self, message: str, offset: int, detail: object = None) -> None:
        super().__init__(message, detail)
        self.offset = offset


class TooManyRequests(CasError):
    status, code = 429, "rate_limited"


class InsufficientStorage(CasError):
    """The store's file system is full (ENOSPC) or over its disk quota (EDQUOT)."""
    status, code = 507, "insufficient_storage"


class Unavailable(CasError):
    """A dependency (the metadata database) cannot be reached now; the same request may work
    after ``retry_after`` seconds (answered with ``Retry-After``, which clients honour)."""
    status, code = 503, "unavailable"

    def __init__(self, message: str, detail: object = None, code: str | None = None,
                 retry_after: int = 5) -> None:
        super().__init__(message, detail, code)
        self.retry_after = retry_after


class Invalid(CasError):
    status, code = 422, "invalid"


class DigestMismatch(Invalid):
    code = "digest_mismatch"


class StoreCorrupt(CasError):
    status, code = 500, "store_corrupt"


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def storage_full(exc: BaseException) -> InsufficientStorage | None:
    """A write that failed because the store is full, as ``507 insufficient_storage``; else None."""
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        name = errno.errorcode.get(exc.errno or 0, "")
        return InsufficientStorage(f"the server's store is out of space ({name}); nothing of this request was kept")
    return None


def from_document(exc: DocumentError) -> CasError:
    """A wire-format error as a server error with the same code."""
    if isinstance(exc, DocumentTooLarge):
        return TooLarge(exc.message, exc.detail, code=exc.code)
    if isinstance(exc, SignatureError):
        return Invalid(exc.message, exc.detail, code=exc.code)
    return Invalid(exc.message, exc.detail, code=exc.code)
