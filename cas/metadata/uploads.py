"""Resumable uploads in progress: their bytes live in ``STORE/uploads/{id}`` (filesystem
object store) or as part objects in the shared object store, listed in ``upload_parts``."""
from __future__ import annotations

import time

from .backend import MetadataBackend


class UploadQueries(MetadataBackend):
    """The ``uploads`` table."""

    def create_upload(self, upload_id: str, owner: str = "", max_per_owner: int | None = None) -> bool:
        """Record a new upload of ``owner``; False (nothing recorded) when the owner already has
        ``max_per_owner`` uploads in progress."""
        now = time.time()
        with self._tx() as c:
            if max_per_owner is not None:
                count = c.execute("SELECT COUNT(*) FROM uploads WHERE owner = ?", (owner,)).fetchone()[0]
                if int(count) >= max_per_owner:
                    return False
            c.execute("INSERT INTO uploads(id, created, updated, owner) VALUES (?, ?, ?, ?)",
                      (upload_id, now, now, owner))
            return True

    def reserve_upload_bytes(self, upload_id: str, owner: str, size: int, quota: int) -> bool:
        """Let ``upload_id`` hold ``size`` bytes if ``owner``'s uploads then hold at most ``quota``.

        The check and the reservation are one transaction, with the owner's rows locked
        (``FOR_UPDATE``; SQLite's writers are serialised), so parallel appends of one token
        cannot each see room the other is about to take.  False, nothing changed, when it
        would not fit or the upload is gone."""
        with self._tx() as c:
            rows = c.execute("SELECT id, bytes + reserved FROM uploads WHERE owner = ?" + self.FOR_UPDATE,
                             (owner,)).fetchall()
            if not any(row[0] == upload_id for row in rows):
                return False
            if sum(int(row[1]) for row in rows if row[0] != upload_id) + size > quota:
                return False
            c.execute("UPDATE uploads SET bytes = ?, updated = ? WHERE id = ?", (size, time.time(), upload_id))
            return True

    def reserve_append_bytes(self, upload_id: str, owner: str, more: int, quota: int) -> bool:
        """Reserve ``more`` bytes for an append in flight to a shared upload (its bytes are
        recorded only when its part is), if ``owner``'s uploads then hold and reserve at most
        ``quota``.  One transaction with the owner's rows locked, as ``reserve_upload_bytes``:
        appends on several replicas at once each see what the others reserved.  False,
        nothing changed, when it would not fit or the upload is gone."""
        with self._tx() as c:
            rows = c.execute("SELECT id, bytes + reserved FROM uploads WHERE owner = ?" + self.FOR_UPDATE,
                             (owner,)).fetchall()
            if not any(row[0] == upload_id for row in rows):
                return False
            if sum(int(row[1]) for row in rows) + more > quota:
                return False
            c.execute("UPDATE uploads SET reserved = reserved + ?, updated = ? WHERE id = ?",
                      (more, time.time(), upload_id))
            return True

    def release_append_bytes(self, upload_id: str, amount: int) -> None:
        """Give back what an append reserved with ``reserve_append_bytes`` (it ended, stored or not)."""
        with self._tx() as c:
            c.execute("UPDATE uploads SET reserved = CASE WHEN reserved > ? THEN reserved - ? ELSE 0 END "
                      "WHERE id = ?", (amount, amount, upload_id))

    def upload_exists(self, upload_id: str) -> bool:
        """Whether an upload is in progress."""
        return self._conn().execute("SELECT 1 FROM uploads WHERE id = ?", (upload_id,)).fetchone() is not None

    def touch_upload(self, upload_id: str, size: int | None = None) -> None:
        """Note that an upload received bytes now (and holds ``size`` bytes)."""
        with self._tx() as c:
            if size is None:
                c.execute("UPDATE uploads SET updated = ? WHERE id = ?", (time.time(), upload_id))
            else:
                c.execute("UPDATE uploads SET updated = ?, bytes = ? WHERE id = ?", (time.time(), size, upload_id))

    def delete_upload(self, upload_id: str) -> bool:
        """Forget an upload (and its recorded parts); False if there was none."""
        with self._tx() as c:
            c.execute("DELETE FROM upload_parts WHERE upload_id = ?", (upload_id,))
            return bool(c.execute("DELETE FROM uploads WHERE id = ?", (upload_id,)).rowcount == 1)

    def upload_size(self, upload_id: str) -> int | None:
        """The bytes an upload holds (the offset the next append starts at); None when unknown."""
        row = self._conn().execute("SELECT bytes FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        return None if row is None else int(row[0])

    def record_upload_part(self, upload_id: str, start: int, size: int, part_key: str) -> bool | None:
        """Add a part stored at ``part_key`` holding bytes ``[start, start + size)``, only if the
        upload still holds exactly ``start`` bytes (a compare-and-set: of two appends at one
        offset, on any replicas, one wins).  None when the upload is gone, False when it moved."""
        with self._tx() as c:
            row = c.execute("SELECT bytes FROM uploads WHERE id = ?" + self.FOR_UPDATE, (upload_id,)).fetchone()
            if row is None:
                return None
            if int(row[0]) != start:
                return False
            c.execute("INSERT INTO upload_parts(upload_id, part_start, size, part_key) VALUES (?, ?, ?, ?)",
                      (upload_id, start, size, part_key))
            c.execute("UPDATE uploads SET bytes = ?, updated = ? WHERE id = ?", (start + size, time.time(), upload_id))
            return True

    def upload_parts(self, upload_id: str) -> list[tuple[int, int, str]]:
        """(start, size, part key) of an upload's recorded parts, in order."""
        rows = self._conn().execute("SELECT part_start, size, part_key FROM upload_parts WHERE upload_id = ? "
                                    "ORDER BY part_start", (upload_id,)).fetchall()
        return [(int(r[0]), int(r[1]), str(r[2])) for r in rows]

    def stale_uploads(self, older_than: float) -> list[str]:
        """Uploads that received nothing for ``older_than`` seconds."""
        rows = self._conn().execute("SELECT id FROM uploads WHERE updated < ?",
                                    (time.time() - older_than,)).fetchall()
        return [r[0] for r in rows]

    def all_uploads(self) -> list[str]:
        """Every upload in progress."""
        return [r[0] for r in self._conn().execute("SELECT id FROM uploads").fetchall()]
