"""Ahead-of-time delta builds: the job queue, the recipes jobs produce, the release pairs planned.

A job builds the recipes of one (base, target) object pair, base ``''`` being the
compress-only job of a target; a 'bundle' job (``cas/metadata/bundles.py``) is
keyed by a release pair's manifest digests instead.  Jobs are claimed under a
lease so that a dead worker's job returns to the queue.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

from .backend import MetadataBackend
from .gc import refuse_deleted_in

JOB_STATES = ("queued", "running", "done", "failed")


class DeltaJobQueries(MetadataBackend):
    """The ``delta_jobs``, ``recipes`` and ``delta_plans`` tables."""

    def enqueue_jobs(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Queue (base, target) builds that were never queued; returns how many are new."""
        now = time.time()
        rows = [(b, t, now) for b, t in sorted(set(pairs))]  # one order everywhere: no deadlocks
        if not rows:
            return 0
        with self._tx() as c:
            cur = c.executemany("INSERT INTO delta_jobs(base, target, state, queued) "
                                "VALUES (?, ?, 'queued', ?) ON CONFLICT DO NOTHING", rows)
            return max(int(cur.rowcount), 0)

    def claim_job(self, owner: str, lease_seconds: float, max_attempts: int) -> tuple[str, str] | None:
        """Take the oldest queued job (or one whose lease expired) for ``owner``.

        Concurrent claimers never take the same job: SQLite serialises them, PostgreSQL
        locks the row and lets the others skip it."""
        now = time.time()
        with self._tx() as c:
            row = c.execute(
                "SELECT base, target FROM delta_jobs WHERE (state = 'queued' OR "
                "(state = 'running' AND lease_until < ?)) AND attempts < ? ORDER BY queued LIMIT 1"
                + self.SKIP_LOCKED, (now, max_attempts)).fetchone()
            if row is None:
                return None
            c.execute("UPDATE delta_jobs SET state = 'running', owner = ?, lease_until = ?, started = ?, "
                      "attempts = attempts + 1 WHERE base = ? AND target = ?",
                      (owner, now + lease_seconds, now, row[0], row[1]))
            return row[0], row[1]

    def finish_job(self, base: str, target: str, owner: str, recipes: list[dict[str, Any]],
                   error: str | None = None) -> None:
        """Record a job's recipes and mark it done (or failed) in one transaction, and drop
        the job's pins.  Refused (``ObjectsBeingDeleted``, nothing recorded) when GC has
        deleted one of the recipe objects: the caller retries the build (``retry_job``)."""
        now = time.time()
        with self._tx() as c:
            refuse_deleted_in(c, [r["object"] for r in recipes])
            for r in sorted(recipes, key=lambda r: (r["base"], r["kind"], r["algorithm"])):
                c.execute("INSERT INTO recipes(base, target, kind, algorithm, object, size, build_seconds, created) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (base, target, kind, algorithm) DO UPDATE "
                          "SET object = excluded.object, size = excluded.size, "
                          "build_seconds = excluded.build_seconds, created = excluded.created",
                          (r["base"], target, r["kind"], r["algorithm"], r["object"], r["size"],
                           r.get("build_seconds", 0.0), now))
            c.execute("UPDATE delta_jobs SET state = ?, error = ?, finished = ?, lease_until = NULL "
                      "WHERE base = ? AND target = ? AND owner = ?",
                      ("failed" if error else "done", error, now, base, target, owner))
            c.execute("DELETE FROM build_pins WHERE base = ? AND target = ?", (base, target))

    def retry_job(self, base: str, target: str, owner: str, max_attempts: int, error: str) -> None:
        """A claimed job's result could not be recorded: queue it again (the attempt counts),
        or fail it with ``error`` once it has had ``max_attempts``."""
        with self._tx() as c:
            c.execute("UPDATE delta_jobs SET state = CASE WHEN attempts >= ? THEN 'failed' ELSE 'queued' END, "
                      "error = ?, owner = NULL, lease_until = NULL, queued = ?, finished = ? "
                      "WHERE base = ? AND target = ? AND owner = ?",
                      (max_attempts, error, time.time(), time.time(), base, target, owner))

    def job_kind(self, base: str, target: str) -> str:
        """'files' or 'bundle' ('files' for an unknown job)."""
        row = self._conn().execute("SELECT kind FROM delta_jobs WHERE base = ? AND target = ?",
                                   (base, target)).fetchone()
        return str(row[0]) if row else "files"

    def defer_job(self, base: str, target: str, owner: str) -> None:
        """Put a claimed job back at the end of the queue without counting the attempt."""
        with self._tx() as c:
            c.execute("UPDATE delta_jobs SET state = 'queued', owner = NULL, lease_until = NULL, queued = ?, "
                      "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
                      "WHERE base = ? AND target = ? AND owner = ?", (time.time(), base, target, owner))

    def release_jobs(self, owner: str) -> None:
        """Put an owner's running jobs back in the queue (clean shutdown)."""
        with self._tx() as c:
            c.execute("UPDATE delta_jobs SET state = 'queued', owner = NULL, lease_until = NULL, "
                      "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
                      "WHERE state = 'running' AND owner = ?", (owner,))

    def renew_leases(self, owner: str, until: float) -> int:
        """A live builder's heartbeat: its running jobs (and the pins of the objects they write)
        stay its own until ``until``; how many jobs it holds."""
        with self._tx() as c:
            cur = c.execute("UPDATE delta_jobs SET lease_until = ? WHERE state = 'running' AND owner = ?",
                            (until, owner))
            c.execute("UPDATE build_pins SET expires = ? WHERE expires < ? AND EXISTS (SELECT 1 FROM delta_jobs j "
                      "WHERE j.base = build_pins.base AND j.target = build_pins.target AND j.state = 'running' "
                      "AND j.owner = ?)", (until, until, owner))
            return max(int(cur.rowcount), 0)

    def job_states(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """(base, target) -> state, for the pairs that have a job."""
        c = self._conn()
        out: dict[tuple[str, str], str] = {}
        for b, t in pairs:
            row = c.execute("SELECT state FROM delta_jobs WHERE base = ? AND target = ?", (b, t)).fetchone()
            if row:
                out[(b, t)] = row[0]
        return out

    def jobs_summary(self, limit: int = 50) -> dict[str, Any]:
        """Jobs per state, and the running, failed and queued ones (at most ``limit`` each)."""
        c = self._conn()
        counts = {r[0]: r[1] for r in c.execute("SELECT state, COUNT(*) FROM delta_jobs GROUP BY state")}

        def rows(state: str, order: str) -> list[dict[str, Any]]:
            return [dict(r) for r in c.execute(
                "SELECT base, target, state, attempts, error, owner, queued, started, finished "
                f"FROM delta_jobs WHERE state = ? ORDER BY {order} LIMIT ?", (state, limit))]
        return {"counts": {s: counts.get(s, 0) for s in JOB_STATES},
                "running": rows("running", "started"), "failed": rows("failed", "finished DESC"),
                "queued": rows("queued", "queued")}

    def recipes_for(self, targets: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """target -> every recipe built for it (base, kind, algorithm, object, size)."""
        c = self._conn()
        out: dict[str, list[dict[str, Any]]] = {}
        for t in targets:
            out[t] = [dict(r) for r in c.execute(
                "SELECT base, target, kind, algorithm, object, size FROM recipes WHERE target = ?", (t,))]
        return out

    def record_plan(self, product: str, base_version: str, target_version: str) -> None:
        """Note that the jobs of a release pair were queued."""
        with self._tx() as c:
            c.execute("INSERT INTO delta_plans(product, base_version, target_version, planned) "
                      "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                      (product, base_version, target_version, time.time()))

    def planned(self, product: str, base_version: str, target_version: str) -> bool:
        """Whether the jobs of a release pair were queued."""
        return self._conn().execute(
            "SELECT 1 FROM delta_plans WHERE product = ? AND base_version = ? AND target_version = ?",
            (product, base_version, target_version)).fetchone() is not None

    def prune_recipes(self) -> int:
        """Forget recipes and bundles (and their jobs) for files and releases no release holds any more."""
        live = "SELECT blake3 FROM release_files WHERE type = 'file'"
        with self._tx() as c:
            gone = c.execute(f"DELETE FROM recipes WHERE target NOT IN ({live}) "
                             f"OR (base <> '' AND base NOT IN ({live}))").rowcount
            c.execute(f"DELETE FROM delta_jobs WHERE kind = 'files' AND (target NOT IN ({live}) "
                      f"OR (base <> '' AND base NOT IN ({live})))")
            releases = "SELECT manifest_digest FROM releases"
            gone += c.execute(f"DELETE FROM bundles WHERE base_manifest NOT IN ({releases}) "
                              f"OR target_manifest NOT IN ({releases})").rowcount
            c.execute(f"DELETE FROM delta_jobs WHERE kind = 'bundle' AND (base NOT IN ({releases}) "
                      f"OR target NOT IN ({releases}))")
        return int(gone)
