"""Chunked files end to end against a real `cas serve`: publish (remote and local) uploads
only missing chunks, the whole file reads back (with ranges), hostile chunked manifests
are refused with nothing recorded."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from conftest import Server, run_cas, start_server

from cas.chunked import ChunkSettings
from cas.config import load_config
from cas.keys import load_private_key
from cas.publisher import signed_manifest
from cas.trees import scan_tree
from casformat.canonical import canonical_bytes
from casformat.chunks import encode_index, parse_index
from deltagen.digests import blake3_bytes, blake3_file

CHUNK_FLAG = ("--chunk-min-file-bytes", str(1 << 20))


def image(seed: int, size: int = 6 << 20) -> bytes:
    """A disk-image-like file: random regions and zero-filled ones."""
    rng = random.Random(seed)
    parts, total = [], 0
    while total < size:
        n = rng.randrange(64 << 10, 512 << 10)
        parts.append(rng.randbytes(n) if rng.random() < 0.7 else bytes(n))
        total += n
    return b"".join(parts)[:size]


def edited(data: bytes, seed: int) -> bytes:
    """Scattered 4 KiB edits, a 256 KiB insertion and a 512 KiB deletion."""
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(8):
        at = rng.randrange(0, len(out) - 4096)
        out[at:at + 4096] = rng.randbytes(4096)
    at = len(out) // 3
    out[at:at] = rng.randbytes(256 << 10)
    at = 2 * len(out) // 3
    del out[at:at + (512 << 10)]
    return bytes(out)


def write_tree(dest: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return dest


@pytest.fixture(scope="module")
def images() -> tuple[bytes, bytes]:
    one = image(1)
    return one, edited(one, 2)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path / "store")
    yield srv
    srv.stop()


def publish(server: Server, tree: Path, version: str, *extra: str) -> dict[str, Any]:
    key = server.store / "keys" / "release.pem"
    out = server.cas("publish", str(tree), "--product", "app", "--version", version, "--key", str(key),
                     "--json", *CHUNK_FLAG, *extra)
    return json.loads(out.stdout)


def entries(http: httpx.Client, version: str) -> dict[str, dict[str, Any]]:
    signed = http.get(f"/v1/products/app/releases/{version}/manifest").json()["signed"]
    return {e["path"]: e for e in signed["files"]}


def test_remote_publish_uploads_only_new_chunks_and_reads_back_whole(server: Server, tmp_path: Path,
                                                                     images: tuple[bytes, bytes]) -> None:
    one, two = images
    tail_twin = one[:-12] + b"twelve bytes"     # differs from disk.img in its last 12 bytes only
    first = publish(server, write_tree(tmp_path / "v1", {"disk.img": one, "small.txt": b"hi\n",
                                                         "twin.img": tail_twin}), "1.0")
    # Two 6 MiB files differing in 12 bytes are stored about once (the last chunk differs).
    assert first["uploaded_bytes"] < len(one) + (512 << 10)
    second = publish(server, write_tree(tmp_path / "v2", {"disk.img": two, "small.txt": b"hi\n"}), "2.0")
    assert second["uploaded_bytes"] < (2 << 20), second   # the edits, not the 6 MiB file
    with server.client(None) as http:
        files = entries(http, "2.0")
        disk = files["disk.img"]
        assert set(disk["chunks"]) == {"index", "size"} and "chunks" not in files["small.txt"]
        assert disk["blake3"] == blake3_bytes(two) and disk["size"] == len(two)
        # The whole file is not stored whole, yet GET serves it (old clients, mirrors, curl).
        assert not (server.store / "objects" / disk["blake3"][:2] / disk["blake3"][2:]).exists()
        url = f"/v1/objects/{disk['blake3']}"
        whole = http.get(url)
        assert whole.status_code == 200 and whole.content == two
        assert whole.headers["etag"] == f'"{disk["blake3"]}"'
        assert http.get(url, headers={"If-None-Match": whole.headers["etag"]}).status_code == 304
        part = http.get(url, headers={"Range": "bytes=100000-300000"})
        assert part.status_code == 206 and part.content == two[100000:300001]
        assert part.headers["content-range"] == f"bytes 100000-300000/{len(two)}"
        multi = http.get(url, headers={"Range": "bytes=0-9,5000000-5000009"})
        assert multi.status_code == 206 and multi.headers["content-type"].startswith("multipart/byteranges")
        assert two[:10] in multi.content and two[5000000:5000010] in multi.content
        assert http.head(url).headers["content-length"] == str(len(two))
        bad = http.get(url, headers={"Range": f"bytes={len(two) + 5}-"})
        assert bad.status_code == 416
        # The index is an object; it parses against the signed size.
        index = parse_index(http.get(f"/v1/objects/{disk['chunks']['index']}").content, disk["size"])
        assert index.file_size == len(two)
    # Published again: nothing to upload.
    again = publish(server, tmp_path / "v2", "2.0")
    assert again["created"] is False and again["uploaded_objects"] == 0


def test_local_publish_stores_chunks_once(tmp_path: Path, images: tuple[bytes, bytes]) -> None:
    store = tmp_path / "store"
    run_cas("keys", "init", "--store", str(store))
    one, two = images

    def local(tree: Path, version: str) -> dict[str, Any]:
        return json.loads(run_cas("publish", str(tree), "--product", "app", "--version", version, "--store",
                                  str(store), "--json", *CHUNK_FLAG).stdout)

    first = local(write_tree(tmp_path / "v1", {"disk.img": one}), "1.0")
    second = local(write_tree(tmp_path / "v2", {"disk.img": two}), "2.0")
    assert first["uploaded_bytes"] >= len(one) * 0.9
    assert second["uploaded_bytes"] < (2 << 20)
    assert not list((store / "objects").rglob(blake3_bytes(two)))
    stats = json.loads(run_cas("stats", "--store", str(store), "--json").stdout)
    assert stats["unique_referenced_bytes"] < len(one) + (2 << 20)   # chunk-level dedup counted
    fsck = run_cas("fsck", "--store", str(store), "--json", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    out = tmp_path / "checkout"
    run_cas("checkout", "app", "2.0", str(out), "--store", str(store))
    assert blake3_file(out / "disk.img") == blake3_bytes(two)


def _put(http: httpx.Client, data: bytes) -> str:
    digest = blake3_bytes(data)
    assert http.put(f"/v1/objects/{digest}", content=data).status_code in (200, 201)
    return digest


def test_hostile_chunked_manifests_record_nothing(server: Server, tmp_path: Path,
                                                  images: tuple[bytes, bytes]) -> None:
    one, _ = images
    tree = write_tree(tmp_path / "v1", {"disk.img": one})
    config = load_config(server.store, chunk_min_file_bytes=1 << 20)
    scanned = scan_tree(tree, chunking=ChunkSettings.of(config))
    source = next(iter(scanned.chunked.values()))
    key = load_private_key(server.store / "keys" / "release.pem")

    def offer(version: str, mutate=None) -> httpx.Response:
        files = [dict(e) for e in scanned.entries]
        if mutate is not None:
            files[0] = mutate(files[0])
        envelope = signed_manifest("app", version, type(scanned)(files, {}), key)
        return http.put(f"/v1/products/app/releases/{version}", content=canonical_bytes(envelope))

    with server.client() as http:
        _put(http, source.index_bytes)
        missing = offer("1.0")       # the index is there, its chunks are not
        assert missing.status_code == 422 and missing.json()["error"]["code"] == "missing_objects"
        assert any("chunk of disk.img" in d for d in missing.json()["error"]["detail"])
        for _, offset, length in source.index:
            _put(http, one[offset:offset + length])
        # An index whose chunks are real but do not make the signed file.
        lengths = [(bytes.fromhex(d), n) for d, _, n in source.index]
        swapped = encode_index(source.index.params, [lengths[1], lengths[0], *lengths[2:]])
        swapped_digest = _put(http, swapped)
        lie = offer("1.1", lambda e: {**e, "chunks": {"index": swapped_digest, "size": len(swapped)}})
        assert lie.status_code == 422 and "do not hash" in json.dumps(lie.json())
        # Real chunks listed with other lengths (the total kept): read back, they are other bytes.
        (d0, n0), (d1, n1) = lengths[0], lengths[1]
        shifted = encode_index(source.index.params, [(d0, n0 + 1), (d1, n1 - 1), *lengths[2:]])
        shifted_digest = _put(http, shifted)
        moved = offer("1.4", lambda e: {**e, "chunks": {"index": shifted_digest, "size": len(shifted)}})
        assert moved.status_code == 422
        assert "cannot be read back" in moved.text or "do not hash" in moved.text, moved.text
        # An index claiming more bytes than the signed size.
        longer = encode_index(source.index.params, [*lengths, lengths[0]])
        longer_digest = _put(http, longer)
        over = offer("1.2", lambda e: {**e, "chunks": {"index": longer_digest, "size": len(longer)}})
        assert over.status_code == 422 and "bad chunk index" in json.dumps(over.json())
        # The declared index size differs from the object.
        wrong_size = offer("1.3", lambda e: {**e, "chunks": {**e["chunks"], "size": e["chunks"]["size"] + 36}})
        assert wrong_size.status_code == 422
        assert http.get("/v1/products/app/releases").json().get("releases", []) == []
        good = offer("1.0")
        assert good.status_code == 201, good.text
        assert http.get(f"/v1/objects/{blake3_bytes(one)}").content == one


def test_sparse_file_over_chunk_threshold_streams(server: Server, tmp_path: Path) -> None:
    """A sparse file (mostly holes) publishes as max-size chunks deduplicated to one."""
    tree = tmp_path / "sparse"
    tree.mkdir()
    with open(tree / "big.img", "wb") as fh:
        fh.truncate(64 << 20)
        fh.seek(32 << 20)
        fh.write(os.urandom(4096))
    result = publish(server, tree, "1.0")
    assert result["uploaded_bytes"] < (2 << 20)


def test_gc_keeps_chunks_of_live_releases_only(tmp_path: Path, images: tuple[bytes, bytes]) -> None:
    from cas import gc
    from cas.keys import init_keys, key_path
    from cas.publisher import publish_local
    from cas.repo import open_repo

    one, two = images
    repo = open_repo(load_config(tmp_path / "store", chunk_min_file_bytes=1 << 20))
    init_keys(tmp_path / "store", repo.meta)
    repo.reload_keys()
    key = load_private_key(key_path(repo.config.store, "release"))
    chunking = ChunkSettings.of(repo.config)
    trees = {}
    for version, data in (("1.0", one), ("2.0", two)):
        trees[version] = scan_tree(write_tree(tmp_path / version, {"disk.img": data}), chunking=chunking)
        publish_local(repo, trees[version], signed_manifest("app", version, trees[version], key))
    chunks_of = {v: {s.index_digest, *s.index.digests()} for v, t in trees.items() for s in t.chunked.values()}
    only_two = chunks_of["2.0"] - chunks_of["1.0"]
    assert only_two and chunks_of["1.0"] | chunks_of["2.0"] <= set(repo.objects.iter_digests())
    assert gc.collect(repo, grace_seconds=0).marked == 0      # everything is referenced through indexes
    gc.delete_release(repo, "app", "2.0", "test", "bad build")
    gc.collect(repo, grace_seconds=0)
    second = gc.collect(repo, grace_seconds=0)
    assert set(second.deleted) == only_two
    stored = set(repo.objects.iter_digests())
    assert chunks_of["1.0"] <= stored and not only_two & stored
    assert repo.meta.live_objects() >= chunks_of["1.0"]


def test_chunked_files_on_s3(s3_server, tmp_path: Path, images: tuple[bytes, bytes]) -> None:
    one, two = images
    bucket = s3_server.new_bucket()
    srv = start_server(tmp_path / "store", config=s3_server.config(bucket, delta_builder=False))
    try:
        publish(srv, write_tree(tmp_path / "v1", {"disk.img": one}), "1.0")
        second = publish(srv, write_tree(tmp_path / "v2", {"disk.img": two}), "2.0")
        assert second["uploaded_bytes"] < (2 << 20)
        with srv.client(None) as http:
            disk = entries(http, "2.0")["disk.img"]
            url = f"/v1/objects/{disk['blake3']}"
            assert http.get(url).content == two
            assert http.get(url, headers={"Range": "bytes=4000000-4100000"}).content == two[4000000:4100001]
        keys = [o["Key"] for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        assert not any(k.endswith(disk["blake3"][2:]) for k in keys)      # never stored whole
        assert any(k.endswith(disk["chunks"]["index"][2:]) for k in keys)
    finally:
        srv.stop()


def test_fsck_names_a_missing_chunk(tmp_path: Path, images: tuple[bytes, bytes]) -> None:
    store = tmp_path / "store"
    run_cas("keys", "init", "--store", str(store))
    one, _ = images
    run_cas("publish", str(write_tree(tmp_path / "v1", {"disk.img": one})), "--product", "app", "--version",
            "1.0", "--store", str(store), *CHUNK_FLAG)
    assert run_cas("fsck", "--store", str(store), check=False).returncode == 0
    config = load_config(store, chunk_min_file_bytes=1 << 20)
    source = next(iter(scan_tree(tmp_path / "v1", chunking=ChunkSettings.of(config)).chunked.values()))
    victim = source.index.digest(3)
    path = store / "objects" / victim[:2] / victim[2:]
    os.chmod(path.parent, 0o755)
    path.unlink()
    fsck = run_cas("fsck", "--store", str(store), "--json", check=False)
    assert fsck.returncode == 1
    assert victim in json.loads(fsck.stdout)["missing_referenced"]


def test_chunk_pack_build_and_deadline(tmp_path: Path, images: tuple[bytes, bytes]) -> None:
    """A pack rebuilds every chunk the new file lacks (patches against the chunks they replace);
    past its time budget the rest go in raw, and the pack is still complete and verifies."""
    import time as _time

    from cas.chunked import build_chunk_pack, verify_chunk_pack
    from cas.repo import open_repo
    from casformat.chunks import PACK_RAW, PACK_ZSTD_PATCH, pack_header_size, parse_pack_header

    one, two = images
    repo = open_repo(load_config(tmp_path / "store"))
    chunking = ChunkSettings.of(load_config(tmp_path / "store", chunk_min_file_bytes=1 << 20))
    indexes = []
    for name, data in (("a", one), ("b", two)):
        source = next(iter(scan_tree(write_tree(tmp_path / name, {"f": data}), chunking=chunking).chunked.values()))
        for _, offset, length in source.index:
            repo.objects.ingest_bytes(data[offset:offset + length])
        indexes.append(source.index)
    new = set(indexes[1].digests()) - set(indexes[0].digests())

    def entries(deadline: float | None) -> list:
        out = tmp_path / f"pack-{deadline}"
        raw = build_chunk_pack(repo.objects, indexes[0], indexes[1], out, deadline=deadline)
        verify_chunk_pack(repo.objects, out)
        data = out.read_bytes()
        found = parse_pack_header(data[:pack_header_size(data[:12], len(data))], len(data))
        assert {e.chunk.hex() for e in found} == new and raw == sum(e.length for e in found)
        return found

    patched = entries(None)
    assert any(e.method == PACK_ZSTD_PATCH for e in patched)
    assert sum(e.payload for e in patched) < 0.6 * sum(e.length for e in patched)
    assert all(e.method == PACK_RAW for e in entries(_time.monotonic() - 1))
