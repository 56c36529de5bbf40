"""Bundles: one zstd stream rebuilding several targets of a release pair (``deltagen/bundles.py``).

A bundle job sits in ``delta_jobs`` with kind 'bundle', keyed by the pair's
(base, target) manifest digests; its results go to ``bundles``.
"""
from __future__ import annotations

import json
import time
from typing import Any

from .backend import MetadataBackend
from .gc import refuse_deleted_in


class BundleQueries(MetadataBackend):
    """The ``bundles`` table and the bundle jobs of ``delta_jobs``."""

    def enqueue_bundle_job(self, base_manifest: str, target_manifest: str) -> int:
        """Queue the bundle build of a release pair unless queued before; returns 1 if new, else 0."""
        with self._tx() as c:
            cur = c.execute("INSERT INTO delta_jobs(base, target, state, queued, kind) "
                            "VALUES (?, ?, 'queued', ?, 'bundle') ON CONFLICT DO NOTHING",
                            (base_manifest, target_manifest, time.time()))
            return max(int(cur.rowcount), 0)

    def finish_bundle_job(self, base_manifest: str, target_manifest: str, owner: str,
                          bundles: list[dict[str, Any]], error: str | None = None) -> None:
        """Record a bundle job's bundles and mark it done (or failed) in one transaction, and
        drop the job's pins; refused like ``finish_job`` when GC deleted a bundle object."""
        now = time.time()
        with self._tx() as c:
            refuse_deleted_in(c, [b["object"] for b in bundles])
            for b in sorted(bundles, key=lambda b: b["object"]):
                c.execute("INSERT INTO bundles(base_manifest, target_manifest, object, size, bases, members, "
                          "build_seconds, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                          (base_manifest, target_manifest, b["object"], b["size"], json.dumps(b["bases"]),
                           json.dumps(b["members"]), b.get("build_seconds", 0.0), now))
            c.execute("UPDATE delta_jobs SET state = ?, error = ?, finished = ?, lease_until = NULL "
                      "WHERE base = ? AND target = ? AND owner = ?",
                      ("failed" if error else "done", error, now, base_manifest, target_manifest, owner))
            c.execute("DELETE FROM build_pins WHERE base = ? AND target = ?", (base_manifest, target_manifest))

    def bundles_for(self, base_manifest: str, target_manifest: str) -> list[dict[str, Any]]:
        """The bundles built for a release pair (object, size, bases, members)."""
        rows = self._conn().execute(
            "SELECT object, size, bases, members FROM bundles WHERE base_manifest = ? AND target_manifest = ? "
            "ORDER BY object", (base_manifest, target_manifest)).fetchall()
        return [{"object": r[0], "size": r[1], "bases": json.loads(r[2]), "members": json.loads(r[3])}
                for r in rows]
