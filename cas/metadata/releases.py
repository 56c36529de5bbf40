"""Products, releases, their file entries and their lifecycle events."""
from __future__ import annotations

import time
from typing import Any, Iterable, Mapping, Sequence

from casformat.times import format_epoch

from .backend import MetadataBackend
from .errors import ObjectsBeingDeleted, StaleWrite
from .gc import revive_in
from .records import Release


def release_from_row(row: Any) -> Release | None:
    """A ``releases`` row as a ``Release`` (None for no row)."""
    if row is None:
        return None
    return Release(row["product"], row["version"], row["manifest_digest"], bytes(row["manifest"]),
                   row["status"], row["file_count"], row["logical_bytes"], row["created"],
                   row["status_changed"], bool(row["critical"]))


class ReleaseQueries(MetadataBackend):
    """The ``products``, ``releases``, ``release_files`` and ``release_events`` tables."""

    def list_products(self) -> list[dict[str, Any]]:
        """Every product with its number of releases, by name."""
        rows = self._conn().execute(
            "SELECT p.name, p.created, COUNT(r.version) AS n FROM products p "
            "LEFT JOIN releases r ON r.product = p.name GROUP BY p.name, p.created ORDER BY p.name").fetchall()
        return [{"name": r["name"], "releases": r["n"], "created": format_epoch(r["created"])} for r in rows]

    def product_exists(self, product: str) -> bool:
        """Whether anything was ever published for ``product``."""
        return self._conn().execute("SELECT 1 FROM products WHERE name = ?", (product,)).fetchone() is not None

    def get_release(self, product: str, version: str) -> Release | None:
        """One release, or None."""
        row = self._conn().execute("SELECT * FROM releases WHERE product = ? AND version = ?",
                                   (product, version)).fetchone()
        return release_from_row(row)

    def list_releases(self, product: str) -> list[Release]:
        """A product's releases in publishing order."""
        rows = self._conn().execute("SELECT * FROM releases WHERE product = ? ORDER BY seq",
                                    (product,)).fetchall()
        return [r for r in map(release_from_row, rows) if r is not None]

    def release_by_manifest(self, manifest_digest: str) -> Release | None:
        """A release whose manifest has this digest, or None."""
        return release_from_row(self._conn().execute("SELECT * FROM releases WHERE manifest_digest = ? LIMIT 1",
                                                     (manifest_digest,)).fetchone())

    def release_files(self, product: str, version: str) -> list[dict[str, Any]]:
        """A release's file entries (path, type, blake3, size, mode, target)."""
        return [dict(r) for r in self._conn().execute(
            "SELECT path, type, blake3, size, mode, target FROM release_files WHERE product = ? AND version = ?",
            (product, version))]

    def insert_release(self, product: str, version: str, manifest_digest: str, manifest: bytes,
                       files: Iterable[dict[str, Any]], actor: str, status: str = "draft",
                       chunk_lists: Mapping[str, Sequence[tuple[str, int]]] | None = None) -> Release | None:
        """Record a release; returns the existing one instead when the version exists.

        Publishes of one product are serialised on its ``products`` row, so two
        replicas publishing the same version record it once (the second gets the
        first's row back) and ``seq`` never repeats.  Raises ObjectsBeingDeleted
        when garbage collection deleted objects the release names.

        ``chunk_lists``: for each chunk index a chunked file names, its distinct chunks
        (digest, size), recorded once per index (``index_chunks``)."""
        files = list(files)
        chunk_lists = chunk_lists or {}
        now = time.time()
        with self._tx() as c:
            c.execute("INSERT INTO products(name, created) VALUES (?, ?) ON CONFLICT DO NOTHING", (product, now))
            c.execute("SELECT name FROM products WHERE name = ?" + self.FOR_UPDATE, (product,)).fetchone()
            row = c.execute("SELECT * FROM releases WHERE product = ? AND version = ?",
                            (product, version)).fetchone()
            if row is not None:
                return release_from_row(row)
            regular = [f for f in files if f["type"] == "file"]
            needed = [f["chunks"]["index"] if "chunks" in f else f["blake3"] for f in regular]
            needed += [d for chunks in chunk_lists.values() for d, _ in chunks]
            gone = revive_in(c, needed)
            if gone:
                raise ObjectsBeingDeleted(sorted(gone))
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM releases WHERE product = ?",
                            (product,)).fetchone()[0]
            c.execute("INSERT INTO releases(product, version, manifest_digest, manifest, status, file_count, "
                      "logical_bytes, created, status_changed, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (product, version, manifest_digest, manifest, status, len(files),
                       sum(f["size"] for f in regular), now, now, seq))
            c.executemany(
                "INSERT INTO release_files(product, version, path, type, blake3, size, mode, target, "
                "chunk_index, chunk_index_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(product, version, f["path"], f["type"], f.get("blake3"), f.get("size"), f.get("mode"),
                  f.get("target"), f["chunks"]["index"] if "chunks" in f else None,
                  f["chunks"]["size"] if "chunks" in f else None) for f in files])
            for index, chunks in chunk_lists.items():
                c.executemany("INSERT INTO index_chunks(chunk_index, chunk, size) VALUES (?, ?, ?) "
                              "ON CONFLICT DO NOTHING", [(index, d, n) for d, n in chunks])
            c.execute("INSERT INTO release_events(product, version, from_status, to_status, actor, reason, at)"
                      " VALUES (?, ?, NULL, ?, ?, 'published', ?)", (product, version, status, actor, now))
        return None

    def set_status(self, product: str, version: str, expected: str, new: str, actor: str, reason: str) -> None:
        """Move a release from ``expected`` to ``new`` and log it; StaleWrite if it is no longer ``expected``."""
        now = time.time()
        with self._tx() as c:
            cur = c.execute("UPDATE releases SET status = ?, status_changed = ? "
                            "WHERE product = ? AND version = ? AND status = ?",
                            (new, now, product, version, expected))
            if cur.rowcount != 1:
                raise StaleWrite(f"{product} {version} is no longer {expected}")
            c.execute("INSERT INTO release_events(product, version, from_status, to_status, actor, reason, at)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?)", (product, version, expected, new, actor, reason, now))

    def replace_manifest(self, product: str, version: str, digest: str, manifest: bytes, actor: str,
                         reason: str) -> None:
        """Store new bytes of a release's manifest with the same digest (new signatures) and log it."""
        with self._tx() as c:
            cur = c.execute("UPDATE releases SET manifest = ? WHERE product = ? AND version = ? "
                            "AND manifest_digest = ?", (manifest, product, version, digest))
            if cur.rowcount != 1:
                raise StaleWrite(f"{product} {version} changed while it was re-signed")
            row = c.execute("SELECT status FROM releases WHERE product = ? AND version = ?",
                            (product, version)).fetchone()
            c.execute("INSERT INTO release_events(product, version, from_status, to_status, actor, reason, at)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?)", (product, version, row[0], row[0], actor, reason,
                                                        time.time()))

    def set_critical(self, product: str, version: str, critical: bool, actor: str, reason: str) -> None:
        """Mark or unmark a release critical and log it."""
        with self._tx() as c:
            c.execute("UPDATE releases SET critical = ? WHERE product = ? AND version = ?",
                      (int(critical), product, version))
            row = c.execute("SELECT status FROM releases WHERE product = ? AND version = ?",
                            (product, version)).fetchone()
            c.execute("INSERT INTO release_events(product, version, from_status, to_status, actor, reason, at)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?)", (product, version, row[0], row[0], actor,
                                                        f"{'marked' if critical else 'unmarked'} critical: {reason}",
                                                        time.time()))

    def critical_versions(self, product: str, versions: Iterable[str]) -> list[str]:
        """Which of ``versions`` are marked critical, sorted."""
        c = self._conn()
        return sorted(v for v in set(versions) if c.execute(
            "SELECT 1 FROM releases WHERE product = ? AND version = ? AND critical = 1", (product, v)).fetchone())

    def release_history(self, product: str, version: str) -> list[dict[str, Any]]:
        """A release's lifecycle events, oldest first."""
        rows = self._conn().execute(
            "SELECT from_status, to_status, actor, reason, at FROM release_events "
            "WHERE product = ? AND version = ? ORDER BY id", (product, version)).fetchall()
        return [{"from": r["from_status"], "to": r["to_status"], "actor": r["actor"],
                 "reason": r["reason"], "at": format_epoch(r["at"])} for r in rows]

    def referenced_objects(self) -> list[tuple[str, int]]:
        """Every distinct stored object (blake3, size) any release references: whole files,
        and for chunked files their chunk index and its chunks."""
        rows = self._conn().execute(
            "SELECT blake3, size FROM release_files WHERE type = 'file' AND chunk_index IS NULL "
            "UNION SELECT chunk_index, chunk_index_size FROM release_files WHERE chunk_index IS NOT NULL "
            "UNION SELECT ic.chunk, ic.size FROM index_chunks ic WHERE ic.chunk_index IN "
            "(SELECT chunk_index FROM release_files WHERE chunk_index IS NOT NULL)").fetchall()
        return [(r[0], r[1]) for r in rows]

    def chunk_index_of(self, blake3: str) -> tuple[str, int, int] | None:
        """(index digest, index size, file size) of a chunked file with this content, or None."""
        row = self._conn().execute(
            "SELECT chunk_index, chunk_index_size, size FROM release_files WHERE blake3 = ? "
            "AND chunk_index IS NOT NULL LIMIT 1", (blake3,)).fetchone()
        return (row[0], int(row[1]), int(row[2])) if row is not None else None

    def chunked_file_known(self, blake3: str, index: str) -> bool:
        """Whether a recorded release already names this (file, index) pair (checked at its publish)."""
        return self._conn().execute(
            "SELECT 1 FROM release_files WHERE blake3 = ? AND chunk_index = ? LIMIT 1",
            (blake3, index)).fetchone() is not None

    def index_chunk_sizes(self, index: str) -> dict[str, int]:
        """The distinct chunks an index lists, {digest: size} (empty if never recorded)."""
        return {r[0]: int(r[1]) for r in self._conn().execute(
            "SELECT chunk, size FROM index_chunks WHERE chunk_index = ?", (index,))}

    def logical_bytes(self) -> int:
        """The sum of every release's file sizes (what the store would hold without deduplication)."""
        row = self._conn().execute("SELECT COALESCE(SUM(logical_bytes), 0) FROM releases").fetchone()
        return int(row[0])

    def delete_release(self, product: str, version: str, expected_status: tuple[str, ...], actor: str,
                       reason: str) -> None:
        """Remove a release and its file entries (its audit events stay)."""
        with self._tx() as c:
            row = c.execute(f"SELECT status FROM releases WHERE product = ? AND version = ?{self.FOR_UPDATE}",
                            (product, version)).fetchone()
            if row is None or row[0] not in expected_status:
                raise StaleWrite(f"{product} {version} is no longer one of {expected_status}")
            c.execute("DELETE FROM release_files WHERE product = ? AND version = ?", (product, version))
            c.execute("DELETE FROM delta_plans WHERE product = ? AND (base_version = ? OR target_version = ?)",
                      (product, version, version))
            c.execute("DELETE FROM releases WHERE product = ? AND version = ?", (product, version))
            c.execute("INSERT INTO release_events(product, version, from_status, to_status, actor, reason, at)"
                      " VALUES (?, ?, ?, 'deleted', ?, ?, ?)", (product, version, row[0], actor, reason, time.time()))
