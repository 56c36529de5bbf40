"""What the metadata raises when a write cannot be applied as asked.

All are server errors (``cas.errors.CasError``: code, message, detail); callers
that retry or translate them catch these classes by name.
"""
from __future__ import annotations

import sqlite3

from ..errors import Conflict, Invalid, StoreCorrupt, Unavailable

# SQLite's words for "not now" (another writer holds the lock too long, the file cannot be
# opened): the same statement may work in a moment.
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open", "disk i/o error", "database table is locked")


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


class MetadataUnavailable(Unavailable):
    """The metadata database cannot be reached or used now (PostgreSQL down or restarting,
    SQLite locked or unopenable): 503 with ``Retry-After``, not 500."""

    code = "metadata_unavailable"


def metadata_unavailable(exc: BaseException) -> MetadataUnavailable | None:
    """``exc`` as ``MetadataUnavailable`` when it says the database is unavailable; else None.

    psycopg's ``OperationalError`` (connection refused or lost, server shutting down) and
    ``InterfaceError`` (a connection already closed); SQLite's ``OperationalError`` with
    one of its "not now" messages; psycopg_pool's ``PoolTimeout`` (no pooled connection free
    within ``postgres_pool_timeout_seconds``, or none can be made) is an ``OperationalError``."""
    if isinstance(exc, sqlite3.OperationalError):
        if any(words in str(exc).lower() for words in _SQLITE_UNAVAILABLE):
            return MetadataUnavailable("the metadata database is busy or unavailable; retry shortly",
                                       detail={"backend": "sqlite"})
        return None
    if type(exc).__module__.split(".")[0] in ("psycopg", "psycopg_pool"):
        import psycopg
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return MetadataUnavailable("the metadata database is unavailable; retry shortly",
                                       detail={"backend": "postgres"})
    return None
