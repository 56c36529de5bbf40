"""What ``/metrics`` reads of the metadata at each scrape (cas/http/metrics.py ``StateCollector``).

Counts of the delta queue, rollouts, the webhook outbox and uploads in progress; every
query aggregates in the database (a handful of rows back, whatever the store's size).
"""
from __future__ import annotations

from typing import Any

from .backend import MetadataBackend


class GaugeQueries(MetadataBackend):
    """Read-only aggregates over ``delta_jobs``, ``recipes``, ``bundles``, ``rollouts``,
    ``reports``, ``webhook_outbox`` and ``uploads``."""

    def operational_gauges(self) -> dict[str, Any]:
        c = self._conn()
        jobs = {r[0]: int(r[1]) for r in c.execute("SELECT state, COUNT(*) FROM delta_jobs GROUP BY state")}
        builds = {r[0]: (int(r[1]), float(r[2])) for r in c.execute(
            "SELECT algorithm, COUNT(*), COALESCE(SUM(build_seconds), 0) FROM recipes GROUP BY algorithm")}
        bundle = c.execute("SELECT COUNT(*), COALESCE(SUM(build_seconds), 0) FROM bundles").fetchone()
        if int(bundle[0]):
            builds["bundle"] = (int(bundle[0]), float(bundle[1]))
        rollout_states = {r[0]: int(r[1]) for r in c.execute("SELECT state, COUNT(*) FROM rollouts GROUP BY state")}
        active = [dict(r) for r in c.execute(
            "SELECT * FROM rollouts WHERE state IN ('running', 'halted') ORDER BY id")]
        for rollout in active:
            rollout["outcomes"] = {r[0]: int(r[1]) for r in c.execute(
                "SELECT outcome, COUNT(*) FROM reports WHERE product = ? AND to_version = ? AND at >= ? "
                "GROUP BY outcome", (rollout["product"], rollout["release"], rollout["started"]))}
        webhooks = {r[0]: int(r[1]) for r in c.execute("SELECT state, COUNT(*) FROM webhook_outbox GROUP BY state")}
        retrying = int(c.execute("SELECT COUNT(*) FROM webhook_outbox WHERE state = 'pending' AND attempts > 0"
                                 ).fetchone()[0])
        uploads = c.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM uploads").fetchone()
        return {"jobs": jobs, "builds": builds, "rollout_states": rollout_states, "active_rollouts": active,
                "webhooks": webhooks, "webhooks_retrying": retrying,
                "uploads": int(uploads[0]), "upload_bytes": int(uploads[1])}
