"""The HTTP/1.1 connection limits of `cas serve`: header size, header deadline, body idle time.

uvicorn's httptools protocol (the one `cas serve` runs) has no limit of its own on the
size of a request's headers (llhttp buffers whatever arrives) and no timer before the
first response: a client may send 8 MiB of headers, or one header byte every few
seconds forever (slowloris). Its h11 protocol bounds headers
(``h11_max_incomplete_event_size``) but has no deadline either; both only close idle
keep-alive connections (``timeout_keep_alive``). ``LimitedHttpToolsProtocol`` adds:

* ``http_max_header_bytes``: the request line and headers of one request; more is
  answered ``431`` and the connection closed before the rest is read;
* ``http_header_timeout_seconds``: from the connection (or the first byte of a later
  request on it) to the end of the headers; late is answered ``408`` and closed (an idle
  keep-alive connection is closed after ``http_keep_alive_seconds``);
* ``http_body_idle_timeout_seconds``: a request body that stops arriving for this long
  (while the application is ready for more) closes the connection; the application sees
  a disconnect (``400 truncated_body``; an upload keeps its offset).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 64 << 10
    header_timeout_seconds: float = 30.0
    body_idle_timeout_seconds: float = 60.0


def _answer(status: bytes, message: str) -> bytes:
    body = message.encode("ascii")
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\nconnection: close\r\n\r\n" + body)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above (``limits`` bound by ``functools.partial``)."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._reading_headers = True
        self._header_bytes = 0
        self._tail = b""
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # --------------------------------------------------------------- timers

    def _arm_header_timer(self) -> None:
        self._cancel(self._header_timer)
        self._header_timer = self.loop.call_later(self.limits.header_timeout_seconds, self._headers_late)

    def _arm_body_timer(self) -> None:
        self._cancel(self._body_timer)
        self._body_timer = self.loop.call_later(self.limits.body_idle_timeout_seconds, self._body_idle)

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_header_timer()  # a pipelined request waits for the answer in progress
            return
        if self._reading_headers and not self.transport.is_closing():
            self.transport.write(_answer(b"408 Request Timeout", "request headers not received in time"))
            self.transport.close()

    def _body_idle(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        waiting_for_app = self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue)
        if waiting_for_app:  # the application, not the client, is the slow one
            self._arm_body_timer()
            return
        self.transport.close()

    # --------------------------------------------------------------- protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel(self._header_timer)
        self._cancel(self._body_timer)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_headers:
            if self._header_timer is None:  # the first byte of a request starts its deadline
                self._arm_header_timer()
            window = self._tail + data
            end = window.find(b"\r\n\r\n")
            counted = end + 4 - len(self._tail) if end >= 0 else len(data)
            self._header_bytes += counted
            if self._header_bytes > self.limits.max_header_bytes:
                self._reading_headers = False
                self.transport.write(_answer(b"431 Request Header Fields Too Large",
                                             f"request headers exceed {self.limits.max_header_bytes} bytes"))
                self.transport.close()
                return
            self._tail = window[-3:]
        elif self._body_timer is not None:
            self._arm_body_timer()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._cancel(self._header_timer)
        self._header_timer = None
        super().on_headers_complete()
        self._arm_body_timer()

    def on_message_complete(self) -> None:
        self._cancel(self._body_timer)
        self._body_timer = None
        # What follows on this connection is the next request's headers (pipelined or not).
        self._reading_headers, self._header_bytes, self._tail = True, 0, b""
        super().on_message_complete()
