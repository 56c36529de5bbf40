"""The embedded metadata backend: one SQLite file, WAL, synchronous=FULL, writers serialised.

One connection per thread, each with a page cache of at most ``cache_kib``
(``sqlite_cache_kib``; the server's thread pool has up to 40 threads, so this
bounds the metadata's share of the server's memory).  The connection of a thread that
has ended is closed when the next connection is opened: the server's thread pool
replaces idle threads, and their connections (two file descriptors and a page cache
each) used to stay open -- 25 of them after a 5-minute soak with 7 live threads.  Every write transaction is ``BEGIN IMMEDIATE``, so
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

    def __init__(self, path: Path, cache_kib: int = 1024) -> None:
        self.path = Path(path)
        self.cache_kib = max(64, cache_kib)
        self._local = threading.local()
        self._open: dict[int, tuple[threading.Thread, sqlite3.Connection]] = {}  # id(conn) -> owner
        self._open_lock = threading.Lock()
        self.migrate()

    # -- connections
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA cache_size=-{int(self.cache_kib)}")  # negative: KiB, not pages
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            self._track(conn)
        return conn

    def _track(self, conn: sqlite3.Connection) -> None:
        """Remember ``conn`` as this thread's; close those of threads that have ended."""
        with self._open_lock:
            dead = [key for key, (thread, _) in self._open.items() if not thread.is_alive()]
            for key in dead:
                _, stale = self._open.pop(key)
                try:
                    stale.close()
                except sqlite3.Error:
                    pass
            self._open[id(conn)] = (threading.current_thread(), conn)

    def open_connections(self) -> int:
        """Connections open now (live threads', and ended threads' not yet closed)."""
        with self._open_lock:
            return len(self._open)

    def close(self) -> None:
        """Close this thread's connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            with self._open_lock:
                self._open.pop(id(conn), None)
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
