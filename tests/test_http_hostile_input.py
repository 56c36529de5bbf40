"""Hostile input to the real `cas serve` (issue 13 D14): numbers, headers and slow senders.

Every answer is a clear 4xx, never 500 ``internal``; oversized headers and slowloris
connections are cut by `cas serve` itself (cas/http/protocol.py), checked over a raw socket.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import READ, Server, start_server

from cas.config import Config
from client.config import ClientConfig

SERVE_LIMITS = """
http_max_header_bytes = 16384
http_header_timeout_seconds = 1.0
http_body_idle_timeout_seconds = 1.0
"""
SAFETY_NET = 20.0  # seconds a test waits for the server before calling it stuck (no timed assertion)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("hostile") / "store", config=SERVE_LIMITS)
    yield srv
    srv.stop()


@pytest.mark.parametrize("path", [
    "/v1/roots/%C2%B2.json",                  # "²".isdigit() is True, int("²") raises
    "/v1/roots/" + "9" * 20 + ".json",        # above SQLite's 64-bit INTEGER
    "/v1/roots/" + "9" * 5000 + ".json",      # above Python's 4300-digit int() limit
], ids=["superscript", "20-digits", "5000-digits"])
def test_root_version_numbers_are_404(limited: Server, path: str) -> None:
    with limited.client() as http:
        r = http.get(path)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "unknown_root"


@pytest.mark.parametrize("size", ["9" * 20, "9" * 5000], ids=["20-digits", "5000-digits"])
def test_put_object_size_with_many_digits_is_413(limited: Server, size: str) -> None:
    with limited.client() as http:
        r = http.put("/v1/objects/" + "a" * 64, params={"size": size}, content=b"x")
    assert r.status_code == 413, r.text


@pytest.mark.parametrize("header", ["0-" + "9" * 5000, "9" * 5000 + "-" + "9" * 5000, "bytes 0-" + "9" * 20 + "/*"],
                         ids=["end-5000-digits", "both-5000-digits", "end-20-digits"])
def test_upload_content_range_with_many_digits_is_400(limited: Server, header: str) -> None:
    with limited.client() as http:
        location = http.post("/v1/uploads").headers["location"]
        r = http.patch(location, content=b"x", headers={"Content-Range": header})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "bad_content_range"
        assert http.get(location).headers["upload-offset"] == "0"


def test_dashboard_health_shows_no_store_path(limited: Server) -> None:
    with limited.client(READ) as http:
        r = http.get("/v1/admin/dashboard/health")
    assert r.status_code == 200
    assert str(limited.store) not in r.text
    assert "path" not in r.json()["store"]


def test_client_channel_cap_matches_server_and_docs() -> None:
    """One channel cap: the client's default is the 64 KiB the docs state, above what the server signs."""
    cap = ClientConfig(servers=["http://x"], product="p", channel="c", client_id="i").max_channel_bytes
    assert cap == 64 << 10
    assert Config().rollout_max_document_bytes <= cap
    docs = Path(__file__).resolve().parent.parent / "docs" / "client.md"
    assert "| `max_channel_bytes` | 64 KiB |" in docs.read_text()   # the settings table


# ------------------------------------------------------------------ raw sockets


def _connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=SAFETY_NET)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (socket.timeout: it never did)."""
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def test_huge_request_headers_are_431_and_closed(limited: Server) -> None:
    sock = _connect(limited)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        sent = 0
        try:
            while sent < 8 << 20:  # 8 MiB of headers, as in the attack
                sock.sendall(filler * 64)
                sent += len(filler) * 64
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed while we were still sending: what we want
        answer = _read_until_closed(sock)
    finally:
        sock.close()
    assert sent < 8 << 20, "the server read 8 MiB of headers"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]


def test_normal_headers_still_served(limited: Server) -> None:
    sock = _connect(limited)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Ok: " + b"a" * 8000 + b"\r\nConnection: close\r\n\r\n")
        answer = _read_until_closed(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_slowloris_headers_are_cut_off(limited: Server) -> None:
    """One header byte at a time, never finishing: the server answers 408 and closes."""
    sock = _connect(limited)
    sock.settimeout(0.2)
    answer = b""
    closed = False
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + SAFETY_NET
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
                break
            answer += chunk
            closed = chunk == b""
    finally:
        sock.close()
    assert closed, "the server kept a slowloris connection open"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_silent_connection_is_closed(limited: Server) -> None:
    sock = _connect(limited)
    try:
        answer = _read_until_closed(sock)  # socket.timeout (the safety net) if never closed
    finally:
        sock.close()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


def test_stalled_body_is_cut_off(limited: Server) -> None:
    """A PUT that promises 100 bytes and sends 10: the connection is closed, nothing is stored."""
    sock = _connect(limited)
    try:
        sock.sendall(b"PUT /v1/objects/" + b"b" * 64 + b" HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer publish-token-t\r\nContent-Length: 100\r\n\r\n" + b"0123456789")
        answer = _read_until_closed(sock)
    finally:
        sock.close()
    assert b" 500 " not in answer.split(b"\r\n", 1)[0]
    with limited.client() as http:
        assert http.head("/v1/objects/" + "b" * 64).status_code == 404
