"""What the metadata raises when a write cannot be applied as asked.

All are server errors (``cas.errors.CasError``: code, message, detail); callers
that retry or translate them catch these classes by name.
"""
from __future__ import annotations

from ..errors import Conflict, Invalid, StoreCorrupt


class StaleWrite(Conflict):
    """A compare-and-set lost against a concurrent writer (callers usually read again and retry)."""

    code = "concurrent_change"


class ObjectsBeingDeleted(Invalid):
    """A release names objects garbage collection has deleted (not uploaded again since)."""

    code = "missing_objects"

    def __init__(self, digests: list[str]) -> None:
        super().__init__(f"{len(digests)} objects were garbage-collected",
                         detail=[f"missing object {d}" for d in digests])
        self.digests = digests


class SchemaTooNew(StoreCorrupt, RuntimeError):
    """The store's schema is newer than this program's migrations (a newer ``cas`` wrote it).

    Still a ``RuntimeError``, as it was before it joined the server's errors."""

    code = "schema_too_new"
