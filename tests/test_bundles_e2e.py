"""Bundles end to end: the server builds one stream for changed files that share content,
the manifest delta offers it under every member, and the client fetches it once."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import start_server

from client.updater import Updater
from deltagen.digests import blake3_file

FILES = 16


def write_tree(dest: Path, version: int) -> None:
    """Sixteen distinct files; every new version appends the same fresh random block to
    all of them (think of a string table shared by many plugins)."""
    rng = random.Random(7)
    shared = [rng.randbytes(3000) for _ in range(version + 1)]
    for i in range(FILES):
        own = random.Random(i).randbytes(5000)
        path = dest / "plugins" / f"plugin-{i:02d}.so"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(own + b"".join(shared[1:version + 1]))
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    (dest / "bin" / "health").write_text("#!/bin/sh\nexit 0\n")
    (dest / "bin" / "health").chmod(0o755)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("bundles")
    # bundles of native libraries (.so) are built under the exhaustive build policy only
    server = start_server(base / "store", config='delta_poll_seconds = 0.2\ndelta_build_policy = "exhaustive"\n')
    key = str(server.store / "keys" / "release.pem")
    for v in (0, 1):
        write_tree(base / f"t{v}", v)
        server.cas("publish", str(base / f"t{v}"), "--product", "app", "--version", f"1.{v}.0", "--key", key,
                   "--status", "released")
    server.cas("channel", "set", "app", "stable", "1.0.0")
    with server.client() as http:
        from hostile_proxy import wait_for_builds
        status = wait_for_builds(http)
        assert status["counts"]["failed"] == 0, status["failed"]
    yield server, base
    server.stop()


def test_delta_offers_a_chosen_bundle_counted_once(world) -> None:
    server, _ = world
    with server.client(None) as http:
        delta = http.get("/v1/products/app/releases/1.1.0/delta", params={"from": "1.0.0"}).json()
    assert delta["complete"] is True
    firsts = [r[0] for r in delta["recipes"].values()]
    bundles = {r["object"]: r for r in firsts if r["kind"] == "bundle"}
    assert len(bundles) == 1, firsts
    bundle = next(iter(bundles.values()))
    assert len(bundle["members"]) == FILES
    per_file_best = sum(min(r["size"] for r in recipes if r["kind"] != "bundle")
                        for recipes in delta["recipes"].values())
    assert delta["bytes"]["recipes"] == bundle["size"] < per_file_best / 3
    assert {m["blake3"] for m in bundle["members"]} == set(delta["recipes"])


def test_client_fetches_the_bundle_once_and_verifies_every_member(world, tmp_path: Path) -> None:
    server, base = world
    root = tmp_path / "client"
    Updater.init(root, [server.url], "app", "stable", (server.store / "root.json").read_bytes())
    up = Updater(root)
    assert up.update().current == "1.0.0"
    server.cas("channel", "set", "app", "stable", "1.1.0")
    with server.client(None) as http:
        delta = http.get("/v1/products/app/releases/1.1.0/delta", params={"from": "1.0.0"}).json()
    result = up.update()
    assert result.current == "1.1.0" and result.used_delta
    assert result.bytes_downloaded == delta["bytes"]["recipes"]
    assert up.verify()["ok"]
    for i in range(FILES):
        rel = f"plugins/plugin-{i:02d}.so"
        assert blake3_file(root / "current" / rel) == blake3_file(base / "t1" / rel)
