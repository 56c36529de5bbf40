"""Reports to the server: ``POST /v1/products/{p}/reports`` with the outcome of an update.

Best effort: each configured server is tried until one answers below 500, and the whole
attempt is bounded by ``report_timeout_s`` so a report never holds a finished update.
"""
from __future__ import annotations

import asyncio

import httpx

from .config import ClientConfig
from .log import Log


async def send_report(config: ClientConfig, outcome: str, from_version: str | None, to_version: str | None,
                      detail: str, log: Log, transport: httpx.AsyncBaseTransport | None = None) -> None:
    """Report ``outcome`` (success, failed, rolled_back) of the update ``from_version`` -> ``to_version``."""
    body = {"client_id": config.client_id, "from": from_version, "to": to_version, "outcome": outcome,
            "detail": detail[:1000]}
    timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
    headers = {"Authorization": f"Bearer {config.report_token}"} if config.report_token else {}

    async def send() -> None:
        async with httpx.AsyncClient(timeout=timeout, transport=transport, headers=headers) as http:
            for server in config.servers:
                try:
                    response = await http.post(f"{server.rstrip('/')}/v1/products/{config.product}/reports",
                                               json=body)
                except httpx.HTTPError:
                    continue
                if response.status_code < 500:
                    return

    try:
        await asyncio.wait_for(send(), timeout=config.report_timeout_s)
    except TimeoutError:
        log("could not deliver the report in time; giving up on it")
