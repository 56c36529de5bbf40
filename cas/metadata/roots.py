"""Root documents: one row per version, never rewritten."""
from __future__ import annotations

import time

from ..errors import Conflict
from .backend import MetadataBackend


class RootQueries(MetadataBackend):
    """The ``roots`` table."""

    def put_root(self, version: int, document: bytes) -> None:
        """Record root ``version``; raises Conflict (``root_exists``) if that version is already recorded."""
        try:
            with self._tx() as c:
                c.execute("INSERT INTO roots(version, document, created) VALUES (?, ?, ?)",
                          (version, document, time.time()))
        except self.INTEGRITY_ERRORS:
            raise Conflict(f"root version {version} already exists", detail={"version": version},
                           code="root_exists") from None

    def get_root(self, version: int | None = None) -> tuple[int, bytes] | None:
        """(version, document) of root ``version``, or of the newest root when None."""
        c = self._conn()
        if version is None:
            row = c.execute("SELECT version, document FROM roots ORDER BY version DESC LIMIT 1").fetchone()
        else:
            row = c.execute("SELECT version, document FROM roots WHERE version = ?", (version,)).fetchone()
        return (row[0], bytes(row[1])) if row else None
