"""Keeping the static document tree (cas/static.py) current from a running ``cas serve``.

``StaticTreeWatcher.run`` exports the tree at start-up, after every request this process
answered that may have changed something (any method but GET and HEAD: ``Trigger``), and
whenever ``meta.data_version()`` moves (a change made by another process: the ``cas`` CLI,
another replica, the delta worker), checked every ``static_tree_poll_seconds``; and in any
case every ``static_tree_refresh_seconds`` (PostgreSQL's data version moves with channel
writes only).  The check runs on the event loop's own thread, like ``FastPath``'s: SQLite's
``PRAGMA data_version`` is per connection, and each thread has its own.
"""
from __future__ import annotations

import asyncio
import logging
import time

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import static
from ..repo import Repo

log = logging.getLogger("cas.http")

READS = ("GET", "HEAD", "OPTIONS")


class StaticTreeWatcher:
    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.wake = asyncio.Event()
        self.exports = 0

    def changed(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        config = self.repo.config
        seen: int | None = None
        last = 0.0
        while True:
            woken = self.wake.is_set()
            self.wake.clear()
            try:
                version = self.repo.meta.data_version()
                if woken or version != seen or time.monotonic() - last >= config.static_tree_refresh_seconds:
                    await run_in_threadpool(static.export, self.repo)
                    self.exports += 1
                    seen, last = version, time.monotonic()
            except Exception:   # a failing export (full disk, database outage) is retried next tick
                log.exception("static tree export failed")
            try:
                await asyncio.wait_for(self.wake.wait(), config.static_tree_poll_seconds)
            except TimeoutError:
                pass


class Trigger:
    """ASGI middleware: wake the watcher after a request that may have changed something."""

    def __init__(self, app: ASGIApp, watcher: StaticTreeWatcher) -> None:
        self.app = app
        self.watcher = watcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READS:
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.watcher.changed()
