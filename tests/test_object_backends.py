"""The ObjectStore contract, run against both backends (filesystem, and S3 on two engines:
moto and a real SeaweedFS), and a real `cas serve` whose objects live in S3 on each engine:
publish, delta builds and a client update.  docs/scale.md says what differs between the engines."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import Server, start_server, wait_for_builds
from s3_fixture import S3Server

from cas.errors import DigestMismatch, NotFound, TooLarge
from cas.objectstore import FilesystemObjectStore, ObjectStore
from cas.objectstore.s3 import S3ObjectStore
from casformat.canonical import document_digest
from casformat.manifest_delta import rebuild_target
from deltagen.digests import blake3_bytes

MiB = 1 << 20


S3_ENGINES = {"moto": "s3_server", "seaweedfs": "seaweed_server"}  # engine -> its session fixture


@pytest.fixture(params=["filesystem", "moto", "seaweedfs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "filesystem":
        yield FilesystemObjectStore(tmp_path / "store", max_object_bytes=32 * MiB)
    else:
        s3: S3Server = request.getfixturevalue(S3_ENGINES[request.param])
        yield S3ObjectStore(tmp_path / "store", s3.new_bucket(), "pre/fix", s3.endpoint, s3.region,
                            max_object_bytes=32 * MiB, multipart_threshold=5 * MiB, multipart_chunk=5 * MiB)


def _corrupt(store: ObjectStore, digest: str, data: bytes) -> None:
    """Change an object behind the store's back."""
    if isinstance(store, S3ObjectStore):
        store.client.put_object(Bucket=store.bucket, Key=store.key(digest), Body=data)
    else:
        assert isinstance(store, FilesystemObjectStore)
        path = store.path(digest)
        os.chmod(path, 0o644)
        path.write_bytes(data)


def _temp_files(store: ObjectStore) -> list[str]:
    return sorted(p.name for p in store.tmp_dir.iterdir())


def test_ingest_then_read_back(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    first = store.ingest_bytes(data)
    assert (first.digest, first.size, first.created) == (blake3_bytes(data), len(data), True)
    assert store.ingest_bytes(data).created is False
    assert store.exists(first.digest) and store.size(first.digest) == len(data)
    with store.open(first.digest) as fh:
        assert fh.read() == data
    with store.local_copy(first.digest) as path:
        assert path.read_bytes() == data
    source = tmp_path / "file.bin"
    source.write_bytes(data[:5000])
    assert store.ingest_file(source, expected=blake3_bytes(data[:5000])).created is True
    assert _temp_files(store) == []


def test_streaming_writer_and_size_limit(store: ObjectStore) -> None:
    writer = store.writer()
    parts = [os.urandom(64 * 1024) for _ in range(10)]
    for part in parts:
        writer.write(part)
    ingested = writer.commit(blake3_bytes(b"".join(parts)), expected_size=640 * 1024)
    assert ingested.created and store.size(ingested.digest) == 640 * 1024
    big = store.writer()
    with pytest.raises(TooLarge):
        for _ in range(40):
            big.write(b"\0" * MiB)
    assert _temp_files(store) == []


def test_digest_mismatch_keeps_nothing(store: ObjectStore) -> None:
    data = b"what the client sent"
    with pytest.raises(DigestMismatch):
        import io
        store.ingest_stream(io.BytesIO(data), expected="0" * 64)
    assert not store.exists(blake3_bytes(data))
    assert list(store.iter_digests()) == []
    assert _temp_files(store) == []


def test_concurrent_ingest_of_the_same_object(store: ObjectStore) -> None:
    data = os.urandom(300_000)
    results, errors = [], []

    def ingest() -> None:
        try:
            results.append(store.ingest_bytes(data))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ingest) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {r.digest for r in results} == {blake3_bytes(data)}
    assert any(r.created for r in results)
    assert list(store.iter_digests()) == [blake3_bytes(data)]
    with store.open(blake3_bytes(data)) as fh:
        assert fh.read() == data
    assert _temp_files(store) == []


def test_missing_objects(store: ObjectStore) -> None:
    present = store.ingest_bytes(b"here").digest
    absent = blake3_bytes(b"not here")
    assert not store.exists(absent)
    assert store.size(absent) is None
    assert store.missing([present, absent, absent]) == [absent]
    many = [blake3_bytes(str(i).encode()) for i in range(10)]
    assert store.missing([present, *many]) == many
    with pytest.raises(NotFound):
        store.open(absent)
    with pytest.raises(NotFound):
        with store.local_copy(absent):
            pass


@pytest.mark.parametrize("start,end", [(0, 1), (5, 105), (0, None), (-1, None), (MiB - 3, MiB + 7)])
def test_ranged_reads(store: ObjectStore, start: int, end: int | None) -> None:
    data = os.urandom(3 * MiB + 11)
    digest = store.ingest_bytes(data).digest
    start = start % len(data)
    end = len(data) if end is None else end
    assert b"".join(store.open_range(digest, start, end)) == data[start:end]


def test_multipart_upload_of_a_large_object(store: ObjectStore) -> None:
    data = os.urandom(11 * MiB)
    digest = store.ingest_bytes(data).digest
    assert store.size(digest) == len(data)
    with store.local_copy(digest) as path:
        assert path.read_bytes() == data
    if isinstance(store, S3ObjectStore):
        head = store.client.head_object(Bucket=store.bucket, Key=store.key(digest))
        assert head["ETag"].strip('"').endswith("-3")  # three parts of 5 MiB at most
        assert head["Metadata"]["blake3"] == digest
        assert store.key(digest) == f"pre/fix/objects/{digest[:2]}/{digest[2:]}"


def test_listing_and_usage(store: ObjectStore) -> None:
    blobs = [os.urandom(1000 + i) for i in range(6)]
    digests = {store.ingest_bytes(b).digest for b in blobs}
    assert list(store.iter_digests()) == sorted(digests)
    assert store.usage() == (6, sum(len(b) for b in blobs))
    victim = sorted(digests)[0]
    assert store.delete(victim) is True and store.delete(victim) is False
    assert set(store.iter_digests()) == digests - {victim}


def test_fsck_finds_a_corrupted_object(store: ObjectStore) -> None:
    good = store.ingest_bytes(b"good object").digest
    bad = store.ingest_bytes(b"soon corrupted").digest
    _corrupt(store, bad, b"something else entirely")
    report = store.fsck(quarantine=True)
    assert report.checked == 2 and report.corrupt == [bad] and len(report.quarantined) == 1
    assert not store.exists(bad) and store.exists(good)
    assert store.fsck().corrupt == []


def test_local_copy_refuses_a_corrupted_object(store: ObjectStore) -> None:
    digest = store.ingest_bytes(b"original bytes").digest
    _corrupt(store, digest, b"tampered bytes")
    if isinstance(store, S3ObjectStore):  # the filesystem copy is the object itself: fsck's job
        with pytest.raises(Exception, match="hashes to"):
            with store.local_copy(digest):
                pass


def test_sweep_removes_temp_files_and_stale_multipart_uploads(store: ObjectStore) -> None:
    stale = store.tmp_dir / "obj-killed-writer"
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    expected = 1
    if isinstance(store, S3ObjectStore):
        key = store.key(blake3_bytes(b"never completed"))
        store.client.create_multipart_upload(Bucket=store.bucket, Key=key)
        expected += 1
        # (moto reports every upload as initiated in 2010, so only "older than now" can be told apart)
        assert store.sweep_temp(older_than=-60) == expected
        assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    else:
        assert store.sweep_temp() == expected
    assert not stale.exists()


# --------------------------------------------------------------------------- a real server on S3

VERSIONS = ["1.0.0", "1.1.0"]


def _same_tree(installed: Path, source: Path) -> None:
    """``installed`` holds exactly ``source``'s files, symlinks and bytes."""
    def listing(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_symlink() or p.is_file())
    assert listing(installed) == listing(source)
    for rel in listing(source):
        a, b = installed / rel, source / rel
        if b.is_symlink():
            assert a.is_symlink() and os.readlink(a) == os.readlink(b), rel
        else:
            assert a.read_bytes() == b.read_bytes(), rel


def _client(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("engine", ["moto", "seaweedfs"])
def test_server_on_s3_end_to_end(engine: str, request: pytest.FixtureRequest, tmp_path: Path,
                                 release_trees: list[Path]) -> None:
    s3_server: S3Server = request.getfixturevalue(S3_ENGINES[engine])
    bucket = s3_server.new_bucket()
    store = tmp_path / "store"
    server: Server = start_server(store, config=s3_server.config(bucket, delta_poll_seconds=0.2))
    try:
        key = str(store / "keys" / "release.pem")
        for version, tree in zip(VERSIONS, release_trees):
            server.cas("publish", str(tree), "--product", "app", "--version", version, "--key", key,
                       "--status", "released")
        # Nothing went to the local disk: every object is in the bucket.
        assert not any((store / "objects").rglob("*")) if (store / "objects").exists() else True
        s3 = s3_server.client()
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        assert keys and all(k.startswith("deltacas/objects/") for k in keys)

        with server.client(None) as http:
            manifest = http.get("/v1/products/app/releases/1.1.0/manifest").json()["signed"]
            entry = max((e for e in manifest["files"] if e["type"] == "file"), key=lambda e: e["size"])
            digest, size = entry["blake3"], entry["size"]
            data = http.get(f"/v1/objects/{digest}").content
            assert blake3_bytes(data) == digest and len(data) == size

            head = http.head(f"/v1/objects/{digest}")
            assert head.status_code == 200 and head.headers["content-length"] == str(size)
            assert head.headers["etag"] == f'"{digest}"' and head.headers["accept-ranges"] == "bytes"
            assert head.content == b""

            ranged = http.get(f"/v1/objects/{digest}", headers={"Range": "bytes=10-99"})
            assert ranged.status_code == 206 and ranged.content == data[10:100]
            assert ranged.headers["content-range"] == f"bytes 10-99/{size}"
            suffix = http.get(f"/v1/objects/{digest}", headers={"Range": "bytes=-5"})
            assert suffix.status_code == 206 and suffix.content == data[-5:]

            multi = http.get(f"/v1/objects/{digest}", headers={"Range": "bytes=0-4, 100-109"})
            assert multi.status_code == 206
            assert multi.headers["content-type"].startswith("multipart/byteranges; boundary=")
            assert int(multi.headers["content-length"]) == len(multi.content)
            assert data[0:5] in multi.content and data[100:110] in multi.content
            assert f"Content-Range: bytes 100-109/{size}".encode() in multi.content

            stale = http.get(f"/v1/objects/{digest}", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
            assert stale.status_code == 200 and stale.content == data
            fresh = http.get(f"/v1/objects/{digest}", headers={"Range": "bytes=0-9", "If-Range": f'"{digest}"'})
            assert fresh.status_code == 206 and fresh.content == data[:10]

            unsatisfiable = http.get(f"/v1/objects/{digest}", headers={"Range": f"bytes={size + 10}-"})
            assert unsatisfiable.status_code == 416
            assert unsatisfiable.json()["error"]["code"] == "range_not_satisfiable"
            assert unsatisfiable.headers["content-range"] == f"bytes */{size}"

            assert http.get(f"/v1/objects/{digest}", headers={"If-None-Match": f'"{digest}"'}).status_code == 304
            missing = http.get(f"/v1/objects/{'0' * 64}")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "object_not_found"

        # The delta worker builds patches from objects it reads out of S3.
        with server.client() as admin:
            status = wait_for_builds(admin)
            assert status["counts"]["done"] > 0 and status["counts"]["failed"] == 0, status
            response = admin.get("/v1/products/app/releases/1.1.0/delta", params={"from": "1.0.0"})
            delta = response.json()
            assert delta["complete"] is True
            base = admin.get("/v1/products/app/releases/1.0.0/manifest").json()["signed"]
            assert document_digest(rebuild_target(base, delta)) == delta["to"]["manifest"]
            patches = [r for recipes in delta["recipes"].values() for r in recipes if r["kind"] == "patch"]
            assert patches, delta["recipes"]
            patch = patches[0]
            body = admin.get(f"/v1/objects/{patch['object']}").content
            assert blake3_bytes(body) == patch["object"] and len(body) == patch["size"]

        # A device updates through the server: a full install of 1.0.0, then the delta to 1.1.0.
        root = tmp_path / "device"
        init = _client("init", root, "--server", server.url, "--product", "app", "--channel", "stable",
                       "--root", store / "root.json")
        assert init.returncode == 0, init.stderr
        for version, tree in zip(VERSIONS, release_trees):
            server.cas("channel", "set", "app", "stable", version)
            done = _client("update", root, "--json")
            assert done.returncode == 0, done.stderr
            result = json.loads(done.stdout)
            assert result["outcome"] == "updated" and result["current"] == version, result
            _same_tree(root / "current", tree)
        assert result["used_delta"] is True and result["files_local"] > 0, result
        assert 0 < result["bytes_downloaded"] < result["bytes_full"], result

        # checkout and fsck work on an S3 store too.
        dest = tmp_path / "checkout"
        server.cas("checkout", "app", "1.1.0", str(dest))
        assert (dest / entry["path"]).read_bytes() == data
        fsck = server.cas("fsck", "--json")
        assert '"corrupt": []' in fsck.stdout
    finally:
        server.stop()

    # Presigned redirects: GET answers 307 to the bucket; HEAD and 304 stay local.
    server = start_server(store, config=s3_server.config(bucket, delta_builder=False, s3_presign_downloads=True))
    try:
        with server.client(None) as http:
            redirect = http.get(f"/v1/objects/{digest}")
            assert redirect.status_code == 307
            location = redirect.headers["location"]
            assert location.startswith(s3_server.endpoint) and "Signature" in location
            assert http.head(f"/v1/objects/{digest}").status_code == 200
            assert http.get(f"/v1/objects/{digest}", headers={"If-None-Match": f'"{digest}"'}).status_code == 304
            followed = http.get(f"/v1/objects/{digest}", follow_redirects=True)
            assert followed.status_code == 200 and followed.content == data
            ranged = http.get(f"/v1/objects/{digest}", headers={"Range": "bytes=10-99"}, follow_redirects=True)
            assert ranged.status_code == 206 and ranged.content == data[10:100]
            multi = http.get(f"/v1/objects/{digest}", headers={"Range": "bytes=0-4, 100-109"})
            assert multi.status_code == 206  # several ranges: S3 cannot, so the server answers itself
    finally:
        server.stop()
