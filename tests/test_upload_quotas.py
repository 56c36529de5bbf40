"""Upload quotas per token, expiry of abandoned uploads, and a full disk (issue 13 D12, issue 14 item 4).

Over HTTP against the real `cas serve`: a token over its count of uploads in progress is
429 ``upload_quota``, over its bytes in progress 413 ``upload_quota`` (the quota named);
abandoned uploads expire and free the quota; a write that meets ENOSPC answers 507
``insufficient_storage`` with nothing half-written in STORE/tmp or STORE/uploads, reads
keep working, and `cas publish` prints the same one line.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import ADMIN, PUBLISH, Server, start_server
from proc_helpers import fill, tmpfs

from deltagen.digests import blake3_bytes

SAFETY_NET = 60.0


@pytest.fixture
def quota_server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path / "store", config="upload_max_per_token = 2\nupload_max_bytes_per_token = 1000\n")
    yield srv
    srv.stop()


def test_too_many_uploads_per_token_is_429_naming_the_quota(quota_server: Server) -> None:
    with quota_server.client(PUBLISH) as http, quota_server.client(ADMIN) as other:
        first = http.post("/v1/uploads")
        assert first.status_code == 202
        assert http.post("/v1/uploads").status_code == 202
        over = http.post("/v1/uploads")
        assert over.status_code == 429, over.text
        error = over.json()["error"]
        assert error["code"] == "upload_quota" and error["detail"]["quota"] == "upload_max_per_token"
        assert "upload_max_per_token" in error["message"]
        assert other.post("/v1/uploads").status_code == 202  # another token has its own quota
        assert http.delete(first.headers["location"]).status_code == 204
        assert http.post("/v1/uploads").status_code == 202   # cancelling frees a place


def test_bytes_in_progress_over_quota_is_413_and_keeps_the_offset(quota_server: Server) -> None:
    with quota_server.client(PUBLISH) as http:
        a = http.post("/v1/uploads").headers["location"]
        b = http.post("/v1/uploads").headers["location"]
        assert http.patch(a, content=b"x" * 600).status_code == 202
        over = http.patch(b, content=b"y" * 600)
        assert over.status_code == 413, over.text
        error = over.json()["error"]
        assert error["code"] == "upload_quota" and error["detail"]["quota"] == "upload_max_bytes_per_token"
        assert http.head(b).headers["upload-offset"] == "0"
        assert (quota_server.store / "uploads" / b.rsplit("/", 1)[1]).stat().st_size == 0
        # Within the quota the same upload goes on.
        assert http.patch(b, content=b"y" * 300).status_code == 202
        assert http.put(b, params={"blake3": blake3_bytes(b"y" * 300)}).status_code == 201


def test_parallel_appends_of_one_token_cannot_overshoot_its_bytes_quota(quota_server: Server) -> None:
    """Two appends of one token run at once, each within the quota alone (600 of 1000 bytes)
    but not together.  Both are under way (their first 100 bytes written, which the server
    checks the quota for) before either sends the rest: at most one may succeed, and the
    token's uploads never hold more than the quota."""
    with quota_server.client(PUBLISH) as http:
        uploads = [http.post("/v1/uploads").headers["location"] for _ in range(2)]
    go = threading.Event()
    results: dict[str, httpx.Response | BaseException] = {}

    def body() -> Iterator[bytes]:
        yield b"a" * 100
        if not go.wait(SAFETY_NET):
            raise RuntimeError("the test never let the bodies go on")
        yield b"b" * 500

    def append(location: str) -> None:
        try:
            with quota_server.client(PUBLISH) as own:
                results[location] = own.patch(location, content=body())
        except BaseException as exc:  # reported by the assertions below
            results[location] = exc

    threads = [threading.Thread(target=append, args=(u,), daemon=True) for u in uploads]
    for t in threads:
        t.start()
    try:
        with quota_server.client(PUBLISH) as http:
            deadline = time.monotonic() + SAFETY_NET
            while not all(http.head(u).headers["upload-offset"] == "100" for u in uploads):
                assert time.monotonic() < deadline, [http.head(u).headers["upload-offset"] for u in uploads]
                time.sleep(0.02)
    finally:
        go.set()
        for t in threads:
            t.join(SAFETY_NET)
    statuses = sorted(r.status_code if isinstance(r, httpx.Response) else repr(r) for r in results.values())
    assert statuses == [202, 413], statuses
    refused = next(r for r in results.values() if isinstance(r, httpx.Response) and r.status_code == 413)
    assert refused.json()["error"]["code"] == "upload_quota"
    with quota_server.client(PUBLISH) as http:
        offsets = sorted(int(http.head(u).headers["upload-offset"]) for u in uploads)
        assert offsets == [0, 600], offsets  # the refused append is cut back to its offset
        # The quota is free again for what the refused one gave back: 400 more bytes fit.
        small = next(u for u in uploads if http.head(u).headers["upload-offset"] == "0")
        assert http.patch(small, content=b"c" * 400).status_code == 202
        assert http.patch(small, content=b"d").status_code == 413


def test_a_declared_length_over_the_quota_is_refused_before_the_body(quota_server: Server) -> None:
    with quota_server.client(PUBLISH) as http:
        upload = http.post("/v1/uploads").headers["location"]
        over = http.patch(upload, content=b"z" * 1001, headers={"content-range": "0-1000"})
        assert over.status_code == 413, over.text
        assert over.json()["error"]["code"] == "upload_quota"
        assert http.head(upload).headers["upload-offset"] == "0"
        fits = http.patch(upload, content=b"z" * 1000, headers={"content-range": "0-999"})
        assert fits.status_code == 202, fits.text


def test_abandoned_uploads_expire_and_free_the_quota(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "store", config="upload_max_per_token = 1\nupload_ttl_seconds = 2\n")
    try:
        with srv.client(PUBLISH) as http:
            abandoned = http.post("/v1/uploads").headers["location"]
            http.patch(abandoned, content=b"z" * 100)
            assert http.post("/v1/uploads").status_code == 429
            deadline = time.monotonic() + SAFETY_NET
            while http.post("/v1/uploads").status_code != 202:
                assert time.monotonic() < deadline, "the abandoned upload never expired"
                time.sleep(0.5)
            assert http.head(abandoned).status_code == 404
            assert not (srv.store / "uploads" / abandoned.rsplit("/", 1)[1]).exists()
    finally:
        srv.stop()


# ------------------------------------------------------------------ a full disk


@pytest.fixture
def full_store(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "mnt", "16m") as mnt:
        yield mnt


def _leftovers(store: Path) -> list[tuple[str, int]]:
    """Files in STORE/tmp and non-empty files in STORE/uploads."""
    tmp = [(p.name, p.stat().st_size) for p in (store / "tmp").iterdir()] if (store / "tmp").exists() else []
    ups = [(p.name, p.stat().st_size) for p in (store / "uploads").iterdir() if p.stat().st_size]
    return tmp + ups


def test_disk_full_is_507_with_nothing_left_behind(full_store: Path, tmp_path: Path) -> None:
    srv = start_server(full_store / "store")
    try:
        small = b"kept before the disk filled"
        with srv.client(PUBLISH) as http:
            digest = blake3_bytes(small)
            assert http.put(f"/v1/objects/{digest}", content=small).status_code == 201
            upload = http.post("/v1/uploads").headers["location"]
            filler = fill(full_store, 512 << 10)
            big = os.urandom(4 << 20)
            put = http.put(f"/v1/objects/{blake3_bytes(big)}", content=big)
            assert put.status_code == 507, put.text
            assert put.json()["error"]["code"] == "insufficient_storage"
            patch = http.patch(upload, content=big)
            assert patch.status_code == 507, patch.text
            assert patch.json()["error"]["code"] == "insufficient_storage"
            assert _leftovers(srv.store) == []
            assert http.head(upload).headers["upload-offset"] == "0"
            # Reads are unaffected.
            assert http.get(f"/v1/objects/{digest}").content == small
            assert http.get("/healthz").status_code == 200
            # The CLI says the same in one line.
            tree = tmp_path / "tree"
            tree.mkdir()
            (tree / "big.bin").write_bytes(big)
            key = srv.store / "keys" / "release.pem"
            result = srv.cas("publish", str(tree), "--product", "app", "--version", "1.0.0", "--key", str(key),
                             "--server", srv.url, "--token", PUBLISH, check=False)
            assert result.returncode == 1, result
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
            assert lines[0].startswith("cas: error: ") and lines[0].endswith("(insufficient_storage)"), lines
            assert _leftovers(srv.store) == []
            # Space again: the same writes succeed.
            filler.unlink()
            assert http.put(f"/v1/objects/{blake3_bytes(big)}", content=big).status_code == 201
    finally:
        srv.stop()
