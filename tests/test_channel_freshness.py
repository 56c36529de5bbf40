"""The channel fast path on PostgreSQL: its version check runs off the event loop, shared by
the requests that wait for it, and never answers with a channel older than the last change
committed before the request arrived (cas/http/fastpath.py, ``VersionCheck``)."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import start_server

from cas.http.fastpath import VersionCheck


class SlowCounter:
    """A blocking read that takes ``delay`` seconds and returns the value at its *start*."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.value = 0
        self.calls = 0
        self.lock = threading.Lock()
        self.fail = False

    def read(self) -> int:
        with self.lock:
            self.calls += 1
            seen = self.value
        time.sleep(self.delay)
        if self.fail:
            raise ConnectionError("database down")
        return seen


def test_waiters_share_one_call_that_started_after_they_arrived() -> None:
    counter = SlowCounter(0.2)

    async def scenario() -> None:
        check = VersionCheck(counter.read)
        first = asyncio.ensure_future(check.current())   # starts call 1, which sees value 0
        await asyncio.sleep(0.05)
        counter.value = 1                                # a change committed after call 1 started
        later = [asyncio.ensure_future(check.current()) for _ in range(20)]
        assert await first == 0
        # the twenty arrived while call 1 ran: they wait for call 2, which sees the change
        assert await asyncio.gather(*later) == [1] * 20
        assert counter.calls == 2
        # nothing running: the next request starts a call of its own
        counter.value = 2
        assert await check.current() == 2
        assert counter.calls == 3

    asyncio.run(scenario())


def test_a_failed_call_fails_its_waiters_and_the_next_call_is_fresh() -> None:
    counter = SlowCounter(0.05)

    async def scenario() -> None:
        check = VersionCheck(counter.read)
        counter.fail = True
        results = await asyncio.gather(*(check.current() for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results), results
        counter.fail = False
        counter.value = 7
        assert await check.current() == 7

    asyncio.run(scenario())


def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    counter = SlowCounter(0.1)

    async def scenario() -> None:
        check = VersionCheck(counter.read)
        doomed = asyncio.ensure_future(check.current())
        kept = asyncio.ensure_future(check.current())
        await asyncio.sleep(0.02)
        doomed.cancel()
        assert await kept == 0
        with pytest.raises(asyncio.CancelledError):
            await doomed

    asyncio.run(scenario())


@pytest.mark.timeout(180)
def test_polls_on_postgresql_see_every_channel_move_at_once(tmp_path: Path, postgres_url: str,
                                                            release_trees: list[Path]) -> None:
    """Thirty-two pollers press on the channel document while another process moves the
    channel: every answer after the move returned carries the new document."""
    server = start_server(tmp_path / "store", config=f'metadata_url = "{postgres_url}"\ndelta_builder = false\n')
    try:
        key = str(server.store / "keys" / "release.pem")
        product = f"fresh{time.monotonic_ns()}"
        for version, tree in (("1.0.0", release_trees[0]), ("1.1.0", release_trees[1])):
            server.cas("publish", str(tree), "--product", product, "--version", version, "--key", key,
                       "--status", "released")
        path = f"/v1/products/{product}/channels/stable"
        server.cas("channel", "set", product, "stable", "1.0.0")
        old = httpx.get(server.url + path, timeout=30)
        assert old.status_code == 200
        old_etag = old.headers["etag"]
        moved = threading.Event()
        stale_after_move: list[str] = []
        answers = 0
        stop = time.monotonic() + 60

        def poll() -> None:
            nonlocal answers
            with httpx.Client(base_url=server.url, timeout=30) as http:
                while time.monotonic() < stop:
                    was_moved = moved.is_set()
                    r = http.get(path, headers={"If-None-Match": old_etag})
                    answers += 1
                    if was_moved and r.status_code != 200:
                        stale_after_move.append(str(r.status_code))
                    if was_moved:
                        return

        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(poll) for _ in range(32)]
            time.sleep(1.0)
            assert answers > 32  # the pollers were answered (304s) before the move
            server.cas("channel", "set", product, "stable", "1.1.0")
            moved.set()
            for f in futures:
                f.result()
        assert stale_after_move == []
        new = httpx.get(server.url + path, headers={"If-None-Match": old_etag}, timeout=30)
        assert new.status_code == 200 and new.json()["signed"]["release"] == "1.1.0"
    finally:
        server.stop()
