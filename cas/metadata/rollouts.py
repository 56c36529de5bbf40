"""Rollouts' rows and events (``cas/rollouts.py`` decides; these only read and compare-and-set).

Every write of a rollout carries, in the same transaction, the channel document
it changes (compare-and-set on the channel's sequence), its event and its
webhook deliveries.  ``revision`` is the compare-and-set counter of a rollout's
state; the partial unique index ``rollouts_active`` allows one running or halted
rollout per channel.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

from casformat.times import format_epoch

from .backend import Connection, MetadataBackend
from .channels import write_channel
from .errors import StaleWrite
from .records import Channel
from .webhooks import Delivery, write_outbox

#: (event, percent, actor, reason, at) of one rollout event
Event = tuple[str, int, str, str, float]


class RolloutQueries(MetadataBackend):
    """The ``rollouts`` and ``rollout_events`` tables."""

    def _rollout_write(self, c: Connection, rollout_id: int, channel: Channel | None, event: Event | None,
                       outbox: Iterable[Delivery]) -> None:
        if channel is not None:
            write_channel(c, channel, self.FOR_UPDATE)
        if event is not None:
            kind, percent, actor, reason, at = event
            c.execute("INSERT INTO rollout_events(rollout, event, percent, actor, reason, at) "
                      "VALUES (?, ?, ?, ?, ?, ?)", (rollout_id, kind, percent, actor, reason, at))
        write_outbox(c, outbox, event[4] if event else time.time())

    def insert_rollout(self, row: dict[str, Any], channel: Channel | None, event: Event,
                       outbox: Iterable[Delivery] = ()) -> int:
        """Record a new rollout and its first channel document in one transaction.

        Raises StaleWrite when the channel moved or already has an active rollout."""
        names = sorted(row)
        with self._tx() as c:
            try:
                cur = c.execute(f"INSERT INTO rollouts({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
                                "RETURNING id", [row[n] for n in names])
                rollout_id = int(cur.fetchone()[0])
            except self.INTEGRITY_ERRORS:
                raise StaleWrite(f"channel {row['product']}/{row['channel']} already has a rollout") from None
            c.execute("INSERT INTO offered(product, version, first_offered) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                      (row["product"], row["release"], row["started"]))
            self._rollout_write(c, rollout_id, channel, event, outbox)
        return rollout_id

    def update_rollout(self, rollout_id: int, revision: int, changes: dict[str, Any], channel: Channel | None,
                       event: Event | None, outbox: Iterable[Delivery] = ()) -> None:
        """Apply ``changes`` only if the rollout is still at ``revision`` (and the channel
        at ``channel.sequence - 1``), together with the new channel document; else StaleWrite."""
        names = sorted(changes)
        with self._tx() as c:
            cur = c.execute(f"UPDATE rollouts SET {''.join(f'{n} = ?, ' for n in names)}revision = revision + 1 "
                            "WHERE id = ? AND revision = ?", [*(changes[n] for n in names), rollout_id, revision])
            if cur.rowcount != 1:
                raise StaleWrite(f"rollout {rollout_id} changed concurrently")
            self._rollout_write(c, rollout_id, channel, event, outbox)

    def get_rollout(self, rollout_id: int) -> dict[str, Any] | None:
        """A rollout's row, or None."""
        row = self._conn().execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        return None if row is None else dict(row)

    def latest_rollout(self, product: str, channel: str, active_only: bool = False) -> dict[str, Any] | None:
        """The newest rollout (running or halted only, with ``active_only``) of a channel, or None."""
        sql = "SELECT * FROM rollouts WHERE product = ? AND channel = ?"
        if active_only:
            sql += " AND state IN ('running', 'halted')"
        row = self._conn().execute(sql + " ORDER BY id DESC LIMIT 1", (product, channel)).fetchone()
        return None if row is None else dict(row)

    def active_rollouts(self, product: str | None = None, release: str | None = None) -> list[dict[str, Any]]:
        """Running and halted rollouts (of a product; rolling a release out or back), oldest first."""
        sql, params = "SELECT * FROM rollouts WHERE state IN ('running', 'halted')", []
        if product is not None:
            sql, params = sql + " AND product = ?", [product]
        if release is not None:
            sql, params = sql + " AND (release = ? OR previous = ?)", [*params, release, release]
        return [dict(r) for r in self._conn().execute(sql + " ORDER BY id", params)]

    def rollout_events(self, rollout_id: int) -> list[dict[str, Any]]:
        """A rollout's events, oldest first."""
        rows = self._conn().execute("SELECT event, percent, actor, reason, at FROM rollout_events "
                                    "WHERE rollout = ? ORDER BY id", (rollout_id,)).fetchall()
        return [{**dict(r), "at": format_epoch(r["at"])} for r in rows]
