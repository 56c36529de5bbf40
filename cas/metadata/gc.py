"""Garbage collection's records: tombstones of unreferenced objects and the log of runs.

An unreferenced object is tombstoned ('marked') on one run and deleted on a later
one ('deleted'); a publish that needs a marked object revives it (``revive_in``,
inside the publish's transaction), and one that needs a deleted object is refused.
A delta build pins the objects it writes (``pin_build_objects``, before writing
them) until its job records them: an unexpired pin counts as a reference.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from casformat.times import format_epoch

from .backend import Connection, MetadataBackend
from .errors import ObjectsBeingDeleted

#: digests per ``IN (...)`` list
CHUNK = 500


def revive_in(c: Connection, digests: Iterable[str]) -> set[str]:
    """Inside a write transaction: drop the 'marked' tombstones of ``digests`` (the
    DELETE takes their row locks, so it waits for a sweeper holding one) and return
    those GC has deleted (their files are gone until uploaded again)."""
    wanted = sorted(set(digests))
    deleted: set[str] = set()
    for i in range(0, len(wanted), CHUNK):
        chunk = wanted[i:i + CHUNK]
        marks = ",".join("?" * len(chunk))
        c.execute(f"DELETE FROM gc_tombstones WHERE state = 'marked' AND digest IN ({marks})", chunk)
        deleted.update(r[0] for r in c.execute(
            f"SELECT digest FROM gc_tombstones WHERE state = 'deleted' AND digest IN ({marks})", chunk))
    return deleted


def refuse_deleted_in(c: Connection, digests: Iterable[str]) -> None:
    """Inside a write transaction that is about to record references to ``digests``
    (a build's recipes or bundles): revive them, and refuse (``ObjectsBeingDeleted``,
    the transaction rolls back) if GC deleted any of them."""
    gone = revive_in(c, digests)
    if gone:
        raise ObjectsBeingDeleted(sorted(gone))


def _count(c: Connection, table: str) -> int:
    return int(c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


class GcQueries(MetadataBackend):
    """The ``gc_tombstones`` and ``gc_runs`` tables, and what garbage collection must keep."""

    def live_objects(self) -> set[str]:
        """Every object something still needs: release files (a chunked file's index and
        its chunks), recipe and bundle objects, and the objects builds in progress have pinned."""
        c = self._conn()
        live = {r[0] for r in c.execute("SELECT DISTINCT blake3 FROM release_files WHERE type = 'file'")}
        # chunked files: their index objects and every chunk those indexes list
        live.update(r[0] for r in c.execute(
            "SELECT DISTINCT chunk_index FROM release_files WHERE chunk_index IS NOT NULL"))
        live.update(r[0] for r in c.execute(
            "SELECT DISTINCT chunk FROM index_chunks WHERE chunk_index IN "
            "(SELECT chunk_index FROM release_files WHERE chunk_index IS NOT NULL)"))
        live.update(r[0] for r in c.execute("SELECT DISTINCT object FROM recipes"))
        live.update(r[0] for r in c.execute("SELECT DISTINCT object FROM bundles"))
        live.update(r[0] for r in c.execute("SELECT DISTINCT digest FROM build_pins WHERE expires >= ?",
                                            (time.time(),)))
        return live

    def build_references(self) -> list[dict[str, str]]:
        """Every object a recipe or a bundle records, with what records it (for ``cas fsck``)."""
        c = self._conn()
        refs = [{"kind": "recipe", "object": r[0], "by": f"{r[3]} {r[1] or '(none)'} -> {r[2]}"}
                for r in c.execute("SELECT object, base, target, kind FROM recipes ORDER BY object")]
        refs += [{"kind": "bundle", "object": r[0], "by": f"release pair {r[1]} -> {r[2]}"}
                 for r in c.execute("SELECT object, base_manifest, target_manifest FROM bundles ORDER BY object")]
        return refs

    def pin_build_objects(self, base: str, target: str, digests: Iterable[str], expires: float) -> None:
        """Before a build of job (base, target) writes ``digests``: GC keeps them (an
        unexpired pin is a reference) until the job records them or ``expires``.  A
        'marked' tombstone is dropped; a 'deleted' one stays until the write (``reingested``)."""
        wanted = sorted(set(digests))
        with self._tx() as c:
            c.executemany("INSERT INTO build_pins(base, target, digest, expires) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT (base, target, digest) DO UPDATE SET expires = excluded.expires",
                          [(base, target, d, expires) for d in wanted])
            revive_in(c, wanted)

    def forget_expired_pins(self, before: float) -> int:
        """Pins of builds that died before recording (their lease ran out) can go."""
        with self._tx() as c:
            return int(c.execute("DELETE FROM build_pins WHERE expires < ?", (before,)).rowcount)

    def tombstones(self) -> dict[str, tuple[str, float]]:
        """digest -> (state, when marked) of every tombstone."""
        return {r[0]: (r[1], r[2]) for r in self._conn().execute("SELECT digest, state, marked FROM gc_tombstones")}

    def mark_tombstones(self, digests: Iterable[str], now: float) -> int:
        """Tombstone ``digests`` that have none yet; returns how many were new."""
        rows = [(d, now) for d in digests]
        with self._tx() as c:
            before = _count(c, "gc_tombstones")
            c.executemany("INSERT INTO gc_tombstones(digest, state, marked) VALUES (?, 'marked', ?) "
                          "ON CONFLICT DO NOTHING", rows)
            return _count(c, "gc_tombstones") - before

    def revive(self, digests: Iterable[str]) -> set[str]:
        """Objects are being relied on again (a missing-objects query found them): drop
        their 'marked' tombstones.  Returns the ones GC deleted: they are missing."""
        with self._tx() as c:
            return revive_in(c, digests)

    def reingested(self, digests: Iterable[str]) -> None:
        """Objects were (re)written to the store: no tombstone of any state applies now."""
        wanted = sorted(set(digests))
        with self._tx() as c:
            for i in range(0, len(wanted), CHUNK):
                chunk = wanted[i:i + CHUNK]
                c.execute(f"DELETE FROM gc_tombstones WHERE digest IN ({','.join('?' * len(chunk))})", chunk)

    def sweep_one(self, digest: str, marked_before: float, delete: Callable[[], bool]) -> bool:
        """In one transaction: if ``digest``'s tombstone is old enough and nothing
        references the object, call ``delete`` and leave a 'deleted' tombstone.

        A publish recording a release that names the object serialises with this
        transaction on the tombstone row: it either comes first (the object is then
        referenced and kept) or sees 'deleted' and is refused."""
        with self._tx() as c:
            row = c.execute("SELECT state, marked FROM gc_tombstones WHERE digest = ?" + self.FOR_UPDATE,
                            (digest,)).fetchone()
            if row is None or row[0] != "marked" or row[1] >= marked_before:
                return False
            if (c.execute("SELECT 1 FROM release_files WHERE blake3 = ? LIMIT 1", (digest,)).fetchone()
                    or c.execute("SELECT 1 FROM release_files WHERE chunk_index = ? LIMIT 1", (digest,)).fetchone()
                    or c.execute("SELECT 1 FROM index_chunks ic JOIN release_files rf "
                                 "ON rf.chunk_index = ic.chunk_index WHERE ic.chunk = ? LIMIT 1",
                                 (digest,)).fetchone()
                    or c.execute("SELECT 1 FROM recipes WHERE object = ? LIMIT 1", (digest,)).fetchone()
                    or c.execute("SELECT 1 FROM bundles WHERE object = ? LIMIT 1", (digest,)).fetchone()
                    or c.execute("SELECT 1 FROM build_pins WHERE digest = ? AND expires >= ? LIMIT 1",
                                 (digest, time.time())).fetchone()):
                c.execute("DELETE FROM gc_tombstones WHERE digest = ?", (digest,))
                return False
            deleted = delete()
            c.execute("UPDATE gc_tombstones SET state = 'deleted', marked = ? WHERE digest = ?",
                      (time.time(), digest))
            return deleted

    def forget_deleted(self, before: float) -> int:
        """'deleted' tombstones older than ``before`` (no publish raced them) can go."""
        with self._tx() as c:
            return int(c.execute("DELETE FROM gc_tombstones WHERE state = 'deleted' AND marked < ?",
                                 (before,)).rowcount)

    def record_gc_run(self, started: float, finished: float, dry_run: bool, result: str) -> None:
        """Log one run of ``cas gc`` (``result`` is its JSON summary)."""
        with self._tx() as c:
            c.execute("INSERT INTO gc_runs(started, finished, dry_run, result) VALUES (?, ?, ?, ?)",
                      (started, finished, int(dry_run), result))

    def last_gc_run(self) -> dict[str, Any] | None:
        """The latest logged run of ``cas gc``, or None."""
        row = self._conn().execute("SELECT started, finished, dry_run, result FROM gc_runs "
                                   "ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            return None
        return {"started": format_epoch(row[0]), "finished": format_epoch(row[1]), "dry_run": bool(row[2]),
                "result": row[3]}
