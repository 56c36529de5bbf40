"""The client against lying servers: expired, replayed, equivocating and forged
channel documents, foreign-signed manifests, mix-and-match, tampered deltas and
patches, and root rotation.  Every refusal leaves ``current`` where it was.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import Server, start_server
from hostile_proxy import FAST_CLIENT, VERSIONS, HostileProxy, wait_for_builds

from cas.keys import load_private_key, root_signed
from cas.metadata import SqliteMetadata
from cas.signing import generate_key, private_to_pem, sign
from casformat.canonical import canonical_bytes, document_digest
from casformat.errors import DocumentError, ExpiredDocument, RollbackAttack, SignatureError
from casformat.times import format_time, utc_now
from client.updater import Updater

CHANNEL = r"^/v1/products/app/channels/stable$"


@dataclass
class World:
    server: Server
    proxy: HostileProxy
    manifests: dict[str, Any]        # version -> envelope
    old_channel: bytes               # the genuine channel document of sequence 1 (-> 1.1.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, release_trees: list[Path]) -> Iterator[World]:
    server = start_server(tmp_path_factory.mktemp("trust") / "store", config="delta_poll_seconds = 0.2\n")
    proxy = HostileProxy(server.url)
    try:
        key = str(server.store / "keys" / "release.pem")
        for version, tree in zip(VERSIONS, release_trees):
            server.cas("publish", str(tree), "--product", "app", "--version", version, "--key", key,
                       "--status", "released")
        with server.client() as http:
            server.cas("channel", "set", "app", "stable", "1.1.0")
            old = http.get("/v1/products/app/channels/stable").content
            server.cas("channel", "set", "app", "stable", "1.2.0")
            wait_for_builds(http)
            manifests = {v: http.get(f"/v1/products/app/releases/{v}/manifest").json() for v in VERSIONS}
        proxy.start()
        yield World(server, proxy, manifests, old)
    finally:
        proxy.stop()
        server.stop()


@pytest.fixture
def proxy(world: World) -> Iterator[HostileProxy]:
    world.proxy.clear()
    world.proxy.reset_log()
    yield world.proxy
    world.proxy.clear()


def at_base(world: World, root: Path, base: str = "1.0.0") -> Updater:
    """A client installed at ``base`` straight from the server, then pointed at the proxy."""
    up = Updater.init(root, [world.server.url], "app", "stable", (world.server.store / "root.json").read_bytes(),
                      client_id="trust-test", **FAST_CLIENT)
    assert up.update(to=base).current == base
    config = json.loads((root / ".cas" / "config.json").read_text())
    config["servers"] = [world.proxy.url]
    (root / ".cas" / "config.json").write_text(json.dumps(config))
    return Updater(root)


def state(root: Path) -> dict[str, Any]:
    return json.loads((root / ".cas" / "state.json").read_text())


def channel_doc(world: World, key: Any = None, **changes: Any) -> bytes:
    """A channel document signed by the server's channel key (or ``key``)."""
    with world.server.client(None) as http:
        real = json.loads(http.get("/v1/products/app/channels/stable").content)["signed"]
    signed = {**real, **changes}
    key = key or load_private_key(world.server.store / "keys" / "channel.pem")
    return canonical_bytes(sign(signed, [key]))


def refused(up: Updater, error: type[Exception], match: str | None = None) -> None:
    root = up.layout.root
    before = up.layout.link("current")
    versions = sorted(p.name for p in (root / "versions").iterdir())
    with pytest.raises(error, match=match):
        up.update()
    assert up.layout.link("current") == before
    assert sorted(p.name for p in (root / "versions").iterdir()) == versions
    assert up.verify()["ok"]


# --------------------------------------------------------------------------- channel documents

def test_genuine_update_through_proxy(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    up = at_base(world, tmp_path / "c")
    result = up.update()
    assert (result.current, result.used_delta) == ("1.2.0", True) and up.verify()["ok"]


def test_expired_channel_document(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    up = at_base(world, tmp_path / "c")
    expired = channel_doc(world, sequence=99, expires=format_time(utc_now() - timedelta(minutes=1)))
    proxy.fault(CHANNEL, "replace", body=expired)
    refused(up, ExpiredDocument)
    assert state(tmp_path / "c")["channel_sequence"] < 99


def test_replayed_older_channel_document(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    up = at_base(world, tmp_path / "c")
    assert up.update().current == "1.2.0"          # accepts sequence 2
    proxy.fault(CHANNEL, "replace", body=world.old_channel)   # the genuine sequence-1 document
    refused(up, RollbackAttack)


def test_same_sequence_different_release_is_refused(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    """Equivocation: a second document with an accepted sequence must be the same document."""
    up = at_base(world, tmp_path / "c")
    assert up.update().current == "1.2.0"
    seq = state(tmp_path / "c")["channel_sequence"]
    other = channel_doc(world, sequence=seq, release="1.1.0",
                        manifest=document_digest(world.manifests["1.1.0"]["signed"]))
    proxy.fault(CHANNEL, "replace", body=other)
    refused(up, RollbackAttack)


def test_channel_signed_by_unknown_key(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    up = at_base(world, tmp_path / "c")
    proxy.fault(CHANNEL, "replace", body=channel_doc(world, key=generate_key(), sequence=50))
    refused(up, SignatureError)
    assert state(tmp_path / "c")["channel_sequence"] < 50


def test_channel_for_another_channel_is_refused(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    up = at_base(world, tmp_path / "c")
    proxy.fault(CHANNEL, "replace", body=channel_doc(world, channel="beta", sequence=60))
    refused(up, DocumentError, "beta")


# --------------------------------------------------------------------------- manifests and deltas

def test_mix_and_match_manifest(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    """The channel names 1.2.0's digest; the mirror serves 1.1.0's (validly signed) manifest for it."""
    up = at_base(world, tmp_path / "c")
    proxy.fault(r"/releases/1\.2\.0/delta", "notfound")
    proxy.fault(r"/releases/1\.2\.0/manifest$", "replace", body=world.manifests["1.1.0"])
    refused(up, DocumentError, "does not match")


def test_channel_digest_not_matching_its_release(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    up = at_base(world, tmp_path / "c")
    forged = channel_doc(world, sequence=70, release="1.1.0",
                         manifest=document_digest(world.manifests["1.2.0"]["signed"]))
    proxy.fault(CHANNEL, "replace", body=forged)
    refused(up, DocumentError, "does not match")


def _rewrite_delta(fn: Any) -> Any:
    def rewrite(body: bytes) -> bytes:
        delta = json.loads(body)
        fn(delta)
        return json.dumps(delta).encode()
    return rewrite


def test_delta_that_does_not_rebuild_the_manifest_falls_back(world: World, proxy: HostileProxy,
                                                              tmp_path: Path) -> None:
    old_app = next(e for e in world.manifests["1.0.0"]["signed"]["files"] if e["path"] == "bin/app")

    def tamper(delta: dict[str, Any]) -> None:
        for entry in delta["upserted"]:
            if entry["path"] == "bin/app":      # keep the old binary: a downgrade of one file
                entry.update(blake3=old_app["blake3"], sha256=old_app["sha256"], size=old_app["size"])

    up = at_base(world, tmp_path / "c")
    proxy.fault(r"/releases/1\.2\.0/delta\?from=1\.0\.0$", "transform", fn=_rewrite_delta(tamper))
    result = up.update()
    assert (result.current, result.used_delta) == ("1.2.0", False)
    assert proxy.seen(r"/releases/1\.2\.0/manifest$")
    assert up.verify()["ok"]
    installed = json.loads((tmp_path / "c" / ".cas" / "manifests" / "1.2.0.json").read_text())
    assert document_digest(installed["signed"]) == document_digest(world.manifests["1.2.0"]["signed"])


def _patch_recipes(world: World) -> dict[str, dict[str, Any]]:
    with world.server.client(None) as http:
        delta = http.get("/v1/products/app/releases/1.2.0/delta", params={"from": "1.0.0"}).json()
    return {target: recipes[0] for target, recipes in delta["recipes"].items() if recipes[0]["kind"] == "patch"}


def test_corrupt_patch_object_uses_next_recipe(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    patches = _patch_recipes(world)
    assert patches
    for recipe in patches.values():
        proxy.fault(rf"^/v1/objects/{recipe['object']}$", "corrupt")
    up = at_base(world, tmp_path / "c")
    result = up.update()
    assert result.current == "1.2.0" and up.verify()["ok"]
    for _target, recipe in patches.items():
        assert proxy.seen(rf"^/v1/objects/{recipe['object']}$")
    # Every patched target came from another recipe instead.
    fetched = {s.path.rsplit("/", 1)[1] for s in proxy.seen(r"^/v1/objects/") if s.status == 200 and not s.fault}
    with world.server.client(None) as http:
        delta = http.get("/v1/products/app/releases/1.2.0/delta", params={"from": "1.0.0"}).json()
    for target in patches:
        assert fetched & {r["object"] for r in delta["recipes"][target][1:]}


def test_patch_with_wrong_output_uses_next_recipe(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    """Recipes are unsigned: swap the patches of two targets (each object is intact)."""
    patches = _patch_recipes(world)
    assert len(patches) >= 2, "the fixture releases must give at least two patch recipes"
    a, b = list(patches)[:2]

    def swap(delta: dict[str, Any]) -> None:
        ra, rb = delta["recipes"][a][0], delta["recipes"][b][0]
        for key in ("object", "size", "base", "algorithm"):
            ra[key], rb[key] = rb[key], ra[key]

    up = at_base(world, tmp_path / "c")
    proxy.fault(r"/releases/1\.2\.0/delta\?from=1\.0\.0$", "transform", fn=_rewrite_delta(swap))
    result = up.update()
    assert (result.current, result.used_delta) == ("1.2.0", True) and up.verify()["ok"]


# --------------------------------------------------------------------------- foreign release key

def test_manifest_signed_by_unknown_key(tmp_path: Path, release_trees: list[Path]) -> None:
    server = start_server(tmp_path / "store", config="enforce_signatures = false\ndelta_builder = false\n")
    try:
        good = str(server.store / "keys" / "release.pem")
        foreign = tmp_path / "foreign.pem"
        foreign.write_bytes(private_to_pem(generate_key()))
        server.cas("publish", str(release_trees[0]), "--product", "app", "--version", "1.0.0", "--key", good,
                   "--status", "released", "--channel", "stable")
        server.cas("publish", str(release_trees[1]), "--product", "app", "--version", "1.1.0", "--key",
                   str(foreign), "--status", "released")
        root = tmp_path / "c"
        up = Updater.init(root, [server.url], "app", "stable", (server.store / "root.json").read_bytes(),
                          **FAST_CLIENT)
        assert up.update().current == "1.0.0"
        server.cas("channel", "set", "app", "stable", "1.1.0")
        refused(up, SignatureError)
    finally:
        server.stop()


# --------------------------------------------------------------------------- root rotation

def test_root_rotation(tmp_path: Path, release_trees: list[Path]) -> None:
    server = start_server(tmp_path / "store", config="delta_builder = false\n")
    proxy = HostileProxy(server.url).start()
    try:
        store = server.store
        server.cas("publish", str(release_trees[0]), "--product", "app", "--version", "1.0.0", "--key",
                   str(store / "keys" / "release.pem"), "--status", "released", "--channel", "stable")
        keys = {role: load_private_key(store / "keys" / f"{role}.pem") for role in ("root", "release", "channel")}
        root = tmp_path / "c"
        up = Updater.init(root, [proxy.url], "app", "stable", (store / "root.json").read_bytes(), **FAST_CLIENT)
        assert up.update().current == "1.0.0"

        # v2: a new root key, signed by the v1 root key and the new one.
        new_root = generate_key()
        v2 = sign(root_signed(2, {"root": [new_root], "release": [keys["release"]],
                                  "channel": [keys["channel"]]}), [keys["root"], new_root])
        SqliteMetadata(store / "meta.db").put_root(2, canonical_bytes(v2))
        assert up.update().outcome == "up_to_date"
        assert state(root)["root_version"] == 2
        assert json.loads((root / ".cas" / "root.json").read_text())["signed"]["version"] == 2

        newer = generate_key()
        bad = {
            # v3 signed only by its own new key, not by v2's root key
            "unsigned by old": sign(root_signed(3, {"root": [newer], "release": [keys["release"]],
                                                    "channel": [keys["channel"]]}), [newer]),
            # v3 signed by v2's root key but not by its own new root key
            "unsigned by new": sign(root_signed(3, {"root": [newer], "release": [keys["release"]],
                                                    "channel": [keys["channel"]]}), [new_root]),
            # v4 served as the successor of v2 (skipping v3), properly signed
            "skips": sign(root_signed(4, {"root": [new_root], "release": [keys["release"]],
                                          "channel": [keys["channel"]]}), [new_root]),
            # v1 again (rollback of the root)
            "replayed v1": json.loads((store / "root.json").read_bytes()),
        }
        for name, envelope in bad.items():
            proxy.clear()
            proxy.fault(r"^/v1/roots/3\.json$", "replace", body=envelope)
            with pytest.raises(DocumentError):
                up.update()
            assert state(root)["root_version"] == 2, name
            assert up.layout.link("current") == "1.0.0"
        # Without the bad v3 the client goes on normally under v2.
        proxy.clear()
        assert up.update().outcome == "up_to_date"
    finally:
        proxy.stop()
        server.stop()


# --------------------------------------------------------------------------- unsigned recipes (D4, D5)

def _app_entry(world: World, version: str = "1.2.0") -> dict[str, Any]:
    return next(e for e in world.manifests[version]["signed"]["files"] if e["path"] == "bin/app")


def test_oversized_raw_recipe_and_endless_body_are_capped_by_the_signed_size(world: World, proxy: HostileProxy,
                                                                             tmp_path: Path) -> None:
    """D4: a mirror claims bin/app's raw object has 30 MB and serves an endless body: the
    client fetches at most the signed size (the recipe is dropped) and installs correctly."""
    app = _app_entry(world)

    def inflate(delta: dict[str, Any]) -> None:
        delta["recipes"][app["blake3"]] = [{"kind": "raw", "object": app["blake3"], "size": 30_000_000}]

    up = at_base(world, tmp_path / "c")
    proxy.fault(r"/releases/1\.2\.0/delta\?from=1\.0\.0$", "transform", fn=_rewrite_delta(inflate))
    proxy.fault(rf"^/v1/objects/{app['blake3']}$", "endless", times=1, max_seconds=20)
    result = up.update()
    assert (result.current, result.used_delta) == ("1.2.0", True) and up.verify()["ok"]
    endless = proxy.seen(rf"^/v1/objects/{app['blake3']}$")[0]
    assert endless.fault == "endless"
    # What the client read is bounded by the signed size (the proxy may have pushed a few
    # MB more into socket buffers before it noticed the hang-up).
    assert result.bytes_downloaded <= result.bytes_full + app["size"]
    assert endless.sent <= app["size"] + (8 << 20)


@pytest.mark.parametrize("garbage", ["size_not_a_number", "recipes_not_a_list", "member_not_an_object",
                                     "recipes_not_an_object"])
def test_malformed_recipes_are_skipped_and_the_update_falls_back(world: World, proxy: HostileProxy, tmp_path: Path,
                                                                 garbage: str) -> None:
    """D5: malformed unsigned recipes are dropped (logged), never a traceback."""
    app = _app_entry(world)
    digests = [e["blake3"] for e in world.manifests["1.2.0"]["signed"]["files"] if e["type"] == "file"]

    def spoil(delta: dict[str, Any]) -> None:
        recipes = delta["recipes"]
        if garbage == "size_not_a_number":
            for offers in recipes.values():
                for recipe in offers:
                    recipe["size"] = "abc"
        elif garbage == "recipes_not_a_list":
            recipes[app["blake3"]] = {"kind": "raw", "object": app["blake3"], "size": app["size"]}
        elif garbage == "member_not_an_object":
            recipes[app["blake3"]] = [{"kind": "bundle", "algorithm": "zstd", "object": app["blake3"],
                                       "size": 10, "bases": [], "members": ["bin/app", 7]}]
            recipes[digests[0]] = [{"kind": "bundle", "algorithm": "zstd", "object": app["blake3"],
                                    "size": 10, "bases": [], "members": [None]}]
        else:
            delta["recipes"] = ["not", "an", "object"]

    logged: list[str] = []
    up = at_base(world, tmp_path / "c")
    up.log = logged.append
    proxy.fault(r"/releases/1\.2\.0/delta\?from=1\.0\.0$", "transform", fn=_rewrite_delta(spoil))
    result = up.update()
    assert result.current == "1.2.0" and up.verify()["ok"]
    assert any("recipe" in line for line in logged), logged


def test_garbage_from_a_mirror_fails_over_to_the_next_server(world: World, proxy: HostileProxy,
                                                             tmp_path: Path) -> None:
    """D5: a mirror answering garbage documents makes the client try the next server."""
    at_base(world, tmp_path / "c")
    config = json.loads((tmp_path / "c" / ".cas" / "config.json").read_text())
    config["servers"] = [world.proxy.url, world.server.url]
    (tmp_path / "c" / ".cas" / "config.json").write_text(json.dumps(config))
    proxy.fault(CHANNEL, "replace", body=b"{\"signed\": garbage")
    proxy.fault(r"/releases/1\.2\.0/(manifest|delta)", "replace", body={"signed": {"files": "nope"}})
    result = Updater(tmp_path / "c").update()
    assert result.current == "1.2.0" and Updater(tmp_path / "c").verify()["ok"]
    assert proxy.seen(CHANNEL)


# --------------------------------------------------------------------------- fast-forward recovery (D8)

def test_fast_forward_by_a_stolen_channel_key_is_recovered_by_rotating_it(tmp_path: Path,
                                                                          release_trees: list[Path]) -> None:
    """D8: a stolen channel key signs sequence 10**12; the client accepts it (validly signed)
    and is stuck; the operator rotates the channel key through a new root and re-signs the
    channel; the client forgets the far-future sequence with the rotation and updates again."""
    server = start_server(tmp_path / "store", config="delta_builder = false\n")
    proxy = HostileProxy(server.url).start()
    try:
        store = server.store
        key = str(store / "keys" / "release.pem")
        server.cas("publish", str(release_trees[0]), "--product", "app", "--version", "1.0.0", "--key", key,
                   "--status", "released", "--channel", "stable")
        server.cas("publish", str(release_trees[1]), "--product", "app", "--version", "1.1.0", "--key", key,
                   "--status", "released")
        root = tmp_path / "c"
        up = Updater.init(root, [proxy.url], "app", "stable", (store / "root.json").read_bytes(), **FAST_CLIENT)
        assert up.update().current == "1.0.0"

        stolen = load_private_key(store / "keys" / "channel.pem")
        with server.client(None) as http:
            real = json.loads(http.get("/v1/products/app/channels/stable").content)["signed"]
        proxy.fault(CHANNEL, "replace", body=canonical_bytes(sign({**real, "sequence": 10**12}, [stolen])))
        assert up.update().outcome == "up_to_date"
        assert state(root)["channel_sequence"] == 10**12
        proxy.clear()

        # The operator rotates the channel key (root 2) and re-signs the channel.
        server.cas("keys", "rotate", "--role", "channel", "--store", str(store))
        server.cas("channel", "set", "app", "stable", "1.1.0")
        logged: list[str] = []
        result = Updater(root, log=logged.append).update()
        assert result.current == "1.1.0" and up.verify()["ok"]
        assert state(root)["root_version"] == 2
        assert state(root)["channel_sequence"] < 10**12
        assert any("forgotten" in line for line in logged), logged
        # The stolen key's far-future document is now refused (signed by a revoked key).
        proxy.fault(CHANNEL, "replace", body=canonical_bytes(sign({**real, "sequence": 10**12 + 1}, [stolen])))
        refused(Updater(root), SignatureError)
    finally:
        proxy.stop()
        server.stop()
