"""Publish release trees to a real server and read them back over HTTP."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
from conftest import ADMIN, PUBLISH, Server, start_server

from casformat.canonical import document_digest
from casformat.roots import verify_first_root
from casformat.signatures import verify
from deltagen.digests import blake3_file


@pytest.fixture
def server(tmp_path: Path, metadata_url: str) -> Iterator[Server]:
    """Each test here runs against every metadata backend (the embedded SQLite, PostgreSQL)."""
    config = f'metadata_url = "{metadata_url}"\n' if metadata_url.startswith("postgresql") else ""
    srv = start_server(tmp_path / "store", config=config)
    yield srv
    srv.stop()


def publish(server: Server, tree: Path, version: str, *extra: str):
    key = server.store / "keys" / "release.pem"
    return server.cas("publish", str(tree), "--product", "app", "--version", version, "--key", str(key),
                      "--json", *extra)


def test_publish_remote_dedups_and_serves_signed_manifest(server: Server, release_trees: list[Path]) -> None:
    first = json.loads(publish(server, release_trees[0], "1.0.0").stdout)
    assert first["created"] and first["uploaded_objects"] > 0
    second = json.loads(publish(server, release_trees[1], "1.1.0").stdout)
    # Unchanged files of 1.1.0 are not uploaded again.
    assert 0 < second["uploaded_objects"] < second["files"]
    assert second["uploaded_bytes"] < second["logical_bytes"]

    with server.client(None) as http:
        root = verify_first_root(http.get("/v1/root.json").json())
        response = http.get("/v1/products/app/releases/1.1.0/manifest")
        assert response.status_code == 200
        envelope = response.json()
        signed = verify(envelope, root.role("release"))
        # weak when gzipped (httpx asks for gzip): W/"<digest>"
        assert response.headers["etag"].removeprefix("W/") == f'"{document_digest(signed)}"'
        assert response.headers["cache-control"] == "no-cache"  # draft: not immutable yet
        by_path = {e["path"]: e for e in signed["files"]}
        app = by_path["bin/app"]
        assert app["blake3"] == blake3_file(release_trees[1] / "bin" / "app")
        assert app["mode"] == 0o755
        assert by_path["lib/libfoo.so"] == {"path": "lib/libfoo.so", "type": "symlink", "target": "libfoo.so.1"}
        body = http.get(f"/v1/objects/{app['blake3']}").content
        assert body == (release_trees[1] / "bin" / "app").read_bytes()


def test_republish_identical_is_200_and_different_is_409(server: Server, release_trees: list[Path]) -> None:
    publish(server, release_trees[0], "1.0.0")
    again = json.loads(publish(server, release_trees[0], "1.0.0").stdout)
    assert again["created"] is False and again["uploaded_objects"] == 0
    clash = publish_fail = server.cas("publish", str(release_trees[1]), "--product", "app", "--version",
                                      "1.0.0", "--key", str(server.store / "keys" / "release.pem"), check=False)
    assert clash.returncode == 1
    assert "exists with different content" in publish_fail.stderr


def test_lifecycle_and_channel(server: Server, release_trees: list[Path]) -> None:
    publish(server, release_trees[0], "1.0.0", "--status", "released", "--channel", "stable")
    with server.client(None) as http:
        doc = http.get("/v1/products/app/channels/stable")
        assert doc.status_code == 200
        etag = doc.headers["etag"]
        signed = doc.json()["signed"]
        assert signed["sequence"] == 1 and signed["release"] == "1.0.0" and signed["rollout"] is None
        assert http.get("/v1/products/app/channels/stable", headers={"If-None-Match": etag}).status_code == 304
        manifest = http.get("/v1/products/app/releases/1.0.0/manifest")
        assert manifest.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert signed["manifest"] == manifest.headers["etag"].removeprefix("W/").strip('"')
    # A draft cannot go on a channel that takes released builds.
    publish(server, release_trees[1], "1.1.0")
    refused = server.cas("channel", "set", "app", "stable", "1.1.0", check=False)
    assert refused.returncode == 1 and "draft" in refused.stderr
    # Illegal move: draft -> released directly.
    illegal = server.cas("release", "status", "app", "1.1.0", "released", check=False)
    assert illegal.returncode == 1 and "cannot move" in illegal.stderr
    server.cas("release", "status", "app", "1.1.0", "testing")
    server.cas("release", "status", "app", "1.1.0", "released")
    moved = json.loads(server.cas("channel", "set", "app", "stable", "1.1.0", "--json").stdout)
    assert moved["sequence"] == 2
    # Deprecating the release a channel points at is refused.
    refused = server.cas("release", "status", "app", "1.1.0", "deprecated", check=False)
    assert refused.returncode == 1 and "point at" in refused.stderr
    history = json.loads(server.cas("release", "history", "app", "1.1.0", "--json").stdout)["history"]
    assert [h["to"] for h in history] == ["draft", "testing", "released"]
    assert all(h["actor"] == "token:admin" for h in history[1:])


def test_publish_token_cannot_set_channels(server: Server, release_trees: list[Path]) -> None:
    publish(server, release_trees[0], "1.0.0", "--status", "released")
    with server.client(PUBLISH) as http:
        response = http.put("/v1/products/app/channels/stable", json={"release": "1.0.0"})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "insufficient_scope"


def test_move_channel_to_needs_admin_and_the_same_product(server: Server, release_trees: list[Path]) -> None:
    """D1: deprecating with ``move_channel_to`` re-points channels, an admin act; a publish token
    gets 403 and nothing moves; a release of another product is never a target."""
    publish(server, release_trees[0], "1.0.0", "--status", "released")
    publish(server, release_trees[1], "1.1.0", "--status", "released", "--channel", "stable")
    key = server.store / "keys" / "release.pem"
    server.cas("publish", str(release_trees[2]), "--product", "other", "--version", "9.0.0", "--key", str(key),
               "--status", "released")
    body = {"status": "deprecated", "move_channel_to": "1.0.0"}
    with server.client(PUBLISH) as http:
        refused = http.post("/v1/products/app/releases/1.1.0/status", json=body)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "insufficient_scope"
        signed = http.get("/v1/products/app/channels/stable").json()["signed"]
        assert signed["release"] == "1.1.0" and signed["sequence"] == 1
        assert http.get("/v1/products/app/releases/1.1.0").json()["status"] == "released"
        # Plain lifecycle moves stay with the publish token.
        assert http.post("/v1/products/app/releases/1.0.0/status",
                         json={"status": "deprecated"}).status_code == 200
    with server.client(ADMIN) as http:
        across = http.post("/v1/products/app/releases/1.1.0/status",
                           json={"status": "deprecated", "move_channel_to": "9.0.0"})
        assert across.status_code == 404 and across.json()["error"]["code"] == "unknown_release"
        assert http.get("/v1/products/app/channels/stable").json()["signed"]["release"] == "1.1.0"
    publish(server, release_trees[2], "1.2.0", "--status", "released")
    with server.client(ADMIN) as http:
        moved = http.post("/v1/products/app/releases/1.1.0/status",
                          json={"status": "deprecated", "move_channel_to": "1.2.0"})
        assert moved.status_code == 200, moved.text
        assert moved.json()["status"] == "deprecated"
        signed = http.get("/v1/products/app/channels/stable").json()["signed"]
        assert signed["release"] == "1.2.0" and signed["sequence"] == 2
