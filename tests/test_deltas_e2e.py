"""End to end: publish three releases, wait for the ahead-of-time builds, and
rebuild every target from a base with the manifest delta and its recipes."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import Server, start_server, wait_for_builds

from casformat.canonical import document_digest
from casformat.manifest_delta import rebuild_target
from casformat.roots import verify_first_root
from casformat.signatures import verify
from deltagen import apply_bundle, apply_patch, decompress_file
from deltagen.digests import blake3_bytes, blake3_file

VERSIONS = ["1.0.0", "1.1.0", "1.2.0"]
FAST = "delta_poll_seconds = 0.2\n"


def publish_all(server: Server, trees: list[Path]) -> None:
    key = str(server.store / "keys" / "release.pem")
    for version, tree in zip(VERSIONS, trees):
        server.cas("publish", str(tree), "--product", "app", "--version", version, "--key", key,
                   "--status", "released")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, release_trees: list[Path]):
    server = start_server(tmp_path_factory.mktemp("deltas") / "store", config=FAST)
    publish_all(server, release_trees)
    with server.client() as http:
        status = wait_for_builds(http)
    yield server, status
    server.stop()


def test_builds_finish_without_failures(built) -> None:
    _, status = built
    assert status["counts"]["done"] > 0
    assert status["counts"]["failed"] == 0, status["failed"]


@pytest.mark.parametrize("base,target", [("1.0.0", "1.1.0"), ("1.1.0", "1.2.0"), ("1.0.0", "1.2.0")])
def test_delta_rebuilds_target_manifest_and_files(built, tmp_path: Path, base: str, target: str) -> None:
    server, _ = built
    with server.client(None) as http:
        root = verify_first_root(http.get("/v1/root.json").json())
        base_manifest = http.get(f"/v1/products/app/releases/{base}/manifest").json()["signed"]
        response = http.get(f"/v1/products/app/releases/{target}/delta", params={"from": base})
        assert response.status_code == 200
        delta = response.json()
        assert delta["complete"] is True
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert http.get(f"/v1/products/app/releases/{target}/delta", params={"from": base},
                        headers={"If-None-Match": response.headers["etag"]}).status_code == 304

        # The delta rebuilds the signed target manifest exactly.
        signed = rebuild_target(base_manifest, delta)
        assert document_digest(signed) == delta["to"]["manifest"]
        verify({"signed": signed, "signatures": delta["to"]["signatures"]}, root.role("release"))

        # Materialise the base from the store, then every upserted file from its cheapest recipe.
        base_dir = tmp_path / "base"
        server.cas("checkout", "app", base, str(base_dir))
        by_digest = {e["blake3"]: base_dir / e["path"] for e in base_manifest["files"] if e["type"] == "file"}
        downloaded = 0
        kinds = set()
        bundled: dict[str, Path] = {}   # member blake3 -> rebuilt file, for bundles already applied
        for entry in delta["upserted"]:
            if entry["type"] != "file" or entry["blake3"] in by_digest:
                continue
            recipe = delta["recipes"][entry["blake3"]][0]
            kinds.add((recipe["kind"], recipe.get("algorithm")))
            out = tmp_path / "out" / entry["path"]
            out.parent.mkdir(parents=True, exist_ok=True)
            if recipe["kind"] == "bundle" and entry["blake3"] in bundled:
                out.write_bytes(bundled[entry["blake3"]].read_bytes())  # fetched once for all members
                assert blake3_file(out) == entry["blake3"]
                continue
            body = http.get(f"/v1/objects/{recipe['object']}").content
            assert blake3_bytes(body) == recipe["object"] and len(body) == recipe["size"]
            downloaded += len(body)
            obj = tmp_path / "obj"
            obj.write_bytes(body)
            if recipe["kind"] == "bundle":
                rebuilt = tmp_path / f"bundle-{recipe['object'][:8]}"
                rebuilt.mkdir()
                bundled.update(apply_bundle([by_digest[b] for b in recipe["bases"]], obj, recipe["members"],
                                            rebuilt))
                out.write_bytes(bundled[entry["blake3"]].read_bytes())
            elif recipe["kind"] == "patch":
                apply_patch(recipe["algorithm"], by_digest[recipe["base"]], obj, out, entry["size"],
                            entry["blake3"])
            elif recipe["kind"] == "compressed":
                decompress_file(obj, out, entry["size"], entry["blake3"])
            else:
                out.write_bytes(body)
            assert blake3_file(out) == entry["blake3"]
        assert downloaded == delta["bytes"]["recipes"]
        assert delta["bytes"]["recipes"] < delta["bytes"]["changed_raw"] / 5
        assert any(kind in ("patch", "bundle") for kind, _ in kinds)


def test_recipes_are_cheapest_first_and_worth_offering(built) -> None:
    server, _ = built
    with server.client(None) as http:
        delta = http.get("/v1/products/app/releases/1.2.0/delta", params={"from": "1.1.0"}).json()
    for target, recipes in delta["recipes"].items():
        # Bundles rebuild several targets: their size is not comparable per target
        # (tests/test_bundles_e2e.py covers them).
        single = [r for r in recipes if r["kind"] != "bundle"]
        sizes = [r["size"] for r in single]
        assert sizes == sorted(sizes), recipes
        assert single[-1] == {"kind": "raw", "object": target, "size": sizes[-1]}
        assert all(r["size"] < sizes[-1] for r in single[:-1])


def test_unknown_base_is_404_with_code(built) -> None:
    server, _ = built
    with server.client(None) as http:
        response = http.get("/v1/products/app/releases/1.2.0/delta", params={"from": "0.0.1"})
        assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_base"
        response = http.get("/v1/products/app/releases/9.9.9/delta", params={"from": "1.0.0"})
        assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_release"
        response = http.get("/v1/products/app/releases/1.2.0/delta")
        assert response.status_code == 400


def test_unplanned_base_gets_incomplete_delta_then_builds(tmp_path: Path, release_trees: list[Path]) -> None:
    # Deltas are built on `released` only here, and both stay testing: no plan from 1.0.0 until a read
    # (a read queues builds for a testing or released target only, never a draft: issue 13 D3).
    server = start_server(tmp_path / "store", config=FAST + 'delta_build_on = ["released"]\ndelta_bases = 1\n')
    try:
        key = str(server.store / "keys" / "release.pem")
        server.cas("publish", str(release_trees[0]), "--product", "app", "--version", "1.0.0", "--key", key,
                   "--status", "testing")
        server.cas("publish", str(release_trees[1]), "--product", "app", "--version", "1.1.0", "--key", key,
                   "--status", "testing")
        with server.client() as http:
            first = http.get("/v1/products/app/releases/1.1.0/delta", params={"from": "1.0.0"})
            doc = first.json()
            assert first.status_code == 200 and doc["complete"] is False
            assert first.headers["cache-control"] == "no-cache"
            # Still usable: every changed file has at least the raw recipe.
            assert all(r[-1]["kind"] == "raw" for r in doc["recipes"].values())
            wait_for_builds(http)
            again = http.get("/v1/products/app/releases/1.1.0/delta", params={"from": "1.0.0"}).json()
            assert again["complete"] is True
            assert again["bytes"]["recipes"] < doc["bytes"]["recipes"]
            assert again["to"] == doc["to"] and again["upserted"] == doc["upserted"]
    finally:
        server.stop()


def test_killed_worker_leaves_no_recipe_and_build_is_retried(tmp_path: Path, release_trees: list[Path]) -> None:
    """kill -9 the delta worker mid-build: nothing half-recorded; the restarted worker finishes."""
    server = start_server(tmp_path / "store", config=FAST + "delta_workers = 1\n")
    try:
        key = str(server.store / "keys" / "release.pem")
        server.cas("publish", str(release_trees[0]), "--product", "app", "--version", "1.0.0", "--key", key,
                   "--status", "released")
        server.cas("publish", str(release_trees[1]), "--product", "app", "--version", "1.1.0", "--key", key,
                   "--status", "released")
        with server.client() as http:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                running = http.get("/v1/admin/deltas").json()["running"]
                if running:
                    break
                time.sleep(0.02)
            assert running, "no build was seen running"
            pid = int(running[0]["owner"].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)
            # The server restarts its worker, which re-queues the dead worker's job.
            status = wait_for_builds(http, timeout=120)
            assert status["counts"]["failed"] == 0
            delta = http.get("/v1/products/app/releases/1.1.0/delta", params={"from": "1.0.0"}).json()
            assert delta["complete"] is True
            for recipes in delta["recipes"].values():
                for r in recipes:
                    obj = http.get(f"/v1/objects/{r['object']}")
                    assert obj.status_code == 200 and blake3_bytes(obj.content) == r["object"]
    finally:
        server.stop()


def test_fresh_install_delta_offers_compressed_forms(built) -> None:
    """?from= (empty): every file upserted, each with its compressed form where that is smaller."""
    server, _ = built
    with server.client(None) as http:
        response = http.get("/v1/products/app/releases/1.2.0/delta", params={"from": ""})
        assert response.status_code == 200
        delta = response.json()
        manifest = http.get("/v1/products/app/releases/1.2.0/manifest").json()
    assert delta["from"] == {"version": None, "manifest": None} and delta["removed"] == []
    assert rebuild_target({"files": []}, delta) == manifest["signed"]
    assert delta["complete"] is True
    kinds = [r[0]["kind"] for r in delta["recipes"].values()]
    assert "compressed" in kinds
    assert delta["bytes"]["recipes"] < delta["bytes"]["full"] * 0.8


@pytest.mark.parametrize("path", ["/v1/products/app/releases/1.2.0/manifest",
                                  "/v1/products/app/releases/1.2.0/delta?from=1.0.0"])
def test_documents_go_gzipped_to_whoever_asks(built, path: str) -> None:
    """Manifests and delta documents: gzip (weak ETag, Vary) when accepted, identity otherwise;
    the same bytes once inflated, and a 304 for either ETag."""
    import gzip as gz

    import httpx
    server, _ = built
    with httpx.Client(base_url=server.url, timeout=30) as http:
        plain = http.get(path, headers={"Accept-Encoding": "identity"})
        packed = http.get(path, headers={"Accept-Encoding": "gzip, deflate"})
        refused = http.get(path, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert plain.status_code == packed.status_code == refused.status_code == 200
    assert "content-encoding" not in plain.headers and "content-encoding" not in refused.headers
    assert packed.headers["content-encoding"] == "gzip" and packed.headers["vary"] == "Accept-Encoding"
    assert packed.content == plain.content   # inflated by httpx
    assert packed.headers["etag"] == "W/" + plain.headers["etag"]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("GET", path, headers={"Accept-Encoding": "gzip"}) as response:
            wire = b"".join(response.iter_raw())
        assert len(wire) < len(plain.content) // 2 and gz.decompress(wire) == plain.content
        for etag in (plain.headers["etag"], packed.headers["etag"]):
            again = http.get(path, headers={"Accept-Encoding": "gzip", "If-None-Match": etag})
            assert again.status_code == 304, etag
