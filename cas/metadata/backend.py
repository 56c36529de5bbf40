"""What a metadata backend supplies: connections, transactions, schema bookkeeping, locks.

The query groups (``roots``, ``releases``, ``channels`` ... in this package) are
written against ``MetadataBackend`` only, in the SQL that SQLite and PostgreSQL
share (``?`` parameters, ``ON CONFLICT``, ``RETURNING``).  A backend fills in the
abstract methods and three class attributes:

- ``FOR_UPDATE``, appended to a SELECT whose rows the transaction goes on to change;
- ``SKIP_LOCKED``, the same for queues (rows another transaction holds are passed over);
- ``INTEGRITY_ERRORS``, what its driver raises on a unique or primary-key violation.

SQLite serialises writers (``BEGIN IMMEDIATE``), so its lock clauses are empty.
"""
from __future__ import annotations

import abc
from typing import Any, ContextManager, Iterable, Protocol, Sequence


class Connection(Protocol):
    """What the queries need of a connection (``sqlite3.Connection`` as it is).

    Rows read by name or index (``row["x"]``, ``row[0]``, ``dict(row)``)."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any:
        """Run one statement; the result has ``fetchone``, ``fetchall``, ``rowcount`` and iterates rows."""

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any:
        """Run one statement per row of parameters; the result has ``rowcount``."""


class MetadataBackend(abc.ABC):
    """Connections, transactions and schema bookkeeping; the queries build on these."""

    #: appended to a SELECT whose rows the transaction goes on to change
    FOR_UPDATE = ""
    #: the same for queues: rows another transaction holds are passed over
    SKIP_LOCKED = ""
    #: what the driver raises on a unique or primary-key violation
    INTEGRITY_ERRORS: tuple[type[BaseException], ...] = ()

    @abc.abstractmethod
    def _conn(self) -> Connection:
        """This thread's connection."""

    @abc.abstractmethod
    def _tx(self) -> ContextManager[Connection]:
        """A write transaction on this thread's connection: committed on exit, rolled back on an exception."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close this thread's connection."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The migration the store is at."""

    @abc.abstractmethod
    def migrate(self) -> None:
        """Apply the migrations the store lacks; refuse a store newer than this program."""

    #: True when ``data_version`` is answered in-process (no round trip), so it may be called
    #: inside the event loop; its value is then only comparable on the same thread.
    data_version_is_local = True

    @abc.abstractmethod
    def data_version(self) -> int:
        """A number that changes whenever a channel may have changed (cheap cache check)."""
