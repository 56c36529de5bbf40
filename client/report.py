"""Reports to the server: ``POST /v1/products/{p}/reports`` with the outcome of an update.

Reports (and the report token) go to one host only: ``report_url`` when configured, else
the last of ``servers`` (list mirrors first and the origin last).  Never to a mirror: a
mirror does not take reports, and the token is not meant for it.  Best effort: the
attempt is bounded by ``report_timeout_s`` so a report never holds a finished update.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx

from .config import ClientConfig
from .log import Log


def report_server(config: ClientConfig) -> str:
    """The one server that receives reports and the report token."""
    return config.report_url or config.servers[-1]


async def send_report(config: ClientConfig, outcome: str, from_version: str | None, to_version: str | None,
                      detail: str, log: Log, transport: httpx.AsyncBaseTransport | None = None,
                      failed: Sequence[dict[str, Any]] = ()) -> None:
    """Report ``outcome`` (success, failed, rolled_back) of the update ``from_version`` -> ``to_version``;
    ``failed``: the releases that failed their health check here and are skipped (``client/failed.py``)."""
    body: dict[str, Any] = {"client_id": config.client_id, "from": from_version, "to": to_version,
                            "outcome": outcome, "detail": detail[:1000]}
    if failed:
        body["failed_releases"] = [{"version": row.get("version"), "manifest": row["manifest"]}
                                   for row in failed[-20:]]
    timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
    headers = {"Authorization": f"Bearer {config.report_token}"} if config.report_token else {}

    url = f"{report_server(config).rstrip('/')}/v1/products/{config.product}/reports"

    async def send() -> None:
        async with httpx.AsyncClient(timeout=timeout, transport=transport, headers=headers,
                                     follow_redirects=False) as http:   # a redirect must not carry the token
            try:
                response = await http.post(url, json=body)
            except httpx.HTTPError as exc:
                log(f"could not deliver the report: {type(exc).__name__}")
                return
            if response.status_code >= 300:
                log(f"the report was refused: HTTP {response.status_code}")

    try:
        await asyncio.wait_for(send(), timeout=config.report_timeout_s)
    except TimeoutError:
        log("could not deliver the report in time; giving up on it")
