"""Bad manifests against a real server: each is refused with a clear 4xx and records nothing."""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from conftest import PUBLISH, Server, start_server, store_snapshot

from cas.signing import generate_key, private_from_pem, sign
from casformat.canonical import canonical_bytes
from deltagen.digests import blake3_bytes

CONTENT = {"bin/app": b"#!/bin/sh\necho app\n", "lib/libx.so.1": b"\x7fELF fake library\x00" * 10,
           "share/doc/README": b"read me\n"}


def entry(path: str, data: bytes, **kw: Any) -> dict[str, Any]:
    return {"path": path, "type": "file", "mode": 0o644, "size": len(data), "blake3": blake3_bytes(data),
            "sha256": hashlib.sha256(data).hexdigest(), **kw}


def good_files() -> list[dict[str, Any]]:
    return [entry("bin/app", CONTENT["bin/app"], mode=0o755),
            entry("lib/libx.so.1", CONTENT["lib/libx.so.1"]),
            {"path": "lib/libx.so", "type": "symlink", "target": "libx.so.1"},
            entry("share/doc/README", CONTENT["share/doc/README"])]


def _path_key(e: Any) -> str:
    return e["path"] if isinstance(e, dict) and isinstance(e.get("path"), str) else ""


def manifest(files: list[dict[str, Any]] | None = None, version: str = "9.0.0", **extra: Any) -> dict[str, Any]:
    """A manifest's ``signed`` part; files sorted by path, as the contract requires."""
    files = good_files() if files is None else files
    if isinstance(files, list):
        files = sorted(files, key=_path_key)
    return {"schema": 1, "product": "app", "version": version, "created": "2026-11-24T20:00:00Z",
            "files": files, **extra}


def release_key(server: Server):
    return private_from_pem((server.store / "keys" / "release.pem").read_bytes())


def body_of(envelope: Any) -> bytes:
    return json.dumps(envelope, ensure_ascii=False).encode()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("bad") / "store", config="max_document_bytes = 65536\n")
    with server.client(PUBLISH) as http:
        for data in CONTENT.values():
            assert http.put(f"/v1/objects/{blake3_bytes(data)}", content=data).status_code == 201
    yield server
    server.stop()


def put(server: Server, body: bytes, product: str = "app", version: str = "9.0.0"):
    with server.client(PUBLISH) as http:
        return http.put(f"/v1/products/{product}/releases/{version}", content=body,
                        headers={"Content-Type": "application/json"})


def refused(server: Server, body: bytes, status: int, code: str, detail: str | None = None,
            product: str = "app", version: str = "9.0.0") -> dict[str, Any]:
    """PUT ``body``; expect ``status``/``code`` and an unchanged store."""
    before = store_snapshot(server.store)
    response = put(server, body, product, version)
    after = store_snapshot(server.store)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if detail is not None:
        assert isinstance(error["detail"], list) and error["detail"], error
        assert any(detail in p for p in error["detail"]), error["detail"]
    assert after == before, "a refused manifest changed the store"
    return error


def signed_body(server: Server, signed: dict[str, Any]) -> bytes:
    return canonical_bytes(sign(signed, [release_key(server)]))


def _mutate(fn: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    files = good_files()
    fn(files)
    return files


APP = CONTENT["bin/app"]
# name -> (files, expected detail substring); all answered 422 invalid_manifest.
BAD_FILES: dict[str, tuple[list[dict[str, Any]], str]] = {
    "dotdot": ([entry("../x", APP)], "'..'"),
    "dotdot-inner": ([entry("a/../../x", APP)], "'..'"),
    "absolute": ([entry("/abs", APP)], "absolute"),
    "empty-segment": ([entry("a//b", APP)], "empty"),
    "trailing-slash": ([entry("a/", APP)], "empty"),
    "dot-segment": ([entry("a/./b", APP)], "'.'"),
    "empty": ([entry("", APP)], "empty path"),
    "nul": ([entry("a\x00b", APP)], "NUL"),
    "backslash": ([entry("a\\b", APP)], "backslash"),
    "control": ([entry("a\nb", APP)], "control"),
    "duplicate": (good_files() + [entry("bin/app", APP)], "duplicate"),
    "file-then-below": ([entry("a", APP), entry("a/b", APP)], "is a file"),
    "below-then-file": ([entry("a/b/c", APP), entry("a/b", APP)], "is a file"),
    "symlink-dotdot": (good_files() + [{"path": "lib/esc", "type": "symlink", "target": "../../etc"}],
                       "outside"),
    "symlink-absolute": (good_files() + [{"path": "passwd", "type": "symlink", "target": "/etc/passwd"}],
                         "absolute"),
    "symlink-chain-escape": (good_files() + [{"path": "d/up", "type": "symlink", "target": ".."},
                                             {"path": "esc", "type": "symlink", "target": "d/up/../etc"}],
                             "through other symlinks"),
    "symlink-empty": ([{"path": "l", "type": "symlink", "target": ""}], "empty"),
    "below-symlink": (good_files() + [entry("lib/libx.so/evil", APP)], "below the symlink"),
    "type-dir": ([{"path": "d", "type": "dir"}], "unknown type"),
    "type-device": ([{"path": "dev/sda", "type": "device", "major": 8, "minor": 0}], "unknown type"),
    "type-missing": ([{"path": "x"}], "unknown type"),
    "extra-field": ([entry("bin/app", APP, owner="root")], "fields must be exactly"),
    "missing-field": ([{k: v for k, v in entry("bin/app", APP).items() if k != "sha256"}],
                      "fields must be exactly"),
    "symlink-extra-field": ([{"path": "l", "type": "symlink", "target": "x", "mode": 511}],
                            "fields must be exactly"),
    "setuid": ([entry("bin/app", APP, mode=0o4755)], "setuid"),
    "mode-string": ([entry("bin/app", APP, mode="0755")], "mode"),
    "size-negative": ([entry("bin/app", APP, size=-1)], "size"),
    "size-bool": ([entry("bin/app", APP, size=True)], "size"),
    "digest-uppercase": ([entry("bin/app", APP, blake3=blake3_bytes(APP).upper())], "hex"),
    "digest-short": ([entry("bin/app", APP, sha256="ab")], "hex"),
    "entry-not-object": (["bin/app"], "must be an object"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_entries_refused(srv: Server, name: str) -> None:
    files, detail = BAD_FILES[name]
    refused(srv, signed_body(srv, manifest(files)), 422, "invalid_manifest", detail)


@pytest.mark.parametrize("signed,detail", [
    (manifest(schema=2), "schema"),
    ({**manifest(), "extra": "x"}, "unknown manifest fields"),
    ({k: v for k, v in manifest().items() if k != "created"}, "created"),
    (manifest(created="2026-11-24 20:00:00"), "created"),
    (manifest(files={"bin/app": {}}), "files must be a list"),
])
def test_bad_manifest_fields_refused(srv: Server, signed: dict[str, Any], detail: str) -> None:
    refused(srv, signed_body(srv, signed), 422, "invalid_manifest", detail)


def test_every_problem_is_listed(srv: Server) -> None:
    files = [entry("../x", APP), entry("a\\b", APP), {"path": "d", "type": "dir"}, entry("ok", APP, mode=0o6755)]
    error = refused(srv, signed_body(srv, manifest(files)), 422, "invalid_manifest")
    assert len(error["detail"]) >= 4, error["detail"]


def test_unsorted_files_refused(srv: Server) -> None:
    signed = manifest()
    signed["files"] = list(reversed(signed["files"]))
    refused(srv, signed_body(srv, signed), 422, "invalid_manifest", "sorted")


def test_floats_refused(srv: Server) -> None:
    envelope = sign(manifest(), [release_key(srv)])
    text = canonical_bytes(envelope).decode()
    with_float = text.replace('"mode":493', '"mode":493.0', 1)
    assert with_float != text
    refused(srv, with_float.encode(), 422, "invalid_document")
    refused(srv, text.replace('"schema":1', '"schema":1e0').encode(), 422, "invalid_document")


def test_duplicate_keys_and_malformed_json_refused(srv: Server) -> None:
    text = canonical_bytes(sign(manifest(), [release_key(srv)])).decode()
    dup = text.replace('"schema":1', '"schema":1,"schema":1', 1)
    refused(srv, dup.encode(), 422, "invalid_document")
    for junk in (b"", b"{", b"not json", text.encode()[:-1], b"\xff\xfe", b"[]", b"null",
                 json.dumps({"signed": manifest()}).encode()):
        refused(srv, junk, 422, "invalid_document")


def test_huge_integer_and_lone_surrogate_refused(srv: Server) -> None:
    text = canonical_bytes(sign(manifest(), [release_key(srv)])).decode()
    huge = text.replace('"schema":1', '"schema":' + "1" * 5000, 1)
    refused(srv, huge.encode(), 422, "invalid_document")
    surrogate = text.replace('"target":"libx.so.1"', '"target":"libx.so.1\\udc80"', 1)
    assert surrogate != text
    refused(srv, surrogate.encode(), 422, "invalid_document")


def test_oversized_body_is_413(srv: Server) -> None:
    big = [entry(f"f/{i:06d}", APP) for i in range(400)]  # well over max_document_bytes = 64 KiB
    body = signed_body(srv, manifest(big))
    assert len(body) > 65536
    refused(srv, body, 413, "too_large")


def test_deep_nesting_refused(srv: Server) -> None:
    nested: Any = "x"
    for _ in range(40):
        nested = {"k": nested}
    envelope = {"signed": manifest(created=nested), "signatures": []}
    refused(srv, json.dumps(envelope).encode(), 422, "invalid_document")
    refused(srv, b"[" * 30_000 + b"]" * 30_000, 422, "invalid_document")


def test_forged_signature_refused(srv: Server) -> None:
    envelope = sign(manifest(), [release_key(srv)])
    raw = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    raw[10] ^= 0x01
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    refused(srv, canonical_bytes(envelope), 422, "bad_signature")


def test_tampered_manifest_refused(srv: Server) -> None:
    envelope = sign(manifest(), [release_key(srv)])
    envelope["signed"]["files"][0]["mode"] = 0o777  # still valid structure; signature no longer matches
    refused(srv, canonical_bytes(envelope), 422, "bad_signature")


def test_untrusted_key_refused(srv: Server) -> None:
    refused(srv, canonical_bytes(sign(manifest(), [generate_key()])), 422, "bad_signature")
    # Not even when claiming the trusted key's id.
    channel_key = private_from_pem((srv.store / "keys" / "channel.pem").read_bytes())
    envelope = sign(manifest(), [channel_key])  # a server key, but not a release key
    refused(srv, canonical_bytes(envelope), 422, "bad_signature")
    forged = sign(manifest(), [generate_key()])
    forged["signatures"][0]["keyid"] = sign(manifest(), [release_key(srv)])["signatures"][0]["keyid"]
    refused(srv, canonical_bytes(forged), 422, "bad_signature")


def test_unsigned_refused(srv: Server) -> None:
    refused(srv, canonical_bytes({"signed": manifest(), "signatures": []}), 422, "bad_signature")
    refused(srv, canonical_bytes({"signed": manifest(), "signatures": [{"keyid": "x", "sig": "y"}]}),
            422, "bad_signature")


def test_missing_object_refused(srv: Server) -> None:
    absent = b"never uploaded"
    files = good_files() + [entry("share/absent", absent)]
    refused(srv, signed_body(srv, manifest(files)), 422, "missing_objects", blake3_bytes(absent))


def test_wrong_size_refused(srv: Server) -> None:
    files = _mutate(lambda f: f[0].update(size=f[0]["size"] + 1))
    refused(srv, signed_body(srv, manifest(files)), 422, "size_mismatch", "bin/app")
    files = _mutate(lambda f: f[0].update(size=0))
    refused(srv, signed_body(srv, manifest(files)), 422, "size_mismatch", "bin/app")


def test_url_must_match_manifest(srv: Server) -> None:
    body = signed_body(srv, manifest(version="9.0.0"))
    refused(srv, body, 422, "invalid_manifest", "not 'app' '9.0.1'", version="9.0.1")
    refused(srv, body, 422, "invalid_manifest", "'other'", product="other")


@pytest.mark.parametrize("version", ["-x", "a b", ".hidden", "x" * 200, "1.0.0~rc", "é"])
def test_bad_version_names_refused(srv: Server, version: str) -> None:
    body = signed_body(srv, {**manifest(), "version": version})
    refused(srv, body, 422, "invalid_path", version=version)


def test_dotdot_version_does_not_route(srv: Server) -> None:
    body = signed_body(srv, {**manifest(), "version": ".."})
    before = store_snapshot(srv.store)
    with srv.client(PUBLISH) as http:
        # Sent raw so the client does not normalise the dot segment away.
        response = http.put("/v1/products/app/releases/%2E%2E", content=body)
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["code"] in ("invalid_path", "not_found", "method_not_allowed")
    assert store_snapshot(srv.store) == before


def test_without_publish_token_refused(srv: Server) -> None:
    body = signed_body(srv, manifest())
    before = store_snapshot(srv.store)
    with srv.client(None) as http:
        assert http.put("/v1/products/app/releases/9.0.0", content=body).status_code == 401
    with srv.client("read-token-t") as http:
        assert http.put("/v1/products/app/releases/9.0.0", content=body).status_code == 403
    assert store_snapshot(srv.store) == before


def test_unknown_product_and_release_reads(srv: Server) -> None:
    with srv.client(None) as http:
        for url in ("/v1/products/nope/releases", "/v1/products/nope/releases/1.0.0/manifest",
                    "/v1/products/nope/releases/1.0.0"):
            response = http.get(url)
            assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_product", url
        # Make "app" exist, then ask for an unknown version of it.
        assert put(srv, signed_body(srv, manifest(version="0.0.1")), version="0.0.1").status_code == 201
        for url in ("/v1/products/app/releases/7.7.7/manifest", "/v1/products/app/releases/7.7.7"):
            response = http.get(url)
            assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_release", url


def test_good_manifest_is_accepted_after_all(srv: Server) -> None:
    """The harness itself: the same building blocks make an acceptable manifest."""
    body = signed_body(srv, manifest(version="9.9.9"))
    assert put(srv, body, version="9.9.9").status_code == 201
    assert put(srv, body, version="9.9.9").status_code == 200
    # A different manifest for the now existing version: 409, nothing changes.
    other = signed_body(srv, manifest(files=good_files()[:2], version="9.9.9"))
    before = store_snapshot(srv.store)
    response = put(srv, other, version="9.9.9")
    assert response.status_code == 409 and response.json()["error"]["code"] == "release_exists"
    assert store_snapshot(srv.store) == before


def test_case_collisions_with_casefold(tmp_path: Path) -> None:
    server = start_server(tmp_path / "store", config="casefold_paths = true\n")
    try:
        with server.client(PUBLISH) as http:
            assert http.put(f"/v1/objects/{blake3_bytes(APP)}", content=APP).status_code == 201
        for files in ([entry("README", APP), entry("readme", APP)],
                      [entry("Bin/app", APP), entry("bin/app", APP)],
                      [entry("straße", APP), entry("STRASSE", APP)],
                      [entry("Docs", APP), entry("docs/a", APP)]):
            refused(server, signed_body(server, manifest(files)), 422, "invalid_manifest")
        ok = signed_body(server, manifest([entry("README", APP), entry("readme.txt", APP)]))
        assert put(server, ok).status_code == 201
    finally:
        server.stop()


def test_case_distinct_paths_allowed_without_casefold(srv: Server) -> None:
    body = signed_body(srv, manifest([entry("README", APP), entry("readme", APP)], version="9.0.2"))
    assert put(srv, body, version="9.0.2").status_code == 201


def test_signature_checked_before_the_tree(srv: Server) -> None:
    """D2: a manifest signed by an unknown key is refused for its signature, before any
    structure or path check runs, however pathological its tree (here: a symlink target of
    thousands of segments, a path leaving the tree, unsorted entries, a bad mode)."""
    files = [{"path": "z/link", "type": "symlink", "target": "/".join(["d"] * 25_000)},
             {"path": "../escape", "type": "symlink", "target": "../../.."},
             entry("a/app", APP, mode=0o7777)]
    signed = {"schema": 1, "product": "app", "version": "9.0.0", "created": "2026-11-24T20:00:00Z",
              "files": files}  # unsorted on purpose: sorting is a structure check too
    body = canonical_bytes(sign(signed, [generate_key()]))
    assert len(body) < 65536
    error = refused(srv, body, 422, "bad_signature")
    assert "signature" in error["message"]
    # Signed by the trusted key, the same tree is refused for its tree.
    refused(srv, signed_body(srv, signed), 422, "invalid_manifest", "escape")


def test_max_document_bytes_may_only_lower_the_manifest_cap(tmp_path: Path) -> None:
    """The server may not take manifests its clients refuse: casformat's MAX_MANIFEST_BYTES
    is the most ``max_document_bytes`` may be (the default), and a store asking for more is
    refused when its config is read."""
    from cas.config import load_config
    from casformat.canonical import MAX_MANIFEST_BYTES
    store = tmp_path / "store"
    store.mkdir()
    assert load_config(store, env={}).max_document_bytes == MAX_MANIFEST_BYTES
    (store / "config.toml").write_text(f"max_document_bytes = {MAX_MANIFEST_BYTES + 1}\n")
    with pytest.raises(ValueError, match="max_document_bytes"):
        load_config(store, env={})
    (store / "config.toml").write_text("max_document_bytes = 65536\n")
    assert load_config(store, env={}).max_document_bytes == 65536
