"""Resumable (OCI-style) uploads over real HTTP."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx
import pytest
from conftest import PUBLISH, Server, start_server, store_snapshot

from deltagen.digests import blake3_bytes

DATA = os.urandom(30_000)
DIGEST = blake3_bytes(DATA)


def error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "detail"}, body
    return body["error"]


def start(http: httpx.Client) -> str:
    response = http.post("/v1/uploads")
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    assert location.startswith("/v1/uploads/")
    assert response.headers["upload-offset"] == "0"
    return location


def patch(http: httpx.Client, location: str, start_at: int, data: bytes) -> httpx.Response:
    return http.patch(location, content=data,
                      headers={"Content-Range": f"{start_at}-{start_at + len(data) - 1}",
                               "Content-Type": "application/octet-stream"})


def offset(http: httpx.Client, location: str) -> int:
    response = http.head(location)
    assert response.status_code == 204, response.status_code
    return int(response.headers["upload-offset"])


def test_start_patch_head_complete(shared_server: Server) -> None:
    with shared_server.client(PUBLISH) as http:
        location = start(http)
        first = patch(http, location, 0, DATA[:10_000])
        assert first.status_code == 202
        assert first.headers["upload-offset"] == "10000" and first.headers["range"] == "0-9999"
        assert first.headers["location"] == location
        assert offset(http, location) == 10_000
        assert patch(http, location, 10_000, DATA[10_000:]).status_code == 202
        assert http.head(location).headers["range"] == f"0-{len(DATA) - 1}"
        done = http.put(f"{location}?blake3={DIGEST}")
        assert done.status_code == 201, done.text
        assert done.headers["location"] == f"/v1/objects/{DIGEST}"
        assert done.json()["size"] == len(DATA)
        assert http.get(f"/v1/objects/{DIGEST}").content == DATA
        assert http.head(location).status_code == 404  # the upload is gone once completed


def test_complete_with_final_chunk_in_put(shared_server: Server) -> None:
    data = os.urandom(5000)
    with shared_server.client(PUBLISH) as http:
        location = start(http)
        assert patch(http, location, 0, data[:2000]).status_code == 202
        done = http.put(f"{location}?blake3={blake3_bytes(data)}", content=data[2000:])
        assert done.status_code == 201, done.text
        assert http.get(f"/v1/objects/{blake3_bytes(data)}").content == data


def test_gap_is_416_with_current_offset(shared_server: Server) -> None:
    with shared_server.client(PUBLISH) as http:
        location = start(http)
        assert patch(http, location, 0, b"a" * 100).status_code == 202
        gap = patch(http, location, 150, b"b" * 10)
        assert gap.status_code == 416
        assert gap.headers["upload-offset"] == "100"
        assert gap.headers["range"] == "0-99"
        err = error(gap)
        assert err["code"] == "range_not_satisfiable" and err["detail"]["offset"] == 100
        overlap = patch(http, location, 50, b"c" * 10)
        assert overlap.status_code == 416 and error(overlap)["detail"]["offset"] == 100
        assert offset(http, location) == 100  # nothing of the refused bodies was kept


def test_body_longer_than_content_range_is_refused_and_offset_kept(shared_server: Server) -> None:
    with shared_server.client(PUBLISH) as http:
        location = start(http)
        assert patch(http, location, 0, b"a" * 10).status_code == 202
        response = http.patch(location, content=b"b" * 20, headers={"Content-Range": "10-14"})
        assert response.status_code == 422 and error(response)["code"] == "size_mismatch"
        assert offset(http, location) == 10


def test_bad_content_range_is_400(shared_server: Server) -> None:
    with shared_server.client(PUBLISH) as http:
        location = start(http)
        response = http.patch(location, content=b"x", headers={"Content-Range": "bytes=0-0"})
        assert response.status_code == 400 and error(response)["code"] == "bad_content_range"


def test_wrong_digest_on_complete_is_422_and_discards(shared_server: Server) -> None:
    before = store_snapshot(shared_server.store)
    with shared_server.client(PUBLISH) as http:
        location = start(http)
        assert patch(http, location, 0, b"some bytes").status_code == 202
        wrong = blake3_bytes(b"other bytes")
        response = http.put(f"{location}?blake3={wrong}")
        assert response.status_code == 422
        err = error(response)
        assert err["code"] == "digest_mismatch" and err["detail"]["actual"] == blake3_bytes(b"some bytes")
        assert http.head(location).status_code == 404
        assert http.get(f"/v1/objects/{wrong}").status_code == 404
    assert store_snapshot(shared_server.store) == before


def test_delete_cancels(shared_server: Server) -> None:
    before = store_snapshot(shared_server.store)
    with shared_server.client(PUBLISH) as http:
        location = start(http)
        assert patch(http, location, 0, b"abc").status_code == 202
        assert http.delete(location).status_code == 204
        assert http.head(location).status_code == 404
        gone = patch(http, location, 3, b"def")
        assert gone.status_code == 404 and error(gone)["code"] == "unknown_upload"
        assert http.delete(location).status_code == 404
    assert store_snapshot(shared_server.store) == before


@pytest.mark.parametrize("upload_id", ["nope", "../../meta.db", "0" * 32])
def test_unknown_upload_is_404(shared_server: Server, upload_id: str) -> None:
    with shared_server.client(PUBLISH) as http:
        response = http.patch(f"/v1/uploads/{upload_id}", content=b"x", headers={"Content-Range": "0-0"})
        assert response.status_code == 404


def test_resume_after_server_restart(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = start_server(store)
    try:
        with first.client(PUBLISH) as http:
            location = start(http)
            assert patch(http, location, 0, DATA[:12_345]).status_code == 202
    finally:
        first.stop()
    second = start_server(store)
    try:
        with second.client(PUBLISH) as http:
            at = offset(http, location)
            assert at == 12_345
            assert patch(http, location, at, DATA[at:]).status_code == 202
            done = http.put(f"{location}?blake3={DIGEST}")
            assert done.status_code == 201, done.text
            assert blake3_bytes(http.get(f"/v1/objects/{DIGEST}").content) == DIGEST
    finally:
        second.stop()


def test_abandoned_upload_expires(tmp_path: Path) -> None:
    server = start_server(tmp_path / "store", config="upload_ttl_seconds = 1\n")
    try:
        with server.client(PUBLISH) as http:
            location = start(http)
            assert patch(http, location, 0, b"abandoned").status_code == 202
            deadline = time.monotonic() + 6
            while http.head(location).status_code != 404 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert http.head(location).status_code == 404
            assert list((server.store / "uploads").iterdir()) == []
            assert "cas_uploads_expired_total 1.0" in http.get("/metrics").text
    finally:
        server.stop()


def test_active_upload_survives_sweeps(tmp_path: Path) -> None:
    """Uploads kept busy are not expired, and fresh uploads are not swept away."""
    server = start_server(tmp_path / "store", config="upload_ttl_seconds = 1\n")
    try:
        data = os.urandom(20 * 100)
        with server.client(PUBLISH) as http:
            location = start(http)
            for i in range(20):  # ~2.5 s of activity, well past the TTL; sweeps every 0.25 s
                assert patch(http, location, i * 100, data[i * 100:(i + 1) * 100]).status_code == 202
                fresh = start(http)
                assert offset(http, fresh) == 0
                assert http.delete(fresh).status_code == 204
                time.sleep(0.1)
            assert http.put(f"{location}?blake3={blake3_bytes(data)}").status_code == 201
    finally:
        server.stop()


def test_truncated_patch_keeps_previous_offset(shared_server: Server) -> None:
    with shared_server.client(PUBLISH) as http:
        location = start(http)
        assert patch(http, location, 0, b"k" * 500).status_code == 202
    host, port = shared_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall((f"PATCH {location} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {PUBLISH}\r\n"
                      f"Content-Range: 500-1499\r\nContent-Length: 1000\r\n\r\n").encode() + b"z" * 100)
        time.sleep(0.2)  # the server has taken the partial body
    with shared_server.client(PUBLISH) as http:
        deadline = time.monotonic() + 5
        while offset(http, location) != 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert offset(http, location) == 500
        # The upload is still usable from there.
        assert patch(http, location, 500, b"m" * 10).status_code == 202
        done = http.put(f"{location}?blake3={blake3_bytes(b'k' * 500 + b'm' * 10)}")
        assert done.status_code == 201, done.text


def test_slow_patch_longer_than_ttl_is_not_expired_under_it(tmp_path: Path) -> None:
    """The sweep must not remove an upload while a PATCH is still streaming into it."""
    server = start_server(tmp_path / "store", config="upload_ttl_seconds = 1\n")
    try:
        def slow_body():
            for _ in range(12):  # ~2.4 s, more than the TTL
                yield b"s" * 100
                time.sleep(0.2)

        with server.client(PUBLISH) as http:
            location = start(http)
            response = http.patch(location, content=slow_body(), headers={"Content-Range": "0-1199"})
            assert response.status_code == 202 and response.headers["upload-offset"] == "1200"
            # Acknowledged bytes must still be there right after the 202.
            done = http.put(f"{location}?blake3={blake3_bytes(b's' * 1200)}")
            assert done.status_code == 201, done.text
    finally:
        server.stop()
