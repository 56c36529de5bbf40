"""The hot read paths without the framework: small objects and channel documents.

Fleet traffic is dominated by two requests: "is the channel document still
the one I have?" (a 304) and small immutable objects.  This ASGI layer answers
them straight from memory (no thread-pool hop, no router scan); everything
else -- large objects, Range requests, tokens to check when anonymous reads are
off, errors -- falls through to the Starlette application unchanged.

Small objects are immutable, so their bytes are cached (LRU, bounded by
``small_object_cache_bytes``).  Channel documents are cached per process and
dropped whenever ``meta.data_version()`` moves: SQLite's ``data_version`` (another
connection committed) or PostgreSQL's ``channels`` counter (a channel moved, on any replica).

SQLite's check is a pragma on this thread's connection and runs in the loop.  PostgreSQL's
is a query, so it runs on the thread pool and is shared (:class:`VersionCheck`): a request
waits for the next check that *starts after it arrived*, so it never sees a channel older
than the last change committed before it came, and one query answers every request that
arrived while the previous one ran (without that, each replica served polls one database
round trip at a time: 743 304s/s, benchmarks/scale.py).
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from deltagen.digests import is_digest

from ..repo import Repo
from .conditional import etag_matches
from .metrics import Metrics

OBJECTS = "/v1/objects/"
PRODUCTS = "/v1/products/"
IMMUTABLE = b"public, max-age=31536000, immutable"


class SmallObjectCache:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def get(self, digest: str) -> bytes | None:
        data = self._items.get(digest)
        if data is not None:
            self._items.move_to_end(digest)
        return data

    def put(self, digest: str, data: bytes) -> None:
        if len(data) > self.budget or digest in self._items:
            return
        self._items[digest] = data
        self.used += len(data)
        while self.used > self.budget:
            _, old = self._items.popitem(last=False)
            self.used -= len(old)


class VersionCheck:
    """Single-flight calls of a blocking ``read`` on the thread pool.  ``await current()``
    returns the result of a call that started after ``current()`` was called: either the
    call queued behind the one running, or a new one.  A failed call fails its waiters."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read
        self._running = False
        self._next: asyncio.Future[int] | None = None

    async def current(self) -> int:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            # a waiter cancelled under its shield leaves the result unread: mark it read
            self._next.add_done_callback(lambda f: f.cancelled() or f.exception())
        future = self._next
        if not self._running:
            self._start()
        return await asyncio.shield(future)

    def _start(self) -> None:
        future, self._next = self._next, None
        assert future is not None
        self._running = True
        task = asyncio.ensure_future(run_in_threadpool(self._read))
        task.add_done_callback(lambda done: self._finish(future, done))

    def _finish(self, future: asyncio.Future[int], done: asyncio.Future[int]) -> None:
        self._running = False
        if done.cancelled():
            future.cancel()
            return
        error = done.exception()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(done.result())
        if self._next is not None:
            self._start()


class FastPath:
    def __init__(self, app: ASGIApp, repo: Repo, metrics: Metrics) -> None:
        self.app = app
        self.repo = repo
        self.metrics = metrics
        self.objects = SmallObjectCache(repo.config.small_object_cache_bytes)
        self._channels: dict[tuple[str, str], tuple[str, bytes]] = {}
        self._data_version = -1
        meta = repo.meta
        self._version_check = None if meta.data_version_is_local else VersionCheck(meta.data_version)
        self._channel_cache_control = f"public, max-age={repo.config.channel_max_age_seconds}".encode()
        self._count_304 = metrics.requests.labels("GET", "fast_not_modified", "304")
        self._count_obj = metrics.requests.labels("GET", "fast_object", "200")
        self._count_chan = metrics.requests.labels("GET", "fast_channel", "200")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and self.repo.config.anonymous_read:
            path: str = scope["path"]
            if path.startswith(OBJECTS):
                if await self._object(scope, send, path[len(OBJECTS):]):
                    return
            elif path.startswith(PRODUCTS) and scope["method"] == "GET":
                parts = path[len(PRODUCTS):].split("/")
                if len(parts) == 3 and parts[1] == "channels":
                    if await self._channel(scope, send, parts[0], parts[2]):
                        return
        await self.app(scope, receive, send)

    @staticmethod
    def _headers(scope: Scope) -> dict[bytes, bytes]:
        return dict(scope["headers"])

    async def _object(self, scope: Scope, send: Send, digest: str) -> bool:
        local = self.repo.objects.local_path(digest) if is_digest(digest) else None
        if local is None:
            return False  # a remote backend (S3) is never read inside the event loop
        headers = self._headers(scope)
        if b"range" in headers or b"authorization" in headers:
            return False
        etag = f'"{digest}"'
        inm = headers.get(b"if-none-match")
        if inm is not None and etag_matches(inm.decode("latin-1"), etag):
            if self.objects.get(digest) is None and not self.repo.objects.exists(digest):
                return False  # not here (any more): the application answers 404
            await self._send(send, 304, [(b"etag", etag.encode()), (b"cache-control", IMMUTABLE)], b"")
            self._count_304.inc()
            return True
        data = self.objects.get(digest)
        if data is None:
            try:
                size = local.stat().st_size
            except FileNotFoundError:
                return False  # the application answers 404 with its JSON error
            if size > self.repo.config.small_object_max_bytes:
                return False
            data = local.read_bytes()
            self.objects.put(digest, data)
            self.metrics.small_object_cache_bytes.set(self.objects.used)
        body = b"" if scope["method"] == "HEAD" else data
        await self._send(send, 200, [(b"content-type", b"application/octet-stream"),
                                     (b"content-length", str(len(data)).encode()),
                                     (b"etag", etag.encode()), (b"cache-control", IMMUTABLE),
                                     (b"accept-ranges", b"bytes")], body)
        self._count_obj.inc()
        return True

    async def _channel(self, scope: Scope, send: Send, product: str, channel: str) -> bool:
        headers = self._headers(scope)
        if b"authorization" in headers:
            return False
        if self._version_check is None:
            version = self.repo.meta.data_version()
        else:
            try:
                version = await self._version_check.current()
            except Exception:
                return False  # the database is unreachable: the application answers 503
        if version != self._data_version:
            self._channels.clear()
            self._data_version = version
        cached = self._channels.get((product, channel))
        if cached is None:
            if self._version_check is None:
                ch = self.repo.meta.get_channel(product, channel)
            else:
                try:
                    ch = await run_in_threadpool(self.repo.meta.get_channel, product, channel)
                except Exception:
                    return False
            if ch is None:
                return False
            cached = (ch.etag, ch.document)
            self._channels[(product, channel)] = cached
        etag, document = cached
        inm = headers.get(b"if-none-match")
        common = [(b"etag", etag.encode()), (b"cache-control", self._channel_cache_control)]
        if inm is not None and etag_matches(inm.decode("latin-1"), etag):
            await self._send(send, 304, common, b"")
            self._count_304.inc()
        else:
            await self._send(send, 200, [(b"content-type", b"application/json"),
                                         (b"content-length", str(len(document)).encode()), *common], document)
            self._count_chan.inc()
        return True

    @staticmethod
    async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
