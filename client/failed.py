"""Releases that failed their health check on this machine, remembered by manifest digest.

After a failed health check (and the rollback), ``state.json`` keeps
``failed: {manifest digest: {"version", "at", "detail"}}``.  The next runs skip a release
whose channel digest is marked, instead of swapping to it, failing and rolling back on
every cron run; a newer release (another digest) is installed as usual, and
``cas-client update --retry-failed`` clears the mark.  ``cas-client status`` and the
reports list the marks.
"""
from __future__ import annotations

import time
from typing import Any

from .installroot import InstallRoot

MAX_REMEMBERED = 64   # the oldest marks are dropped beyond this


def failed_releases(layout: InstallRoot) -> list[dict[str, Any]]:
    """The marked releases, oldest first: ``{"version", "manifest", "at", "detail"}``."""
    marks: dict[str, dict[str, Any]] = layout.state().get("failed") or {}
    rows = [{"manifest": digest, **mark} for digest, mark in marks.items() if isinstance(mark, dict)]
    return sorted(rows, key=lambda row: float(row.get("at") or 0))


def remember_failed(layout: InstallRoot, version: str, digest: str, detail: str) -> None:
    """Mark ``version`` (its manifest ``digest``) as failed here (under the update lock)."""
    marks = {row["manifest"]: {k: v for k, v in row.items() if k != "manifest"} for row in failed_releases(layout)}
    marks[digest] = {"version": version, "at": time.time(), "detail": detail[:300]}
    layout.save_state(failed=dict(list(marks.items())[-MAX_REMEMBERED:]))


def find_failed(layout: InstallRoot, version: str, digest: str | None) -> list[dict[str, Any]]:
    """The marks that match the release about to be installed: by digest when the channel
    named one, else (``--to V``) by version."""
    return [row for row in failed_releases(layout)
            if (row["manifest"] == digest if digest else row.get("version") == version)]


def forget_failed(layout: InstallRoot, rows: list[dict[str, Any]]) -> None:
    """Clear the marks ``rows`` (``--retry-failed``, or the release passed its health check)."""
    drop = {row["manifest"] for row in rows}
    if drop:
        marks = {row["manifest"]: {k: v for k, v in row.items() if k != "manifest"}
                 for row in failed_releases(layout) if row["manifest"] not in drop}
        layout.save_state(failed=marks)
