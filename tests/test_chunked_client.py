"""The client installs chunked files against a real `cas serve`: from chunks of the installed
version plus coalesced Range fetches, verified chunk by chunk and whole; hostile chunk
indexes and corrupted chunks install nothing."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import Server, run_cas, start_server
from test_chunked_e2e import edited, image, write_tree
from test_client_update import cli, init_root, link, update_json

from casformat.chunks import ChunkIndexError, ChunkParams, encode_index
from client.chunks import build_chunked, missing_runs
from client.errors import ClientError
from deltagen.digests import blake3_bytes, blake3_raw, sha256_bytes

CHUNK_FLAG = ("--chunk-min-file-bytes", str(1 << 20))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, bytes, bytes]]:
    base = tmp_path_factory.mktemp("chunked-client")
    server = start_server(base / "store", config="delta_poll_seconds = 0.2\n")
    one = image(11)
    two = edited(one, 12)
    key = str(server.store / "keys" / "release.pem")
    for version, data in (("1.0", one), ("2.0", two)):
        tree = write_tree(base / version, {"disk.img": data, "bin/health": b"#!/bin/sh\nexit 0\n"})
        os.chmod(tree / "bin" / "health", 0o755)
        server.cas("publish", str(tree), "--product", "app", "--version", version, "--key", key,
                   "--status", "released", *CHUNK_FLAG)
    yield server, one, two
    server.stop()


def test_update_fetches_only_changed_chunks(srv: tuple[Server, bytes, bytes], tmp_path: Path) -> None:
    server, one, two = srv
    root = init_root(server, tmp_path / "root")
    server.cas("channel", "set", "app", "stable", "1.0")
    proc, first = update_json(root)
    assert proc.returncode == 0, proc.stderr
    assert (root / "versions" / "1.0" / "disk.img").read_bytes() == one
    assert first["bytes_downloaded"] <= len(one) + (64 << 10)   # a fresh install: the file and its index
    server.cas("channel", "set", "app", "stable", "2.0")
    proc, second = update_json(root)
    assert proc.returncode == 0, proc.stderr
    assert link(root, "current") == "2.0"
    assert (root / "versions" / "2.0" / "disk.img").read_bytes() == two
    # 8 scattered 4 KiB edits, a 256 KiB insertion, a deletion: well under the 6 MiB file.
    assert second["bytes_downloaded"] < (2 << 20), second
    assert not list((root / ".cas" / "downloads").glob("*.run"))
    verify = cli("verify", root, "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"]
    # The rollback point is whole: back to 1.0, its file intact and untouched by the update.
    back = cli("rollback", root, "--json")
    assert back.returncode == 0, back.stderr
    assert link(root, "current") == "1.0" and (root / "versions" / "1.0" / "disk.img").read_bytes() == one


def test_corrupt_chunk_on_the_server_installs_nothing(srv: tuple[Server, bytes, bytes], tmp_path: Path) -> None:
    server, one, two = srv
    with server.client() as http:
        signed = http.get("/v1/products/app/releases/2.0/manifest").json()["signed"]
        disk = next(e for e in signed["files"] if e["path"] == "disk.img")
        from casformat.chunks import parse_index
        index = parse_index(http.get(f"/v1/objects/{disk['chunks']['index']}").content, disk["size"])
    # A chunk only 2.0 has: damage its object file (same size, other bytes).
    old = set(parse_index_bytes_of(server, "1.0"))
    victim = next(d for d, _, _ in index if d not in old)
    path = server.store / "objects" / victim[:2] / victim[2:]
    data = path.read_bytes()
    os.chmod(path, 0o644)
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    try:
        root = init_root(server, tmp_path / "root")
        server.cas("channel", "set", "app", "stable", "1.0")
        assert update_json(root)[0].returncode == 0
        # Installed afresh elsewhere (no base, no chunk pack): every chunk comes by range.
        fresh = init_root(server, tmp_path / "fresh")
        server.cas("channel", "set", "app", "stable", "2.0")
        proc, _ = update_json(fresh)
        assert proc.returncode != 0
        assert "does not match its digest" in proc.stderr + proc.stdout
        assert link(fresh, "current") is None and not (fresh / "versions" / "2.0").exists()
    finally:
        path.write_bytes(data)


def parse_index_bytes_of(server: Server, version: str) -> list[str]:
    from casformat.chunks import parse_index
    with server.client() as http:
        signed = http.get(f"/v1/products/app/releases/{version}/manifest").json()["signed"]
        disk = next(e for e in signed["files"] if e["path"] == "disk.img")
        return parse_index(http.get(f"/v1/objects/{disk['chunks']['index']}").content, disk["size"]).digests()


# ------------------------------------------------------------------ hostile indexes, no network needed

PARAMS = ChunkParams(1024, 4096, 16384)


class Hostile:
    """Serves one index object and refuses any range fetch (none must be reached)."""

    def __init__(self, downloads: Path, index: bytes) -> None:
        self.path = downloads / "index"
        self.path.write_bytes(index)
        self.ranges = 0

    async def object(self, digest: str, size: int) -> Path:
        return self.path

    async def object_range(self, digest: str, start: int, end: int, part: Path, check: Any) -> Path:
        self.ranges += 1
        raise AssertionError("no range may be fetched for a refused index")


def entry_for(data: bytes, index: bytes) -> dict[str, Any]:
    return {"path": "disk.img", "type": "file", "mode": 0o644, "size": len(data), "blake3": blake3_bytes(data),
            "sha256": sha256_bytes(data), "chunks": {"index": blake3_bytes(index), "size": len(index)}}


@pytest.mark.parametrize("lengths, size, message", [
    ([2000, 2000, 2000], 5000, "more than the signed"),      # claims more bytes than the signed size
    ([2000, 2000], 5000, "covers 4000 bytes"),               # fewer
    ([2000] * 3000, 6000, "claims 3000 chunks"),             # an endless list
    ([2000, 0, 1000], 3000, "0 bytes"),
])
def test_hostile_index_installs_nothing(tmp_path: Path, lengths: list[int], size: int, message: str) -> None:
    index = encode_index(PARAMS, [(blake3_raw(b"%d" % i), n) for i, n in enumerate(lengths)])
    source = Hostile(tmp_path, index)
    data = os.urandom(size)
    dest = tmp_path / "out" / "disk.img"
    with pytest.raises(ClientError, match=message):
        asyncio.run(build_chunked(source, tmp_path, entry_for(data, index), dest, [], lambda m: None))
    assert not dest.exists() and source.ranges == 0


def test_wrong_chunk_digests_install_nothing(tmp_path: Path) -> None:
    """An index whose digests are not the file's: the local file's chunks do not match,
    the fetched ranges fail their check, nothing is written."""
    data = os.urandom(20000)
    local = tmp_path / "old"
    local.write_bytes(data)
    index = encode_index(PARAMS, [(blake3_raw(b"x"), 16000), (blake3_raw(b"y"), 4000)])

    class Lying(Hostile):
        async def object_range(self, digest: str, start: int, end: int, part: Path, check: Any) -> Path:
            part.write_bytes(data[start:end])
            check(part)        # raises: the bytes are not the chunks the index names
            return part

    source = Lying(tmp_path, index)
    dest = tmp_path / "out" / "disk.img"
    with pytest.raises(ClientError, match="does not match its digest"):
        asyncio.run(build_chunked(source, tmp_path, entry_for(data, index), dest, [local], lambda m: None))
    assert not dest.exists()


def test_missing_chunks_coalesce_into_few_ranges() -> None:
    from casformat.chunks import parse_index
    chunks = [(blake3_raw(b"%d" % i), 2000) for i in range(100)]
    index = parse_index(encode_index(PARAMS, chunks), 200_000)
    have = {d for i, (d, _) in enumerate(chunks) if i % 10 != 0 and i not in range(40, 60)}
    runs = missing_runs(index, have)
    assert runs == [(0, 1), (10, 11), (20, 21), (30, 31), (40, 61), (70, 71), (80, 81), (90, 91)]
    assert missing_runs(index, set(), run_max=50_000) == [(0, 25), (25, 50), (50, 75), (75, 100)]
    # A chunk repeated later in the file is fetched once.
    repeated = parse_index(encode_index(PARAMS, chunks[:3] + chunks[:3]), 12_000)
    assert missing_runs(repeated, set()) == [(0, 3)]


def test_delta_bytes_count_new_chunks(srv: tuple[Server, bytes, bytes]) -> None:
    server, one, two = srv
    with server.client(None) as http:
        delta = http.get("/v1/products/app/releases/2.0/delta", params={"from": "1.0"}).json()
    assert delta["bytes"]["full"] >= len(two)
    assert delta["bytes"]["recipes"] < (2 << 20), delta["bytes"]     # the new chunks and the index
    assert delta["bytes"]["changed_raw"] == len(two)                 # the whole file did change


def test_client_updates_through_a_mirror(srv: tuple[Server, bytes, bytes], tmp_path: Path) -> None:
    server, one, two = srv
    mirror_store = tmp_path / "mirror"
    run_cas("mirror", "sync", "--upstream", server.url, "--store", str(mirror_store), "--root",
            str(server.store / "root.json"), "--json")
    mirror = start_server(mirror_store, config=f'mirror_of = "{server.url}"\n', init_keys=False)
    try:
        root = tmp_path / "root"
        args = ["init", root, "--server", mirror.url, "--product", "app", "--channel", "stable",
                "--root", server.store / "root.json"]
        assert cli(*args).returncode == 0
        from client.updater import Updater
        assert Updater(root).update(to="1.0").outcome == "updated"
        result = Updater(root).update(to="2.0")
        assert result.outcome == "updated" and result.bytes_downloaded < (2 << 20)
        assert (root / "versions" / "2.0" / "disk.img").read_bytes() == two
    finally:
        mirror.stop()
    # The static export holds the whole file and its index, as the mirror serves them.
    export = tmp_path / "export"
    run_cas("mirror", "export", str(export), "--store", str(mirror_store))
    with server.client(None) as http:
        disk = next(e for e in http.get("/v1/products/app/releases/2.0/manifest").json()["signed"]["files"]
                    if e["path"] == "disk.img")
    for digest in (disk["blake3"], disk["chunks"]["index"]):
        assert (export / "v1" / "objects" / digest[:2] / digest[2:]).is_file()
    assert (export / "v1" / "objects" / disk["blake3"][:2] / disk["blake3"][2:]).read_bytes() == two


def test_dashboard_counts_chunks(srv: tuple[Server, bytes, bytes]) -> None:
    server, one, two = srv
    with server.client() as http:
        overview = http.get("/v1/admin/dashboard/overview").json()
        deltas = http.get("/v1/admin/dashboard/deltas").json()
        doc = http.get("/v1/products/app/releases/2.0/delta", params={"from": "1.0"}).json()
    releases = {r["version"]: r for r in next(p for p in overview["products"] if p["name"] == "app")["releases"]}
    assert releases["2.0"]["logical_bytes"] >= len(two)
    assert releases["2.0"]["new_bytes"] < (2 << 20)          # dedup counted per chunk
    assert releases["2.0"]["deduplicated_bytes"] > len(two) - (2 << 20)
    pair = next(b for r in next(p for p in deltas["products"] if p["name"] == "app")["releases"]
                if r["version"] == "2.0" for b in r["bases"] if b["from"] == "1.0")
    assert pair["complete"] and pair["bytes"]["recipes"] == doc["bytes"]["recipes"]
    assert set(pair["bytes"]["by_kind"]) == {"chunks"}
    assert pair["bytes"]["by_kind"]["chunks"] == doc["bytes"]["recipes"] < (2 << 20)


def test_cut_range_resumes_where_it_stopped(srv: tuple[Server, bytes, bytes], tmp_path: Path) -> None:
    from hostile_proxy import FAST_CLIENT, HostileProxy

    from client.updater import Updater
    server, one, two = srv
    with server.client(None) as http:
        signed = http.get("/v1/products/app/releases/1.0/manifest").json()["signed"]
    disk = next(e for e in signed["files"] if e["path"] == "disk.img")
    proxy = HostileProxy(server.url).start()
    try:
        proxy.fault(rf"^/v1/objects/{disk['blake3']}$", "cut", after=100_000, times=1)
        root = tmp_path / "root"
        Updater.init(root, [proxy.url], "app", "stable", (server.store / "root.json").read_bytes(),
                     client_id="chunk-cut", **FAST_CLIENT)
        result = Updater(root).update(to="1.0")
        assert result.outcome == "updated" and (root / "versions" / "1.0" / "disk.img").read_bytes() == one
        ranges = [s for s in proxy.seen(rf"^/v1/objects/{disk['blake3']}$") if s.method == "GET"]
        bounds = [tuple(map(int, s.range.split("=")[1].split("-"))) for s in ranges]
        cut = [i for i, s in enumerate(ranges) if s.fault == "cut"]
        assert len(cut) == 1
        start, end = bounds[cut[0]]
        # The cut range was asked again from where it stopped (same end, later start), never from its start.
        again = [b for i, b in enumerate(bounds) if i != cut[0] and b[1] == end]
        assert again and all(start < b[0] for b in again), bounds
        assert len(ranges) == len(set(b[1] for b in bounds)) + 1   # one range per run, plus the resume
        assert all(s.if_range == f'"{disk["blake3"]}"' for s in ranges)
        assert result.bytes_downloaded < len(one) + (128 << 10)
    finally:
        proxy.stop()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sparse_file_over_4_gib_publishes_and_installs(tmp_path: Path) -> None:
    """A 4.5 GiB sparse file (holes, a few random islands): published remotely as chunks (the
    holes deduplicate to one chunk), read back by range beyond 4 GiB, installed by a real client."""
    size = (4 << 30) + (512 << 20)
    tree = tmp_path / "tree"
    tree.mkdir()
    islands = {}
    with open(tree / "huge.img", "wb") as fh:
        fh.truncate(size)
        for at in (0, 1 << 30, (4 << 30) + (100 << 20), size - 4096):
            islands[at] = os.urandom(4096)
            fh.seek(at)
            fh.write(islands[at])
    (tree / "bin").mkdir()
    (tree / "bin" / "health").write_bytes(b"#!/bin/sh\nexit 0\n")
    os.chmod(tree / "bin" / "health", 0o755)
    server = start_server(tmp_path / "store")
    try:
        key = str(server.store / "keys" / "release.pem")
        out = run_cas("publish", str(tree), "--product", "app", "--version", "1.0", "--key", key,
                      "--status", "released", "--channel", "stable", "--json", *CHUNK_FLAG,
                      env={"CAS_STORE": str(server.store), **server.env}, timeout=900)
        assert json.loads(out.stdout)["uploaded_bytes"] < (8 << 20)
        with server.client(None) as http:
            signed = http.get("/v1/products/app/releases/1.0/manifest").json()["signed"]
            huge = next(e for e in signed["files"] if e["path"] == "huge.img")
            at = (4 << 30) + (100 << 20)
            part = http.get(f"/v1/objects/{huge['blake3']}", headers={"Range": f"bytes={at}-{at + 4095}"})
            assert part.status_code == 206 and part.content == islands[at]
        root = init_root(server, tmp_path / "root")
        proc = cli("update", root, "--json", timeout=900)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        installed = root / "versions" / "1.0" / "huge.img"
        assert installed.stat().st_size == size
        with open(installed, "rb") as fh:
            for offset, data in islands.items():
                fh.seek(offset)
                assert fh.read(4096) == data
        assert result["bytes_downloaded"] < (8 << 20)
    finally:
        server.stop()


def _pack_recipe(server: Server) -> tuple[dict[str, Any], dict[str, Any]]:
    from conftest import wait_for_builds
    with server.client() as http:
        wait_for_builds(http)
        doc = http.get("/v1/products/app/releases/2.0/delta", params={"from": "1.0"}).json()
        signed = http.get("/v1/products/app/releases/2.0/manifest").json()["signed"]
    disk = next(e for e in signed["files"] if e["path"] == "disk.img")
    assert doc["complete"]
    pack = next(r for r in doc["recipes"][disk["blake3"]] if r["kind"] == "chunks")
    return doc, {**pack, "index_size": disk["chunks"]["size"]}


def test_chunk_pack_goes_below_the_new_chunks(srv: tuple[Server, bytes, bytes], tmp_path: Path) -> None:
    """The builder makes a chunk pack (changed chunks as zstd patches against the chunks they
    replace): the delta offers it, counts it, and a client updates with it."""
    server, one, two = srv
    doc, pack = _pack_recipe(server)
    with server.client() as http:
        new_chunks = set(parse_index_bytes_of(server, "2.0")) - set(parse_index_bytes_of(server, "1.0"))
        raw = sum(len(http.get(f"/v1/objects/{d}").content) for d in new_chunks)
    assert pack["size"] < raw * 0.6, (pack, raw)           # 4 KiB edits in ~80 KiB chunks: patches
    assert doc["bytes"]["recipes"] == pack["index_size"] + pack["size"]
    root = init_root(server, tmp_path / "root")
    server.cas("channel", "set", "app", "stable", "1.0")
    assert update_json(root)[0].returncode == 0
    server.cas("channel", "set", "app", "stable", "2.0")
    proc, result = update_json(root)
    assert proc.returncode == 0, proc.stderr
    assert (root / "versions" / "2.0" / "disk.img").read_bytes() == two
    assert result["bytes_downloaded"] <= pack["index_size"] + pack["size"] + (64 << 10), (result, pack)


def test_corrupt_chunk_pack_falls_back_to_ranges(srv: tuple[Server, bytes, bytes], tmp_path: Path) -> None:
    server, one, two = srv
    _, pack = _pack_recipe(server)
    path = server.store / "objects" / pack["object"][:2] / pack["object"][2:]
    data = path.read_bytes()
    os.chmod(path, 0o644)
    # Same size, another payload byte: the client's digest check refuses the download.
    path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    try:
        root = init_root(server, tmp_path / "root")
        server.cas("channel", "set", "app", "stable", "1.0")
        assert update_json(root)[0].returncode == 0
        server.cas("channel", "set", "app", "stable", "2.0")
        proc, result = update_json(root)
        assert proc.returncode == 0, proc.stderr
        assert (root / "versions" / "2.0" / "disk.img").read_bytes() == two
        # The pack was refused (its digest), the chunks came as ranges instead.
        assert result["bytes_downloaded"] > pack["size"] + pack["index_size"], result
    finally:
        path.write_bytes(data)


def test_hostile_chunk_pack_entries(tmp_path: Path) -> None:
    """A pack whose entry decodes to other bytes than the chunk it names is refused."""
    from casformat.chunks import PACK_RAW, encode_pack_header, parse_index
    from client.chunks import apply_pack, load_pack
    from deltagen.errors import DeltaError

    chunk = os.urandom(3000)
    index = parse_index(encode_index(PARAMS, [(blake3_raw(chunk), 3000)]), 3000)
    forged = os.urandom(3000)
    pack = encode_pack_header([(blake3_raw(chunk), 3000, PACK_RAW, bytes(32), 3000)]) + forged
    source = Hostile(tmp_path, pack)
    with pytest.raises(DeltaError, match="does not rebuild"):
        loaded = asyncio.run(load_pack(source, {"object": blake3_bytes(pack), "size": len(pack)}))
        apply_pack(*loaded, tmp_path, {"blake3": "f" * 64}, index, {})
    trailing = encode_pack_header([(blake3_raw(chunk), 3000, PACK_RAW, bytes(32), 3000)]) + chunk + b"x"
    source = Hostile(tmp_path, trailing)
    with pytest.raises(ChunkIndexError, match="after its payloads"):
        asyncio.run(load_pack(source, {"object": blake3_bytes(trailing), "size": len(trailing)}))
    endless = encode_pack_header([]) [:8] + (10**6).to_bytes(4, "big")
    source = Hostile(tmp_path, endless)
    with pytest.raises(ChunkIndexError, match="claims"):
        asyncio.run(load_pack(source, {"object": blake3_bytes(endless), "size": len(endless)}))
