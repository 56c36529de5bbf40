"""Webhooks: lifecycle moves and rollout changes, POSTed to configured URLs.

Events go into a persistent outbox (``webhook_outbox`` in the metadata), in the
same transaction as the rollout change that caused them where there is one, so
a request never waits on a receiver.  A background job (``deliver_due``, run by
the server every ``webhook_poll_seconds``) POSTs each due delivery with
``X-Deltacas-Signature: sha256=<hex HMAC-SHA256 of the body>`` under the
webhook's secret, and retries failures with exponential backoff up to
``webhook_max_attempts``.  Secrets stay in the configuration, never in the outbox.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

import httpx

from casformat.times import format_epoch

from .clock import Clock
from .config import Config
from .repo import Repo

log = logging.getLogger("cas.webhooks")

SIGNATURE_HEADER = "X-Deltacas-Signature"
LEASE_SECONDS = 60.0


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def body_of(event: str, data: dict[str, Any], now: float) -> bytes:
    """The delivery's JSON body: the event, when it happened (``now``) and its data."""
    return json.dumps({"event": event, "at": format_epoch(now), "data": data},
                      sort_keys=True, separators=(",", ":")).encode("utf-8")


def outbox_rows(config: Config, event: str, data: dict[str, Any], now: float) -> list[tuple[str, str, bytes]]:
    """(url, event, body) for every configured webhook; empty when none is configured."""
    body = body_of(event, data, now)
    return [(hook["url"], event, body) for hook in config.webhooks]


def enqueue(repo: Repo, clock: Clock, event: str, data: dict[str, Any]) -> None:
    now = clock.now()
    repo.meta.enqueue_webhooks(outbox_rows(repo.config, event, data, now), now)


def backoff(config: Config, attempts: int) -> float:
    """Delay before the next try after ``attempts`` failed ones."""
    return min(config.webhook_backoff_seconds * 2 ** max(attempts - 1, 0), config.webhook_max_backoff_seconds)


def deliver_due(repo: Repo, clock: Clock, transport: httpx.BaseTransport | None = None) -> int:
    """POST every due delivery once; returns how many were delivered."""
    config = repo.config
    due = repo.meta.claim_webhooks(clock.now(), LEASE_SECONDS)
    if not due:
        return 0
    secrets = {hook["url"]: hook["secret"] for hook in config.webhooks}
    delivered = 0
    with httpx.Client(timeout=config.webhook_timeout_seconds, transport=transport) as http:
        for row in due:
            body, attempts = bytes(row["body"]), row["attempts"] + 1
            secret = secrets.get(row["url"])
            status: int | None = None
            if secret is None:
                error: str | None = "webhook no longer configured"
                attempts = config.webhook_max_attempts
            else:
                try:
                    response = http.post(row["url"], content=body, headers={
                        "Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, body),
                        "X-Deltacas-Event": row["event"], "X-Deltacas-Delivery": str(row["id"])})
                    status = response.status_code
                    error = None if 200 <= status < 300 else f"HTTP {status}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"[:500]
            now = clock.now()
            if error is None:
                repo.meta.finish_webhook(row["id"], "delivered", status, None, now, now)
                delivered += 1
            elif attempts >= config.webhook_max_attempts:
                log.warning("webhook %s to %s failed for good: %s", row["event"], row["url"], error)
                repo.meta.finish_webhook(row["id"], "failed", status, error, now, now)
            else:
                repo.meta.finish_webhook(row["id"], "pending", status, error, now + backoff(config, attempts), now)
    return delivered
