"""Clients' reports: the outcome of each update they tried."""
from __future__ import annotations

import time
from typing import Any

from casformat.times import format_epoch

from .backend import MetadataBackend


class ReportQueries(MetadataBackend):
    """The ``reports`` table (read by the dashboard and the rollout health gate)."""

    def add_report(self, product: str, client_id: str, from_version: str | None, to_version: str,
                   outcome: str, detail: str, at: float | None = None, reporter: str = "",
                   counted: bool = True, ids_per_reporter: int = 0, window_seconds: float = 0.0) -> bool:
        """Record one client's outcome of an update (at ``at``, default now); whether the health
        gate counts it.  With ``ids_per_reporter`` > 0 a ``counted`` report is counted only while
        ``reporter`` has had fewer distinct client ids counted for this release in the last
        ``window_seconds`` (or this client id is one of them), checked in the insert's transaction."""
        at = time.time() if at is None else at
        with self._tx() as c:
            if counted and ids_per_reporter > 0:
                rows = c.execute("SELECT DISTINCT client_id FROM reports WHERE reporter = ? AND product = ? "
                                 "AND to_version = ? AND counted = 1 AND at >= ?",
                                 (reporter, product, to_version, at - window_seconds)).fetchall()
                seen = {r[0] for r in rows}
                counted = client_id in seen or len(seen) < ids_per_reporter
            c.execute("INSERT INTO reports(product, client_id, from_version, to_version, outcome, detail, at, "
                      "reporter, counted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (product, client_id, from_version, to_version, outcome, detail, at, reporter,
                       int(counted)))
        return counted

    def reports(self, product: str, to_version: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The latest reports of a product (towards one version), newest first."""
        sql = ("SELECT client_id, from_version, to_version, outcome, detail, at, counted FROM reports "
               "WHERE product = ?")
        params: list[Any] = [product]
        if to_version is not None:
            sql += " AND to_version = ?"
            params.append(to_version)
        rows = self._conn().execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [{**dict(r), "at": format_epoch(r["at"]), "counted": bool(r["counted"])} for r in rows]

    def report_outcomes(self, product: str, to_version: str, since: float, until: float) -> dict[str, int]:
        """Counted reports per outcome for a release in [since, until]: each client id once,
        with its latest outcome in the window (a client repeating itself adds nothing)."""
        rows = self._conn().execute(
            "SELECT client_id, outcome FROM reports WHERE product = ? AND to_version = ? AND at >= ? "
            "AND at <= ? AND counted = 1 ORDER BY id", (product, to_version, since, until)).fetchall()
        latest = {r[0]: r[1] for r in rows}
        counts: dict[str, int] = {}
        for outcome in latest.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def latest_outcomes(self, product: str, to_version: str, since: float) -> dict[str, tuple[str, bool]]:
        """client id -> (its latest outcome, whether it ever failed) for a release since a moment
        (counted reports only)."""
        rows = self._conn().execute(
            "SELECT client_id, outcome, id FROM reports WHERE product = ? AND to_version = ? AND at >= ? "
            "AND counted = 1 ORDER BY id", (product, to_version, since)).fetchall()
        out: dict[str, tuple[str, bool]] = {}
        for client_id, outcome, _ in rows:
            failed_before = out.get(client_id, ("", False))[1]
            out[client_id] = (outcome, failed_before or outcome != "success")
        return out

    def prune_reports(self, before: float, batch: int = 10_000) -> int:
        """Delete reports older than ``before``, ``batch`` rows a transaction (oldest ids first,
        so a huge table is pruned without one long lock); the number deleted."""
        deleted = 0
        while True:
            with self._tx() as c:
                gone = c.execute("DELETE FROM reports WHERE id IN "
                                 "(SELECT id FROM reports WHERE at < ? ORDER BY id LIMIT ?)", (before, batch)).rowcount
            deleted += gone
            if gone < batch:
                return deleted
