"""Resumable uploads in progress (their bytes live in ``STORE/uploads/{id}``)."""
from __future__ import annotations

import time

from .backend import MetadataBackend


class UploadQueries(MetadataBackend):
    """The ``uploads`` table."""

    def create_upload(self, upload_id: str) -> None:
        """Record a new upload."""
        now = time.time()
        with self._tx() as c:
            c.execute("INSERT INTO uploads(id, created, updated) VALUES (?, ?, ?)", (upload_id, now, now))

    def upload_exists(self, upload_id: str) -> bool:
        """Whether an upload is in progress."""
        return self._conn().execute("SELECT 1 FROM uploads WHERE id = ?", (upload_id,)).fetchone() is not None

    def touch_upload(self, upload_id: str) -> None:
        """Note that an upload received bytes now."""
        with self._tx() as c:
            c.execute("UPDATE uploads SET updated = ? WHERE id = ?", (time.time(), upload_id))

    def delete_upload(self, upload_id: str) -> bool:
        """Forget an upload; False if there was none."""
        with self._tx() as c:
            return bool(c.execute("DELETE FROM uploads WHERE id = ?", (upload_id,)).rowcount == 1)

    def stale_uploads(self, older_than: float) -> list[str]:
        """Uploads that received nothing for ``older_than`` seconds."""
        rows = self._conn().execute("SELECT id FROM uploads WHERE updated < ?",
                                    (time.time() - older_than,)).fetchall()
        return [r[0] for r in rows]

    def all_uploads(self) -> list[str]:
        """Every upload in progress."""
        return [r[0] for r in self._conn().execute("SELECT id FROM uploads").fetchall()]
