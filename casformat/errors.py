"""The wire format's errors: a document is malformed, too large, unsigned, expired or replayed.

Every error carries a stable ``code`` (and ``message``, ``detail``) so that the server
maps it to an HTTP answer and the client to a decision (next recipe, next mirror, give up).
"""
from __future__ import annotations


class DocumentError(Exception):
    """A document is malformed or does not satisfy the contract."""

    code = "invalid_document"

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class DocumentTooLarge(DocumentError):
    code = "document_too_large"


class InvalidPath(DocumentError):
    code = "invalid_path"


class SignatureError(DocumentError):
    """Signatures are missing, forged, by untrusted keys or below threshold."""

    code = "bad_signature"


class ExpiredDocument(DocumentError):
    code = "expired"


class RollbackAttack(DocumentError):
    """A document older than one already trusted (sequence or version)."""

    code = "rollback"
