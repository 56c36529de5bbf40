"""Uploads resumable across replicas (issue 17, item 2), on real engines.

Two `cas serve` replicas with separate local store directories share PostgreSQL (the
session cluster) and a SeaweedFS bucket: an upload's state is its row in the metadata,
its bytes are part objects in the bucket (``cas/uploads.py``, ``SharedUploads``), so an
upload started on replica A, with A then killed, is resumed and completed on B.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import PUBLISH, Server, start_server
from s3_fixture import S3Server

from deltagen.digests import blake3_bytes

DATA = os.urandom(3 * (1 << 20) + 12345)
DIGEST = blake3_bytes(DATA)


def patch(http: httpx.Client, location: str, start_at: int, data: bytes) -> httpx.Response:
    return http.patch(location, content=data, headers={"Content-Range": f"{start_at}-{start_at + len(data) - 1}"})


def offset(http: httpx.Client, location: str) -> int:
    response = http.head(location)
    assert response.status_code == 204, response.status_code
    return int(response.headers["upload-offset"])


class Replicas:
    def __init__(self, base: Path, config: str, s3: S3Server, bucket: str) -> None:
        self.base, self.config, self.s3, self.bucket = base, config, s3, bucket
        self.a = start_server(base / "a", config=config)
        try:
            shutil.copytree(base / "a" / "keys", base / "b" / "keys")  # the same keys, nothing else shared
            self.b = start_server(base / "b", config=config, init_keys=False)
        except BaseException:
            self.a.stop()
            raise

    def part_keys(self) -> list[str]:
        listing = self.s3.client().list_objects_v2(Bucket=self.bucket, Prefix="deltacas/uploads/")
        return [o["Key"] for o in listing.get("Contents", [])]

    def stop(self) -> None:
        for server in (self.a, self.b):
            if server.proc.poll() is None:
                server.stop()


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str, seaweed_server: S3Server) -> Iterator[Replicas]:
    bucket = seaweed_server.new_bucket()
    config = seaweed_server.config(bucket, delta_builder=False) + f'metadata_url = "{postgres_url}"\n'
    r = Replicas(tmp_path, config, seaweed_server, bucket)
    yield r
    r.stop()


def test_an_upload_started_on_a_killed_replica_completes_on_another(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    half = len(DATA) // 2
    with a.client(PUBLISH) as ha:
        location = ha.post("/v1/uploads").headers["location"]
        assert patch(ha, location, 0, DATA[:1000]).status_code == 202
        assert patch(ha, location, 1000, DATA[1000:half]).status_code == 202
    assert len(replicas.part_keys()) == 2
    a.proc.send_signal(signal.SIGKILL)  # no shutdown of any kind
    a.proc.wait(10)
    # B has no file of this upload: its store directory holds none.
    assert not (b.store / "uploads").exists() or list((b.store / "uploads").iterdir()) == []
    with b.client(PUBLISH) as hb:
        assert offset(hb, location) == half
        assert patch(hb, location, half, DATA[half:]).status_code == 202
        done = hb.put(f"{location}?blake3={DIGEST}")
        assert done.status_code == 201, done.text
        assert done.json() == {"blake3": DIGEST, "size": len(DATA), "created": True}
        assert hb.get(f"/v1/objects/{DIGEST}").content == DATA
        assert hb.head(location).status_code == 404  # the upload is gone ...
    assert replicas.part_keys() == []              # ... and so are its parts
    head = replicas.s3.client().head_object(Bucket=replicas.bucket,
                                            Key=f"deltacas/objects/{DIGEST[:2]}/{DIGEST[2:]}")
    assert head["ContentLength"] == len(DATA)


def test_bad_appends_and_a_wrong_digest_lose_nothing_and_keep_nothing(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    with a.client(PUBLISH) as ha, b.client(PUBLISH) as hb:
        location = ha.post("/v1/uploads").headers["location"]
        assert patch(ha, location, 0, DATA[:5000]).status_code == 202
        # An append at the wrong offset, on the other replica: 416, nothing stored.
        wrong = patch(hb, location, 100, DATA[100:200])
        assert wrong.status_code == 416, wrong.text
        # A body shorter or longer than its Content-Range: refused, the offset unchanged.
        short = hb.patch(location, content=DATA[5000:6000], headers={"Content-Range": "5000-9999"})
        assert short.status_code == 422 and short.json()["error"]["code"] == "size_mismatch"
        long = hb.patch(location, content=DATA[5000:7000], headers={"Content-Range": "5000-5999"})
        assert long.status_code == 422 and long.json()["error"]["code"] == "size_mismatch"
        assert offset(ha, location) == offset(hb, location) == 5000
        assert len(replicas.part_keys()) == 1
        # Unknown and malformed upload ids.
        assert hb.head("/v1/uploads/" + "0" * 32).status_code == 404
        assert patch(hb, "/v1/uploads/../../etc", 0, b"x").status_code == 404
        assert hb.put("/v1/uploads/" + "0" * 32 + f"?blake3={DIGEST}").status_code == 404
        # Completing with the wrong digest discards the upload and its parts; nothing is stored.
        bad = hb.put(f"{location}?blake3={'0' * 64}")
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "digest_mismatch", bad.text
        assert bad.json()["error"]["detail"]["actual"] == blake3_bytes(DATA[:5000])
        assert ha.head(location).status_code == 404
        assert replicas.part_keys() == []
        assert hb.get(f"/v1/objects/{blake3_bytes(DATA[:5000])}").status_code == 404
        # A malformed digest is refused before anything happens.
        other = ha.post("/v1/uploads").headers["location"]
        assert hb.put(f"{other}?blake3=xyz").status_code == 422
        assert offset(ha, other) == 0


def test_concurrent_appends_at_one_offset_on_two_replicas(replicas: Replicas) -> None:
    """Both replicas append at offset 0 at once: one is recorded, the other refused (416 or
    409), the loser's part deleted; the upload completes with the winner's bytes."""
    a, b = replicas.a, replicas.b
    chunk_a, chunk_b = os.urandom(200_000), os.urandom(200_000)
    with a.client(PUBLISH) as ha, b.client(PUBLISH) as hb:
        location = ha.post("/v1/uploads").headers["location"]
        with ThreadPoolExecutor(2) as pool:
            ra, rb = pool.map(lambda job: patch(job[0], location, 0, job[1]), [(ha, chunk_a), (hb, chunk_b)])
        codes = sorted([ra.status_code, rb.status_code])
        assert codes[0] == 202 and codes[1] in (409, 416), (ra.text, rb.text)
        winner = chunk_a if ra.status_code == 202 else chunk_b
        assert offset(hb, location) == len(winner)
        assert len(replicas.part_keys()) == 1
        done = hb.put(f"{location}?blake3={blake3_bytes(winner)}")
        assert done.status_code == 201, done.text
        assert ha.get(f"/v1/objects/{blake3_bytes(winner)}").content == winner
    assert replicas.part_keys() == []


@pytest.fixture
def quota_replicas(tmp_path: Path, postgres_url: str, seaweed_server: S3Server) -> Iterator[tuple[Replicas, str]]:
    bucket = seaweed_server.new_bucket()
    config = (seaweed_server.config(bucket, delta_builder=False) + f'metadata_url = "{postgres_url}"\n'
              + "upload_max_per_token = 4\nupload_max_bytes_per_token = 1000\n")
    r = Replicas(tmp_path, config, seaweed_server, bucket)
    yield r, postgres_url
    r.stop()


def _held(url: str, locations: list[str]) -> list[tuple[int, int]]:
    """(bytes, reserved) of the uploads' rows, as every replica sees them."""
    import psycopg
    with psycopg.connect(url) as conn:
        return [tuple(conn.execute("SELECT bytes, reserved FROM uploads WHERE id = %s",  # type: ignore[misc]
                                   (loc.rsplit("/", 1)[1],)).fetchone()) for loc in locations]


def test_parallel_appends_on_two_replicas_cannot_overshoot_the_quota(quota_replicas: tuple[Replicas, str]) -> None:
    """Two appends of one token, one per replica, each within the quota alone (600 of 1000
    bytes) but not together.  A shared upload's offset moves only when its part is recorded,
    so each append reserves what it writes (the ``reserved`` column, read by both replicas)
    as it goes: both have reserved their first 100 bytes before either sends the rest; at
    most one may succeed, and the reservations are given back when they end."""
    replicas, url = quota_replicas
    with replicas.a.client(PUBLISH) as http:
        uploads = [http.post("/v1/uploads").headers["location"] for _ in range(2)]
    go = threading.Event()
    results: dict[str, httpx.Response | BaseException] = {}

    def body() -> Iterator[bytes]:
        yield b"a" * 100
        if not go.wait(60):
            raise RuntimeError("the test never let the bodies go on")
        yield b"b" * 500

    def append(server: Server, location: str) -> None:
        try:
            with server.client(PUBLISH) as own:
                results[location] = own.patch(location, content=body())
        except BaseException as exc:  # reported by the assertions below
            results[location] = exc

    threads = [threading.Thread(target=append, args=(s, u), daemon=True)
               for s, u in zip((replicas.a, replicas.b), uploads)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while _held(url, uploads) != [(0, 100), (0, 100)]:
            assert time.monotonic() < deadline, _held(url, uploads)
            time.sleep(0.02)
    finally:
        go.set()
        for t in threads:
            t.join(60)
    statuses = sorted(r.status_code if isinstance(r, httpx.Response) else repr(r) for r in results.values())
    assert statuses == [202, 413], statuses
    refused = next(r for r in results.values() if isinstance(r, httpx.Response) and r.status_code == 413)
    assert refused.json()["error"]["code"] == "upload_quota"
    assert sorted(_held(url, uploads)) == [(0, 0), (600, 0)]   # every reservation given back
    assert len(replicas.part_keys()) == 1                       # the refused append stored nothing
    with replicas.b.client(PUBLISH) as http:
        small = next(u for u in uploads if int(http.head(u).headers["upload-offset"]) == 0)
        assert patch(http, small, 0, b"c" * 400).status_code == 202   # 600 + 400: the quota, exactly
        over = http.patch(small, content=b"d")
        assert over.status_code == 413 and over.json()["error"]["code"] == "upload_quota"
        declared = patch(http, small, 400, b"e" * 1)
        assert declared.status_code == 413
    assert sorted(_held(url, uploads)) == [(400, 0), (600, 0)]
