"""Network access for the client: bounded, resumable, retried, failing over.

Every download has an upper bound known before it starts (the object size
from signed metadata, or a configured cap for documents); a response that
runs past it is cut and refused.  Objects are written to
``ROOT/.cas/downloads/<blake3>.part`` and resumed with ``Range``/``If-Range``
(also across a process restart), checked against their BLAKE3, then renamed.
Connection errors, 5xx and 429/503 are retried after ``ClientConfig.retry_delay``
(1, 2, 4, 8 s by default: doubling, capped, optional jitter; ``Retry-After`` honoured); other 4xx are not retried; each server in
the configured list is tried in turn.  Every foreign exception is wrapped in
``DownloadError`` here.  A document is accepted per server (``Fetcher.accepted``): one
that fails its check (malformed, unsigned, replayed) is that server's failure, and the
next server is asked; only when every server failed is the check's error raised.
"""
from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TypeVar

import httpx

from casformat.errors import DocumentError
from deltagen.digests import hash_stream

from .config import ClientConfig
from .errors import DownloadError, NotAvailable

RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
CHUNK = 256 << 10

T = TypeVar("T")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class RateLimiter:
    """A token bucket shared by all downloads (bytes per second; 0 = off)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._allowance = float(rate)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        async with self._lock:
            now = time.monotonic()
            self._allowance = min(float(self.rate), self._allowance + (now - self._stamp) * self.rate)
            self._stamp = now
            self._allowance -= n
            if self._allowance < 0:
                await asyncio.sleep(-self._allowance / self.rate)


class SlowSender:
    """Refuses a response that drips in below ``min_rate`` bytes/s once ``grace`` seconds passed
    (a slowloris-style sender that never trips the per-read timeout)."""

    def __init__(self, what: str, min_rate: int, grace: float) -> None:
        self.what, self.min_rate, self.grace = what, min_rate, grace
        self.started = time.monotonic()
        self.received = 0

    def add(self, n: int) -> None:
        self.received += n
        elapsed = time.monotonic() - self.started
        if self.min_rate and elapsed > self.grace and self.received / elapsed < self.min_rate:
            raise DownloadError(f"{self.what}: {self.received} bytes in {elapsed:.0f}s is below the minimum "
                                f"rate of {self.min_rate} B/s", retryable=True)


class Fetcher:
    def __init__(self, config: ClientConfig, downloads: Path,
                 progress: Callable[[int], None] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.downloads = downloads
        self.progress = progress or (lambda n: None)
        self.limiter = RateLimiter(config.bandwidth_bytes_per_s)
        self.bytes_downloaded = 0
        timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=True, transport=transport,
                                       limits=httpx.Limits(max_connections=max(4, config.concurrency * 2)),
                                       # identity: bodies are read raw (exact byte counts, Range
                                       # offsets, digests), so a compressing mirror or CDN must not
                                       # be invited to gzip them (httpx offers gzip/deflate/zstd).
                                       headers={"User-Agent": "cas-client/0.1",
                                                "Accept-Encoding": "identity"})
        self._gate = asyncio.Semaphore(config.concurrency)
        self._verified: set[Path] = set()  # downloads whose BLAKE3 was checked by this fetcher
        # Servers in the order to try them; one that fails (other than 404) moves to the back,
        # so a dead or lying mirror costs its timeouts once per update, not once per object.
        self._servers = list(config.servers)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ retry core
    async def _with_retries(self, what: str, attempt_once: Callable[[str], Awaitable[T]]) -> T:
        """Run ``attempt_once(server)`` over every server with retries; first success wins."""
        errors: list[str] = []
        not_found = 0
        refused: DocumentError | None = None   # the last document a server sent that failed its check
        for server in list(self._servers):
            for attempt in range(self.config.attempts):
                try:
                    return await attempt_once(server.rstrip("/"))
                except NotAvailable as exc:
                    not_found += 1
                    errors.append(f"{server}: {exc.message}")
                    break
                except DocumentError as exc:   # garbage or a lie from this server: ask the next one
                    refused = exc
                    errors.append(f"{server}: refused: {exc.message}")
                    self._demote(server)
                    break
                except DownloadError as exc:
                    errors.append(f"{server}: {exc.message}")
                    if not exc.retryable or attempt == self.config.attempts - 1:
                        self._demote(server)
                        break
                    wait = exc.retry_after if exc.retry_after is not None else \
                        self.config.retry_delay(attempt, random.random())
                    await asyncio.sleep(min(wait, self.config.max_backoff_s))
        if not_found:
            # At least one server answered 404 and none had it: that is "not available", even
            # when another server was down (else one dead mirror turns every absent document,
            # e.g. the next root, into a failed update).
            raise NotAvailable(f"{what}: not available on any server: " + "; ".join(errors[-4:]))
        if refused is not None:
            raise refused
        raise DownloadError(f"{what} failed on every server: " + "; ".join(errors[-4:]))

    def _demote(self, server: str) -> None:
        if len(self._servers) > 1 and server in self._servers:
            self._servers.remove(server)
            self._servers.append(server)

    # ------------------------------------------------------------------ documents
    async def accepted(self, path: str, max_bytes: int, accept: Callable[[bytes], T]) -> T:
        """GET a document (at most ``max_bytes``) and return ``accept(body)``; a server whose
        document ``accept`` refuses (``DocumentError``) counts as failed and the next is asked."""

        async def once(server: str) -> T:
            return accept(await self._document_once(server, path, max_bytes))

        return await self._with_retries(path, once)

    async def _document_once(self, server: str, path: str, max_bytes: int) -> bytes:
        """One GET of a document.  Documents (unlike objects) may come gzipped: the delta
        document of a small update is often larger than its patches, and gzip shrinks it ~10x.
        ``max_bytes`` bounds the bytes received and the bytes inflated (a gzip bomb is cut at
        the cap, never inflated past it); a truncated or trailing-junk stream is refused."""
        try:
            async with self._http.stream("GET", server + path, headers={"Accept-Encoding": "gzip"}) as response:
                self._check_status(response, path)
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise DownloadError(f"{path}: {declared} bytes exceeds the cap of {max_bytes}")
                encoding = response.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("identity", "gzip"):
                    raise DownloadError(f"{path}: Content-Encoding {encoding!r} was not asked for")
                gzipped = encoding == "gzip" and response.status_code != 304   # a 304 has no body
                inflate = zlib.decompressobj(wbits=31) if gzipped else None
                body = bytearray()
                received = 0
                slow = SlowSender(path, self.config.min_rate_bytes_per_s, self.config.slow_grace_s)
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    slow.add(len(chunk))
                    if received > max_bytes:
                        raise DownloadError(f"{path}: response runs past the cap of {max_bytes} bytes")
                    if inflate is None:
                        body += chunk
                        continue
                    try:   # max_length >= 1 (0 would mean unbounded): body never passes max_bytes + 1
                        body += inflate.decompress(chunk, max_bytes + 1 - len(body))
                    except zlib.error as exc:
                        raise DownloadError(f"{path}: corrupt gzip body: {exc}") from None
                    if len(body) > max_bytes or inflate.unconsumed_tail:
                        raise DownloadError(f"{path}: gzip body inflates past the cap of {max_bytes} bytes")
                    if inflate.eof and inflate.unused_data:
                        raise DownloadError(f"{path}: bytes after the end of the gzip body")
                if inflate is not None and not inflate.eof:
                    raise DownloadError(f"{path}: gzip body ends before its end")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise DownloadError(f"{path}: {type(exc).__name__}: {exc}", retryable=True) from None

    def _check_status(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status in (200, 206, 304):
            return
        if status == 404:
            raise NotAvailable(f"{what}: 404", status=404)
        retryable = status in RETRY_STATUSES
        raise DownloadError(f"{what}: HTTP {status}", retryable=retryable, status=status,
                            retry_after=_retry_after(response) if retryable else None)

    # ------------------------------------------------------------------ objects
    def partial_path(self, digest: str) -> Path:
        return self.downloads / f"{digest}.part"

    def final_path(self, digest: str) -> Path:
        return self.downloads / digest

    async def object(self, digest: str, size: int) -> Path:
        """Download (or resume) one object, verified against its BLAKE3 and size."""
        final = self.final_path(digest)
        if final in self._verified:
            return final
        if final.exists():  # left by an earlier run: checked once before use
            with open(final, "rb") as fh:
                if hash_stream(fh).blake3 == digest:
                    self._verified.add(final)
                    return final
            final.unlink()
        async with self._gate:
            return await self._with_retries(f"object {digest[:16]}", lambda s: self._fetch_object(s, digest, size))

    async def _fetch_object(self, server: str, digest: str, size: int) -> Path:
        part = self.partial_path(digest)
        final = self.final_path(digest)
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        headers = {}
        if 0 < have < size:
            headers = {"Range": f"bytes={have}-", "If-Range": f'"{digest}"'}
        if have == size and size > 0:
            return self._finish(part, final, digest, size)
        url = f"{server}/v1/objects/{digest}"
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                self._check_status(response, f"object {digest[:16]}")
                if response.status_code == 304:
                    raise DownloadError(f"object {digest[:16]}: unexpected 304 to an unconditional GET")
                mode = "ab"
                if response.status_code == 206:
                    content_range = response.headers.get("content-range", "")
                    if not content_range.startswith(f"bytes {have}-"):
                        raise DownloadError(f"object {digest[:16]}: unexpected Content-Range {content_range!r}")
                else:
                    mode, have = "wb", 0
                with open(part, mode) as fh:
                    have = await self._copy_body(response, fh, have, size, f"object {digest[:16]}")
        except httpx.HTTPError as exc:
            raise DownloadError(f"object {digest[:16]}: {type(exc).__name__}: {exc}", retryable=True) from None
        if have != size:
            raise DownloadError(f"object {digest[:16]}: got {have} of {size} bytes", retryable=True)
        return self._finish(part, final, digest, size)

    async def _copy_body(self, response: httpx.Response, fh: IO[bytes], have: int, size: int, what: str) -> int:
        """Append a response body to ``fh`` (which holds ``have`` bytes), never past ``size``,
        at the bandwidth limit, cut off when the sender is too slow; the bytes ``fh`` then holds.

        No chunk_size: httpx would buffer up to it and lose the buffer when the connection
        drops, so a cut under 256 KiB left nothing to resume.  No fsync: a download is only
        ever used after its BLAKE3 checks out, so a torn .part after a power cut is re-fetched,
        and the staged tree is made durable."""
        slow = SlowSender(what, self.config.min_rate_bytes_per_s, self.config.slow_grace_s)
        async for chunk in response.aiter_raw():
            if have + len(chunk) > size:
                fh.truncate(0)
                raise DownloadError(f"{what}: response runs past its {size} bytes")
            await self.limiter.take(len(chunk))
            fh.write(chunk)
            slow.add(len(chunk))
            have += len(chunk)
            self.bytes_downloaded += len(chunk)
            self.progress(len(chunk))
        fh.flush()
        return have

    def _finish(self, part: Path, final: Path, digest: str, size: int) -> Path:
        with open(part, "rb") as fh:
            actual = hash_stream(fh).blake3
        if actual != digest:
            part.unlink(missing_ok=True)
            raise DownloadError(f"object {digest[:16]}: content hashes to {actual[:16]}; discarded")
        os.replace(part, final)
        self._verified.add(final)
        return final



    # ------------------------------------------------------------------ byte ranges of an object
    async def object_range(self, digest: str, start: int, end: int, part: Path,
                           check: Callable[[Path], None]) -> Path:
        """Bytes ``[start, end)`` of object ``digest`` into ``part``, resumed from what ``part``
        already holds (also across a process restart), then ``check(part)`` (which raises
        ``DownloadError`` for bytes that do not verify; the next attempt or server is tried)."""
        async with self._gate:
            return await self._with_retries(f"object {digest[:16]} bytes {start}-{end - 1}",
                                            lambda s: self._fetch_range(s, digest, start, end, part, check))

    async def _fetch_range(self, server: str, digest: str, start: int, end: int, part: Path,
                           check: Callable[[Path], None]) -> Path:
        size = end - start
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        what = f"object {digest[:16]} bytes {start}-{end - 1}"
        if have < size:
            headers = {"Range": f"bytes={start + have}-{end - 1}", "If-Range": f'"{digest}"'}
            try:
                async with self._http.stream("GET", f"{server}/v1/objects/{digest}", headers=headers) as response:
                    self._check_status(response, what)
                    content_range = response.headers.get("content-range", "")
                    if response.status_code != 206 or not content_range.startswith(f"bytes {start + have}-"):
                        raise DownloadError(f"{what}: expected 206 with Content-Range from {start + have}, got "
                                            f"{response.status_code} {content_range!r}", retryable=True)
                    with open(part, "ab") as fh:
                        have = await self._copy_body(response, fh, have, size, what)
            except httpx.HTTPError as exc:
                raise DownloadError(f"{what}: {type(exc).__name__}: {exc}", retryable=True) from None
            if have != size:
                raise DownloadError(f"{what}: got {have} of {size} bytes", retryable=True)
        try:
            check(part)
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
        return part
