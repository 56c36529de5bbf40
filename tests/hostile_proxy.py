"""A hostile reverse proxy for client tests: a raw HTTP/1.1 server on loopback in
front of a real ``cas serve``, with switchable faults per path pattern.

It speaks HTTP by hand (asyncio streams, one request per connection,
``Connection: close``) so that it can do what a well-behaved framework refuses
to: cut a body half way, send more bytes than ``Content-Length`` declares, send
an endless body, or stall.  Upstream requests go through httpx.

    proxy = HostileProxy(server.url).start()
    proxy.fault(r"^/v1/objects/", "cut", after=100_000, times=1)
    ...
    proxy.seen(r"^/v1/objects/")      # [Seen(method, path, range, if_range, status, ...)]
    proxy.stop()

Fault kinds (``params``):
  cut       after=N          send the upstream headers, N body bytes, then drop the connection
  corrupt   offsets=[..]     flip bytes (default: the middle byte) of the upstream body
  status    code, headers={}, body=b""   answer without asking upstream (503 + Retry-After, 429, 403...)
  notfound                   404 with a JSON error, like a mirror that lacks the data
  replace   body, code=200, content_type, headers={}  serve these bytes instead (replayed or forged
                             documents, a gzip bomb with ``content-encoding: gzip``)
  transform fn(bytes)->bytes rewrite the upstream body (Content-Length follows)
  overlong  extra=N, declare=True   append N junk bytes; declare=False keeps the old Content-Length
  endless   chunk=65536      headers without a length, then junk forever (until the peer hangs up)
  huge_length length=N       declare Content-Length N, send the real body, then close
  stall     seconds, after=None   before the headers (after=None) or after N body bytes: say nothing
  slow      rate=bytes/s     pass the body through at a limited rate
  gzip                       like a CDN with compression on: gzip the body when the request
                             accepts it (Content-Encoding: gzip), pass it through otherwise
A fault applies to the first ``times`` matching requests (None: all) and is
then spent.  ``Seen.sent`` counts body bytes the proxy wrote.
"""
from __future__ import annotations

import asyncio
import gzip
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
from conftest import wait_for_builds  # noqa: F401  (re-exported for the network tests)

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "te",
       "trailer", "upgrade", "proxy-connection", "host", "accept-encoding"}
REASONS = {200: "OK", 206: "Partial Content", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden",
           404: "Not Found", 416: "Range Not Satisfiable", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Fault:
    pattern: str
    kind: str
    times: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    used: int = 0

    def matches(self, target: str) -> bool:
        return (self.times is None or self.used < self.times) and re.search(self.pattern, target) is not None


@dataclass
class Seen:
    method: str
    path: str                        # with the query string
    range: str | None
    if_range: str | None
    headers: dict[str, str]
    fault: str | None = None
    status: int | None = None
    sent: int = 0                    # body bytes written to the client
    started: float = 0.0


class HostileProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.url = ""
        self.requests: list[Seen] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._http: httpx.AsyncClient | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------------ control (test thread)
    def start(self) -> HostileProxy:
        self._thread = threading.Thread(target=self._run, name="hostile-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        async def shutdown() -> None:
            assert self._server is not None and self._http is not None
            self._server.close()
            await self._http.aclose()
        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> HostileProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fault(self, pattern: str, kind: str, times: int | None = None, **params: Any) -> Fault:
        item = Fault(pattern, kind, times, params)
        with self._lock:
            self._faults.append(item)
        return item

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def seen(self, pattern: str = "", method: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.requests
                    if re.search(pattern, s.path) and (method is None or s.method == method)]

    # ------------------------------------------------------------------ loop thread
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            self._http = httpx.AsyncClient(base_url=self.upstream, timeout=60)
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            port = self._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"

        loop.run_until_complete(boot())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _pick(self, target: str) -> Fault | None:
        with self._lock:
            for item in self._faults:
                if item.matches(target):
                    item.used += 1
                    return item
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = b""
        if headers.get("content-length", "0").isdigit() and int(headers.get("content-length", "0")) > 0:
            body = await reader.readexactly(int(headers["content-length"]))
        seen = Seen(method, target, headers.get("range"), headers.get("if-range"), headers,
                    started=time.monotonic())
        with self._lock:
            self.requests.append(seen)
        item = self._pick(target)
        seen.fault = item.kind if item else None
        p = item.params if item else {}
        kind = item.kind if item else None

        # Faults answered without the upstream.
        if kind == "status":
            return await self._respond(writer, seen, p["code"], dict(p.get("headers", {})),
                                       p.get("body", b'{"error": {"code": "fault", "message": "injected"}}'))
        if kind == "notfound":
            return await self._respond(writer, seen, 404, {"content-type": "application/json"},
                                       b'{"error": {"code": "not_found", "message": "mirror lacks it"}}')
        if kind == "replace":
            data = p["body"] if isinstance(p["body"], bytes) else json.dumps(p["body"]).encode()
            return await self._respond(writer, seen, p.get("code", 200),
                                       {"content-type": p.get("content_type", "application/json"),
                                        **p.get("headers", {})}, data)
        if kind == "stall" and p.get("after") is None:
            await asyncio.sleep(p["seconds"])
            return

        assert self._http is not None
        forward = {k: v for k, v in headers.items() if k not in HOP}
        forward["accept-encoding"] = "identity"
        upstream = await self._http.request(method, target, headers=forward, content=body or None)
        status, data = upstream.status_code, upstream.content
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP}
        if kind is None or status >= 300:
            return await self._respond(writer, seen, status, out, data)
        if kind == "corrupt":
            flipped = bytearray(data)
            for offset in p.get("offsets") or [len(data) // 2]:
                if 0 <= offset < len(flipped):
                    flipped[offset] ^= 0xFF
            return await self._respond(writer, seen, status, out, bytes(flipped))
        if kind == "transform":
            fn: Callable[[bytes], bytes] = p["fn"]
            return await self._respond(writer, seen, status, out, fn(data))
        if kind == "cut":
            return await self._respond(writer, seen, status, out, data, limit=p["after"])
        if kind == "overlong":
            extra = b"J" * p.get("extra", 4096)
            declared = len(data) + len(extra) if p.get("declare", True) else len(data)
            return await self._respond(writer, seen, status, out, data + extra, declared=declared)
        if kind == "huge_length":
            return await self._respond(writer, seen, status, out, data, declared=p["length"])
        if kind == "endless":
            return await self._endless(writer, seen, status, out, data, p.get("chunk", 65536),
                                       p.get("max_seconds", 60))
        if kind == "stall":
            return await self._respond(writer, seen, status, out, data, limit=p["after"],
                                       stall=p["seconds"])
        if kind == "slow":
            return await self._respond(writer, seen, status, out, data, rate=p["rate"])
        if kind == "gzip":
            if "gzip" in headers.get("accept-encoding", ""):
                out["content-encoding"] = "gzip"
                data = gzip.compress(data)
            return await self._respond(writer, seen, status, out, data)
        raise ValueError(f"unknown fault kind {kind!r}")

    async def _head(self, writer: asyncio.StreamWriter, status: int, headers: dict[str, str],
                    length: int | None) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Whatever')}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if length is not None:
            lines.append(f"content-length: {length}")
        lines.append("connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()

    async def _respond(self, writer: asyncio.StreamWriter, seen: Seen, status: int, headers: dict[str, str],
                       data: bytes, declared: int | None = None, limit: int | None = None,
                       stall: float | None = None, rate: int | None = None) -> None:
        seen.status = status
        await self._head(writer, status, headers, len(data) if declared is None else declared)
        payload = data if limit is None else data[:limit]
        if rate:
            step = max(1024, rate // 20)
            for i in range(0, len(payload), step):
                writer.write(payload[i:i + step])
                await writer.drain()
                seen.sent += len(payload[i:i + step])
                await asyncio.sleep(step / rate)
        else:
            writer.write(payload)
            await writer.drain()
            seen.sent += len(payload)
        if stall:
            await asyncio.sleep(stall)
        if limit is not None:
            # Drop the connection without a clean shutdown of the message.
            transport = writer.transport
            transport.abort()

    async def _endless(self, writer: asyncio.StreamWriter, seen: Seen, status: int, headers: dict[str, str],
                       data: bytes, chunk: int, max_seconds: float) -> None:
        seen.status = status
        await self._head(writer, status, headers, None)   # close-delimited body
        writer.write(data)
        seen.sent += len(data)
        junk = b" " * chunk
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            writer.write(junk)
            await writer.drain()
            seen.sent += chunk


# --------------------------------------------------------------------------- test-world helpers
# Shared by tests/test_client_network.py and tests/test_client_trust.py.

VERSIONS = ["1.0.0", "1.1.0", "1.2.0"]

# Small timeouts and backoff so that faults cost tenths of a second, not minutes.
# Fresh installs here take the full manifest and raw objects, which the faults aim at
# (the delta-from-nothing path is tested in test_client_update.py).
FAST_CLIENT = dict(backoff_s=0.05, max_backoff_s=2.0, read_timeout_s=2.0, connect_timeout_s=2.0, attempts=3,
                   fresh_install_delta=False)
