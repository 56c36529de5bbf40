"""Clients' reports: the outcome of each update they tried."""
from __future__ import annotations

import time
from typing import Any

from casformat.times import format_epoch

from .backend import MetadataBackend


class ReportQueries(MetadataBackend):
    """The ``reports`` table (read by the dashboard and the rollout health gate)."""

    def add_report(self, product: str, client_id: str, from_version: str | None, to_version: str,
                   outcome: str, detail: str, at: float | None = None) -> None:
        """Record one client's outcome of an update (at ``at``, default now)."""
        with self._tx() as c:
            c.execute("INSERT INTO reports(product, client_id, from_version, to_version, outcome, detail, at) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (product, client_id, from_version, to_version, outcome, detail,
                       time.time() if at is None else at))

    def reports(self, product: str, to_version: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The latest reports of a product (towards one version), newest first."""
        sql = "SELECT client_id, from_version, to_version, outcome, detail, at FROM reports WHERE product = ?"
        params: list[Any] = [product]
        if to_version is not None:
            sql += " AND to_version = ?"
            params.append(to_version)
        rows = self._conn().execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [{**dict(r), "at": format_epoch(r["at"])} for r in rows]

    def report_outcomes(self, product: str, to_version: str, since: float, until: float) -> dict[str, int]:
        """Reports per outcome for a release in [since, until]."""
        rows = self._conn().execute(
            "SELECT outcome, COUNT(*) FROM reports WHERE product = ? AND to_version = ? AND at >= ? AND at <= ? "
            "GROUP BY outcome", (product, to_version, since, until)).fetchall()
        return {r[0]: r[1] for r in rows}

    def latest_outcomes(self, product: str, to_version: str, since: float) -> dict[str, tuple[str, bool]]:
        """client id -> (its latest outcome, whether it ever failed) for a release since a moment."""
        rows = self._conn().execute(
            "SELECT client_id, outcome, id FROM reports WHERE product = ? AND to_version = ? AND at >= ? "
            "ORDER BY id", (product, to_version, since)).fetchall()
        out: dict[str, tuple[str, bool]] = {}
        for client_id, outcome, _ in rows:
            failed_before = out.get(client_id, ("", False))[1]
            out[client_id] = (outcome, failed_before or outcome != "success")
        return out
