"""The embedded metadata backend: one SQLite file, WAL, synchronous=FULL, writers serialised.

One connection per thread; every write transaction is ``BEGIN IMMEDIATE``, so
writers are serialised and the lock clauses are empty.  The schema version is
``PRAGMA user_version``; ``data_version`` is SQLite's ``PRAGMA data_version``,
which moves whenever another connection commits.
"""
from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .interface import Metadata
from .migrations import MIGRATIONS, check_schema


class SqliteMetadata(Metadata):
    """``Metadata`` in ``path`` (``STORE/meta.db`` by default), migrated at open."""

    INTEGRITY_ERRORS = (sqlite3.IntegrityError,)

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self.migrate()

    # -- connections
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- schema
    def schema_version(self) -> int:
        """``PRAGMA user_version``: the migration the file is at."""
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        """Apply the migrations the file lacks in one transaction; refuse a file newer than this program."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            check_schema(current)
            for version in range(current, len(MIGRATIONS)):
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def data_version(self) -> int:
        """Changes whenever another connection commits (cheap cache check)."""
        return int(self._conn().execute("PRAGMA data_version").fetchone()[0])
