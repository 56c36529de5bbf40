"""Replicas: two `cas serve` processes sharing one PostgreSQL and one object store.

Both serve the same answers; concurrent admin moves split across them give channel
sequences 1..N exactly; their delta workers build each job once.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import psycopg
import pytest
from conftest import Server, start_server

VERSIONS = ["1.0.0", "1.1.0", "1.2.0"]


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Server, Server]]:
    store = tmp_path / "store"  # one directory: objects and keys shared, as on a shared volume
    config = f'metadata_url = "{postgres_url}"\ndelta_poll_seconds = 0.2\ndelta_workers = 3\n'
    a = start_server(store, config=config)
    try:
        b = start_server(store, config=config)
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


def publish(server: Server, tree: Path, version: str, *extra: str) -> None:
    server.cas("publish", str(tree), "--product", "app", "--version", version,
               "--key", str(server.store / "keys" / "release.pem"), *extra)


def same_answer(a: Server, b: Server, path: str, **kw: object) -> httpx.Response:
    with a.client(None) as ha, b.client(None) as hb:
        ra, rb = ha.get(path, **kw), hb.get(path, **kw)
    assert ra.status_code == rb.status_code == 200, (ra.text, rb.text)
    assert ra.content == rb.content
    assert ra.headers.get("etag") == rb.headers.get("etag")
    return ra


def test_published_through_one_replica_served_alike_by_both(replicas: tuple[Server, Server],
                                                            release_trees: list[Path]) -> None:
    a, b = replicas
    publish(a, release_trees[0], "1.0.0", "--status", "released", "--channel", "stable")
    manifest = same_answer(a, b, "/v1/products/app/releases/1.0.0/manifest")
    assert manifest.headers["etag"]
    doc = same_answer(a, b, "/v1/products/app/channels/stable")
    assert doc.json()["signed"]["sequence"] == 1
    same_answer(a, b, "/v1/products/app/releases")
    same_answer(a, b, "/v1/root.json")
    with b.client(None) as hb:  # B revalidates A's ETag
        assert hb.get("/v1/products/app/channels/stable",
                      headers={"If-None-Match": doc.headers["etag"]}).status_code == 304
    # A move through B is seen at once by A (its channel cache follows the shared counter).
    publish(b, release_trees[1], "1.1.0", "--status", "released")
    with b.client() as hb:
        assert hb.put("/v1/products/app/channels/stable", json={"release": "1.1.0"}).status_code == 200
    moved = same_answer(a, b, "/v1/products/app/channels/stable")
    assert moved.json()["signed"]["sequence"] == 2 and moved.json()["signed"]["release"] == "1.1.0"
    with a.client(None) as ha:
        assert ha.get("/v1/products/app/channels/stable",
                      headers={"If-None-Match": doc.headers["etag"]}).status_code == 200
    # The same version published through the other replica: identical is 200, nothing doubled.
    publish(b, release_trees[0], "1.0.0")
    with a.client(None) as ha:
        assert [r["version"] for r in ha.get("/v1/products/app/releases").json()["releases"]] == ["1.0.0", "1.1.0"]


def test_concurrent_channel_moves_across_replicas(replicas: tuple[Server, Server],
                                                  release_trees: list[Path]) -> None:
    a, b = replicas
    for version, tree in zip(VERSIONS, release_trees):
        publish(a, tree, version, "--status", "released")
    moves = 20

    def move(i: int) -> int:
        server = (a, b)[i % 2]
        with server.client() as http:
            for _ in range(50):
                response = http.put("/v1/products/app/channels/stable", json={"release": VERSIONS[i % 3]})
                if response.status_code == 409 and response.json()["error"]["code"] == "concurrent_change":
                    continue  # lost every compare-and-set of its attempts: ask again
                assert response.status_code == 200, response.text
                return int(response.json()["sequence"])
        raise AssertionError("a move never got through")

    with ThreadPoolExecutor(moves) as pool:
        sequences = sorted(pool.map(move, range(moves)))
    assert sequences == list(range(1, moves + 1))
    final = same_answer(a, b, "/v1/products/app/channels/stable")
    assert final.json()["signed"]["sequence"] == moves
    with psycopg.connect(_url(a)) as conn:
        assert conn.execute("SELECT value FROM counters WHERE name = 'channels'").fetchone()[0] == moves


def _url(server: Server) -> str:
    for line in (server.store / "config.toml").read_text().splitlines():
        if line.startswith("metadata_url"):
            return line.split("=", 1)[1].strip().strip('"')
    raise AssertionError("no metadata_url")


def test_delta_builds_are_shared_by_both_replicas_workers(replicas: tuple[Server, Server],
                                                          release_trees: list[Path]) -> None:
    a, b = replicas
    for version, tree in zip(VERSIONS, release_trees):
        publish((a, b)[VERSIONS.index(version) % 2], tree, version, "--status", "released")
    deadline = time.monotonic() + 120
    with a.client() as http:
        while True:
            counts = http.get("/v1/admin/deltas").json()["counts"]
            if counts["queued"] == 0 and counts["running"] == 0:
                break
            assert time.monotonic() < deadline, counts
            time.sleep(0.2)
    assert counts["done"] > 0 and counts["failed"] == 0
    with psycopg.connect(_url(a)) as conn:
        jobs = conn.execute("SELECT state, attempts, owner FROM delta_jobs").fetchall()
        # Taken once each: a second claim would have counted a second attempt.
        assert {(state, attempts) for state, attempts, _ in jobs} == {("done", 1)}
        owners = {owner for _, _, owner in jobs}
        recipes = conn.execute("SELECT COUNT(*), COUNT(DISTINCT (base, target, kind, algorithm)) "
                               "FROM recipes").fetchone()
    assert recipes[0] == recipes[1] > 0
    assert owners and None not in owners  # usually both replicas' workers; never asserted (timing)
    for base, target in [("1.0.0", "1.1.0"), ("1.1.0", "1.2.0"), ("1.0.0", "1.2.0")]:
        delta = same_answer(a, b, f"/v1/products/app/releases/{target}/delta", params={"from": base})
        assert delta.json()["complete"] is True
