"""The webhook outbox: deliveries written in the transaction of the change they announce."""
from __future__ import annotations

from typing import Any, Iterable

from casformat.times import format_epoch

from .backend import Connection, MetadataBackend

#: (url, event, body) of one delivery to make
Delivery = tuple[str, str, bytes]
DELIVERY_STATES = ("pending", "delivered", "failed")


def write_outbox(c: Connection, rows: Iterable[Delivery], now: float) -> None:
    """Queue deliveries inside the caller's transaction, due at once."""
    rows = list(rows)
    if rows:
        c.executemany("INSERT INTO webhook_outbox(url, event, body, state, next_attempt, created) "
                      "VALUES (?, ?, ?, 'pending', ?, ?)", [(u, e, b, now, now) for u, e, b in rows])


class WebhookQueries(MetadataBackend):
    """The ``webhook_outbox`` table."""

    def enqueue_webhooks(self, rows: Iterable[Delivery], now: float) -> None:
        """Queue deliveries in a transaction of their own."""
        rows = list(rows)
        if rows:
            with self._tx() as c:
                write_outbox(c, rows, now)

    def claim_webhooks(self, now: float, lease_seconds: float, limit: int = 20) -> list[dict[str, Any]]:
        """Due deliveries, leased so that a concurrent drainer skips them."""
        with self._tx() as c:
            rows = [dict(r) for r in c.execute(
                "SELECT id, url, event, body, attempts FROM webhook_outbox WHERE state = 'pending' "
                "AND next_attempt <= ? ORDER BY next_attempt, id LIMIT ?" + self.SKIP_LOCKED, (now, limit))]
            if rows:
                c.executemany("UPDATE webhook_outbox SET next_attempt = ? WHERE id = ?",
                              [(now + lease_seconds, r["id"]) for r in rows])
        for r in rows:
            r["body"] = bytes(r["body"])
        return rows

    def finish_webhook(self, delivery_id: int, state: str, status: int | None, error: str | None,
                       next_attempt: float, now: float) -> None:
        """Record one delivery attempt: its new state, HTTP status or error, and when to try next."""
        with self._tx() as c:
            c.execute("UPDATE webhook_outbox SET state = ?, attempts = attempts + 1, last_status = ?, "
                      "last_error = ?, next_attempt = ?, delivered = ? WHERE id = ?",
                      (state, status, error, next_attempt, now if state == "delivered" else None, delivery_id))

    def webhook_summary(self, limit: int = 100) -> dict[str, Any]:
        """Deliveries per state and the latest ``limit`` deliveries."""
        c = self._conn()
        counts = {r[0]: r[1] for r in c.execute("SELECT state, COUNT(*) FROM webhook_outbox GROUP BY state")}
        rows = c.execute("SELECT id, url, event, state, attempts, next_attempt, last_status, last_error, created, "
                         "delivered FROM webhook_outbox ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        deliveries = [{**dict(r), "next_attempt": format_epoch(r["next_attempt"]),
                       "created": format_epoch(r["created"]),
                       "delivered": format_epoch(r["delivered"]) if r["delivered"] else None} for r in rows]
        return {"counts": {s: counts.get(s, 0) for s in DELIVERY_STATES}, "deliveries": deliveries}
