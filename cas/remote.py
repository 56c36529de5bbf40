"""A small HTTP client for the server's publish and admin API (httpx).

Errors from the server come back as ``RemoteError`` carrying the server's
code, message and detail; connection errors are retried with backoff.
"""
from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx

from .errors import CasError

RETRY_STATUSES = {429, 502, 503, 504}
ATTEMPTS = 4            # per request: connection errors and RETRY_STATUSES are retried ...
BACKOFF_SECONDS = 0.5   # ... after this long, doubled each time, with jitter (as cas-client does)


class RemoteError(CasError):
    """The server answered an error (its code, message and detail) or could not be reached.

    ``http_status`` is the server's answer (0 when there was none); ``status`` stays the
    status this error would have if it reached our own HTTP layer (502)."""

    status, code = 502, "remote_error"

    def __init__(self, http_status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(message, detail, code=code)
        self.http_status = http_status

    def __str__(self) -> str:
        return f"{self.message} ({self.code}, HTTP {self.http_status})"


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        raise RemoteError(response.status_code, error["code"], error["message"], error.get("detail"))
    except (ValueError, KeyError, TypeError):
        raise RemoteError(response.status_code, f"http_{response.status_code}",
                          response.text[:200] or response.reason_phrase) from None


def make_client(server: str, token: str | None, timeout: float = 60.0) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=server.rstrip("/"), headers=headers,
                             timeout=httpx.Timeout(timeout, connect=10.0),
                             limits=httpx.Limits(max_connections=16))


async def request(client: httpx.AsyncClient, method: str, url: str, attempts: int = ATTEMPTS,
                  **kwargs: Any) -> httpx.Response:
    """One request with retries on connection errors and 429/502/503/504; raises RemoteError
    (``connection_failed`` when the server could not be reached at all)."""
    delay = BACKOFF_SECONDS
    for attempt in range(attempts):
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            if attempt == attempts - 1:
                raise RemoteError(0, "connection_failed", f"{method} {url}: {exc}") from None
        else:
            if response.status_code not in RETRY_STATUSES or attempt == attempts - 1:
                raise_for_error(response)
                return response
        await asyncio.sleep(delay * (1 + random.random()))
        delay *= 2
    raise AssertionError("unreachable")


def call(server: str, token: str | None, method: str, url: str, **kwargs: Any) -> Any:
    """Synchronous one-shot call for the CLI; returns the JSON answer."""
    async def run() -> Any:
        async with make_client(server, token) as client:
            response = await request(client, method, url, **kwargs)
            return response.json() if response.content else {}
    return asyncio.run(run())
