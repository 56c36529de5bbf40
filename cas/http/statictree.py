"""Keeping the static document tree (cas/static.py) current from a running ``cas serve``.

``StaticTreeWatcher.run`` exports the tree at start-up, after every write this process
accepted (any method but GET and HEAD, answered below 400 or with a 5xx: ``Trigger``), and
whenever ``meta.data_version()`` moves (a change made by another process: the ``cas`` CLI,
another replica, the delta worker), checked every ``static_tree_poll_seconds``; and in any
case every ``static_tree_refresh_seconds`` (PostgreSQL's data version moves with channel
writes only); never more than once per ``static_tree_poll_seconds``.  The check and the export run on one thread of their own: SQLite's
``PRAGMA data_version`` is per connection (each thread has its own, and a connection does not
see its own commits there), and a PostgreSQL outage must not block the event loop.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import static
from ..repo import Repo

log = logging.getLogger("cas.http")

READS = ("GET", "HEAD", "OPTIONS")


class StaticTreeWatcher:
    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.wake = asyncio.Event()
        self.exports = 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="static-tree")
        self._seen: int | None = None
        self._last = 0.0

    def changed(self) -> None:
        self.wake.set()

    def step(self, woken: bool) -> None:
        """Export when woken, when the data version moved, or when the refresh interval passed."""
        version = self.repo.meta.data_version()
        if woken or version != self._seen or \
                time.monotonic() - self._last >= self.repo.config.static_tree_refresh_seconds:
            static.export(self.repo)
            self.exports += 1
            self._seen, self._last = version, time.monotonic()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        poll = self.repo.config.static_tree_poll_seconds
        try:
            while True:
                started = loop.time()
                woken = self.wake.is_set()
                self.wake.clear()
                try:
                    await loop.run_in_executor(self._thread, self.step, woken)
                except Exception:   # a failing export (full disk, database outage) is retried next tick
                    log.exception("static tree export failed")
                try:
                    await asyncio.wait_for(self.wake.wait(), poll)
                except TimeoutError:
                    pass
                # One export per poll interval at most, whatever wakes it: a flood of accepted
                # writes (anonymous reports among them) costs 1/poll exports a second, not one each.
                rest = started + poll - loop.time()
                if rest > 0:
                    await asyncio.sleep(rest)
        finally:
            self._thread.shutdown(wait=False)


class Trigger:
    """ASGI middleware: wake the watcher after a write that was accepted (below 400): a refused
    one changed nothing, and anyone may send those."""

    def __init__(self, app: ASGIApp, watcher: StaticTreeWatcher) -> None:
        self.app = app
        self.watcher = watcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READS:
            await self.app(scope, receive, send)
            return
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if status < 400 or status >= 500:   # 5xx: it may have changed something before failing
                self.watcher.changed()
