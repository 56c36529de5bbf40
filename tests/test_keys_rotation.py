"""Key rotation end to end: `cas keys rotate` on a real server, clients walk the root chain."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from conftest import Server

from casformat.canonical import parse_json
from casformat.errors import DocumentError
from casformat.roots import verify_first_root, verify_next_root
from client.updater import Updater


def publish(server: Server, tree: Path, version: str, *keys: str, check: bool = True):
    key_args = [a for k in keys for a in ("--key", k)] or ["--key", str(server.store / "keys" / "release.pem")]
    return server.cas("publish", str(tree), "--product", "app", "--version", version, *key_args,
                      "--status", "released", check=check)


def rotate(server: Server, *args: str) -> dict:
    # Rotation is an offline operation on the store (root keys never leave it).
    return json.loads(server.cas("keys", "rotate", "--store", str(server.store), "--json", *args).stdout)


def client(tmp_path: Path, server: Server, root_doc: bytes) -> Updater:
    Updater.init(tmp_path / "client", [server.url], "app", "stable", root_doc)
    return Updater(tmp_path / "client")


def test_root_chain_is_served_and_verifies(server: Server, release_trees: list[Path]) -> None:
    rotate(server, "--role", "channel")
    rotate(server, "--role", "release", "--keep-old")
    rotate(server, "--role", "root")
    with httpx.Client(base_url=server.url) as http:
        root = verify_first_root(http.get("/v1/roots/1.json").json())
        for n in (2, 3, 4):
            root = verify_next_root(root, http.get(f"/v1/roots/{n}.json").json())
        assert root.version == 4
        assert http.get("/v1/root.json").json()["signed"]["version"] == 4
        assert http.get("/v1/roots/5.json").status_code == 404
        # A chain that skips a version is refused.
        first = verify_first_root(http.get("/v1/roots/1.json").json())
        with pytest.raises(DocumentError):
            verify_next_root(first, http.get("/v1/roots/3.json").json())


def test_client_follows_channel_key_rotation(server: Server, release_trees: list[Path], tmp_path: Path) -> None:
    root_v1 = (server.store / "root.json").read_bytes()
    publish(server, release_trees[0], "1.0.0")
    server.cas("channel", "set", "app", "stable", "1.0.0")
    updater = client(tmp_path, server, root_v1)
    assert updater.update().outcome == "updated"
    old_channel = server.store / "keys" / "channel.pem"
    old_bytes = old_channel.read_bytes()
    rotate(server, "--role", "channel")  # re-signs every channel document with the new key
    assert old_channel.read_bytes() != old_bytes
    publish(server, release_trees[1], "1.1.0")
    server.cas("channel", "set", "app", "stable", "1.1.0")
    result = updater.update()
    assert result.outcome == "updated" and result.to_version == "1.1.0"
    state = json.loads((tmp_path / "client" / ".cas" / "state.json").read_text())
    assert state["root_version"] == 2


def test_revoked_release_key_invalidates_its_manifests(server: Server, release_trees: list[Path],
                                                       tmp_path: Path) -> None:
    root_v1 = (server.store / "root.json").read_bytes()
    publish(server, release_trees[0], "1.0.0")
    server.cas("channel", "set", "app", "stable", "1.0.0")
    rotate(server, "--role", "release")  # revoke: the old key is no longer trusted
    updater = client(tmp_path, server, root_v1)
    with pytest.raises(DocumentError, match="signature"):
        updater.update()
    assert updater.layout.link("current") is None
    assert not any((tmp_path / "client" / "versions").iterdir())
    # The server refuses new manifests signed by the revoked key too.
    retired = next((server.store / "keys" / "retired").glob("release*.pem"))
    refused = publish(server, release_trees[1], "1.1.0", str(retired), check=False)
    assert refused.returncode == 1 and "signature" in refused.stderr
    # A release signed with the new key installs.
    publish(server, release_trees[1], "1.1.0")
    server.cas("channel", "set", "app", "stable", "1.1.0")
    assert updater.update().to_version == "1.1.0"


def test_release_threshold_needs_enough_keys(server: Server, release_trees: list[Path]) -> None:
    rotate(server, "--role", "release", "--count", "2", "--threshold", "2")
    keys = server.store / "keys"
    one = publish(server, release_trees[0], "1.0.0", str(keys / "release.pem"), check=False)
    assert one.returncode == 1 and "2 required" in one.stderr
    publish(server, release_trees[0], "1.0.0", str(keys / "release.pem"), str(keys / "release-1.pem"))
    with httpx.Client(base_url=server.url) as http:
        manifest = http.get("/v1/products/app/releases/1.0.0/manifest").json()
    assert len(manifest["signatures"]) == 2


def test_rotated_root_refuses_lowered_threshold_without_old_keys(server: Server) -> None:
    """A forged v2 signed only by a new key (not the v1 root key) is refused by clients."""
    from cas.keys import root_signed
    from cas.signing import generate_key, sign
    from casformat.canonical import canonical_bytes
    v1 = verify_first_root(parse_json((server.store / "root.json").read_bytes()))
    intruder = generate_key()
    forged = sign(root_signed(2, {"root": [intruder], "release": [intruder], "channel": [intruder]}), [intruder])
    with pytest.raises(DocumentError, match="not signed by the v1 root keys"):
        verify_next_root(v1, parse_json(canonical_bytes(forged)))


def test_rotation_without_keep_old_then_resign(server: Server, release_trees: list[Path], tmp_path: Path) -> None:
    """A release-key rotation without --keep-old strands existing releases: the server refuses
    to point a channel (or start a rollout) at one no client would accept, naming the fix;
    `cas release resign` re-signs it (same manifest digest) and a real client installs it."""
    root_v1 = (server.store / "root.json").read_bytes()
    publish(server, release_trees[0], "1.0.0")
    publish(server, release_trees[1], "1.1.0")
    server.cas("channel", "set", "app", "stable", "1.0.0")
    updater = client(tmp_path, server, root_v1)
    assert updater.update().to_version == "1.0.0"
    with httpx.Client(base_url=server.url) as http:
        before = http.get("/v1/products/app/releases/1.1.0/manifest")
    rotate(server, "--role", "release")                      # revokes the key 1.0.0 and 1.1.0 carry
    refused = server.cas("channel", "set", "app", "stable", "1.1.0", check=False)
    assert refused.returncode == 1
    assert "cas release resign app 1.1.0" in refused.stderr and "root version 2" in refused.stderr
    with server.client() as http:
        answer = http.post("/v1/products/app/channels/stable/rollout", json={"release": "1.1.0"})
        assert answer.status_code == 409 and answer.json()["error"]["code"] == "release_untrusted"
        assert http.get("/v1/products/app/channels/stable").json()["signed"]["release"] == "1.0.0"
    resigned = json.loads(server.cas("release", "resign", "app", "1.1.0", "--store", str(server.store),
                                     "--json").stdout)["resigned"]
    assert [(r["version"], r["manifest"]) for r in resigned] == [("1.1.0", before.headers["etag"].removeprefix("W/").strip('"'))]
    with httpx.Client(base_url=server.url) as http:
        after = http.get("/v1/products/app/releases/1.1.0/manifest")
    assert after.headers["etag"] == before.headers["etag"]               # the digest does not change
    assert after.json()["signed"] == before.json()["signed"]
    assert after.json()["signatures"] != before.json()["signatures"]
    server.cas("channel", "set", "app", "stable", "1.1.0")
    result = updater.update()
    assert result.outcome == "updated" and result.to_version == "1.1.0"
    # --all re-signs what is left (1.0.0) and nothing twice.
    rest = json.loads(server.cas("release", "resign", "--all", "--store", str(server.store), "--json").stdout)
    assert [r["version"] for r in rest["resigned"]] == ["1.0.0"]
    again = json.loads(server.cas("release", "resign", "--all", "--store", str(server.store), "--json").stdout)
    assert again["resigned"] == []
