"""Mirrors: `cas mirror sync` from a real upstream, a read-only `cas serve` mirror, and the
static export served by a real nginx -- with real client updates through both."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from conftest import Server, free_port, run_cas, start_server
from hostile_proxy import FAST_CLIENT, HostileProxy, wait_for_builds
from nginx_fixture import Nginx, start_nginx

from client.updater import Updater
from deltagen.digests import blake3_bytes

VERSIONS = ["1.0.0", "1.1.0", "1.2.0"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, release_trees: list[Path]) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("upstream") / "store", config="delta_poll_seconds = 0.2\n")
    key = str(server.store / "keys" / "release.pem")
    for version, tree in zip(VERSIONS, release_trees):
        server.cas("publish", str(tree), "--product", "app", "--version", version, "--key", key,
                   "--status", "released")
    with server.client() as http:
        wait_for_builds(http)
    yield server
    server.stop()


def sync(store: Path, upstream: str, root: Path | None = None, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    args = ["mirror", "sync", "--upstream", upstream, "--store", str(store), "--json"]
    if root is not None:
        args += ["--root", str(root)]
    return run_cas(*args, check=check)


def stats(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return json.loads(proc.stdout)


def set_channel(upstream: Server, channel: str, version: str) -> None:
    upstream.cas("channel", "set", "app", channel, version)


def test_sync_twice_copies_everything_then_nothing(upstream: Server, tmp_path: Path) -> None:
    set_channel(upstream, "stable", "1.1.0")
    mirror = tmp_path / "mirror"
    first = stats(sync(mirror, upstream.url, upstream.store / "root.json"))
    assert first["objects_fetched"] > 0 and first["documents_updated"] > 0 and first["warnings"] == []

    # Every document byte-identical to what the upstream serves.
    docs = mirror / "mirror" / "docs"
    with upstream.client(None) as http:
        for rel, url in [("v1/root.json", "/v1/root.json"), ("v1/roots/1.json", "/v1/roots/1.json"),
                         ("v1/products/app/channels/stable", "/v1/products/app/channels/stable"),
                         *[(f"v1/products/app/releases/{v}/manifest", f"/v1/products/app/releases/{v}/manifest")
                           for v in VERSIONS],
                         ("v1/products/app/releases/1.2.0/delta/from-1.1.0",
                          "/v1/products/app/releases/1.2.0/delta?from=1.1.0"),
                         ("v1/products/app/releases/1.2.0/delta/from-1.0.0",
                          "/v1/products/app/releases/1.2.0/delta?from=1.0.0")]:
            assert (docs / rel).read_bytes() == http.get(url).content, rel
        # Every object the manifests and the deltas name is in the mirror's store.
        delta = http.get("/v1/products/app/releases/1.2.0/delta", params={"from": "1.1.0"}).json()
        recipe_objects = {r["object"] for rs in delta["recipes"].values() for r in rs}
        assert any(r["kind"] == "patch" for rs in delta["recipes"].values() for r in rs)
        files = {e["blake3"] for v in VERSIONS
                 for e in http.get(f"/v1/products/app/releases/{v}/manifest").json()["signed"]["files"]
                 if e["type"] == "file"}
    stored = {p.parent.name + p.name for p in (mirror / "objects").glob("*/*")}
    assert files | recipe_objects <= stored

    second = stats(sync(mirror, upstream.url))
    assert second["objects_fetched"] == 0 and second["documents_updated"] == 0
    # Immutable documents are not asked for again, the others answer 304; only the two
    # listings (which the upstream serves without an ETag) come again, and are kept as they were.
    listings = sum(len((docs / rel).read_bytes()) for rel in ["v1/products/index.json",
                                                               "v1/products/app/releases/index.json"])
    assert second["bytes_downloaded"] == listings
    assert second["requests"] < first["requests"] / 2


def test_sync_without_a_root_trusts_on_first_use_with_a_warning(upstream: Server, tmp_path: Path) -> None:
    proc = sync(tmp_path / "mirror", upstream.url)
    assert "trusting the upstream's root chain on first use" in proc.stderr
    assert stats(proc)["warnings"]


def test_sync_refuses_a_root_it_was_not_given(upstream: Server, tmp_path: Path) -> None:
    other = tmp_path / "other"
    run_cas("keys", "init", "--store", str(other))
    proc = sync(tmp_path / "mirror", upstream.url, other / "root.json", check=False)
    assert proc.returncode != 0 and "not the trusted one" in proc.stderr


@pytest.mark.parametrize("pattern,kind,params,message", [
    (r"^/v1/objects/", "corrupt", {}, "hashes to"),
    (r"/channels/", "transform", {"fn": lambda b: b.replace(b'"sequence":', b'"sequence":1')}, "channel"),
    (r"/releases/1\.1\.0/manifest", "transform", {"fn": lambda b: b.replace(b'"mode":420', b'"mode":511')},
     "manifest"),
    (r"/delta\?from=1\.", "transform",
     {"fn": lambda b: re.sub(rb'"to":\{"created":"[^"]*"', b'"to":{"created":"1999-01-01T00:00:00Z"', b)}, "delta"),
])
def test_sync_refuses_tampered_upstream_data(upstream: Server, tmp_path: Path, pattern: str, kind: str,
                                             params: dict[str, Any], message: str) -> None:
    set_channel(upstream, "stable", "1.1.0")
    proxy = HostileProxy(upstream.url).start()
    try:
        proxy.fault(pattern, kind, **params)
        mirror = tmp_path / "mirror"
        proc = sync(mirror, proxy.url, upstream.store / "root.json", check=False)
        assert proc.returncode != 0, (proc.stdout, [(x.path, x.status, x.fault) for x in proxy.seen(pattern)])
        assert "refused" in proc.stderr and message in proc.stderr, proc.stderr
        assert proxy.seen(pattern)
    finally:
        proxy.stop()
    # Nothing that failed verification was kept: a clean re-run completes the mirror.
    docs = mirror / "mirror" / "docs"
    with upstream.client(None) as http:
        for path in docs.rglob("*"):
            if path.is_file() and "delta" not in path.parts:
                rel = path.relative_to(docs).as_posix()
                url = "/" + rel.replace("/index.json", "")
                assert path.read_bytes() == http.get(url).content, rel
    assert stats(sync(mirror, upstream.url))["objects_fetched"] >= 0


def _update_twice(upstream: Server, channel: str, server_url: str, client_root: Path,
                  refresh: Any) -> None:
    """Fresh install of 1.1.0, then an update to 1.2.0 over a manifest delta, via ``server_url``."""
    set_channel(upstream, channel, "1.1.0")
    refresh()
    Updater.init(client_root, [server_url], "app", channel, (upstream.store / "root.json").read_bytes(),
                 **FAST_CLIENT)
    first = Updater(client_root).update()
    assert (first.outcome, first.to_version) == ("updated", "1.1.0"), first.steps
    set_channel(upstream, channel, "1.2.0")
    refresh()
    second = Updater(client_root).update()
    assert (second.outcome, second.to_version) == ("updated", "1.2.0"), second.steps
    assert second.used_delta and second.bytes_downloaded < second.bytes_full
    assert os.readlink(client_root / "current").endswith("1.2.0")


def test_client_updates_through_a_mirror_server(upstream: Server, tmp_path: Path) -> None:
    mirror_store = tmp_path / "mirror"
    sync(mirror_store, upstream.url, upstream.store / "root.json")
    mirror = start_server(mirror_store, config=f'mirror_of = "{upstream.url}"\n', init_keys=False)
    try:
        _update_twice(upstream, "mirrored", mirror.url, tmp_path / "client",
                      lambda: sync(mirror_store, upstream.url))
        with mirror.client(None) as m, upstream.client(None) as u:
            for url in ["/v1/products/app/channels/mirrored", "/v1/products/app/releases/1.2.0/manifest",
                        "/v1/roots/1.json"]:
                mine, theirs = m.get(url), u.get(url)
                assert mine.content == theirs.content and mine.headers["etag"] == theirs.headers["etag"], url
                assert m.get(url, headers={"If-None-Match": mine.headers["etag"]}).status_code == 304
            delta_url = "/v1/products/app/releases/1.2.0/delta?from=1.1.0"
            assert m.get(delta_url).content == u.get(delta_url).content
            assert m.get("/v1/products/app/releases/1.2.0/delta?from=0.0.1").status_code == 404
            digest = m.get("/v1/products/app/releases/1.2.0/manifest").json()["signed"]["files"][0]["blake3"]
            assert blake3_bytes(m.get(f"/v1/objects/{digest}").content) == digest
            ranged = m.get(f"/v1/objects/{digest}", headers={"Range": "bytes=0-0"})
            assert ranged.status_code == 206
        with mirror.client() as admin:  # even an admin token cannot write to a mirror
            refused = admin.put("/v1/products/app/channels/mirrored", json={"release": "1.0.0"})
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "read_only_mirror"
            assert admin.put(f"/v1/objects/{'0' * 64}", content=b"x").status_code == 403
        # It never re-signed anything and runs no delta worker.
        assert not (mirror_store / "keys").exists()
    finally:
        mirror.stop()


def _start_nginx(export_dir: Path, workdir: Path) -> Nginx:
    """nginx running docs/nginx-mirror.conf over an export (tests/nginx_fixture.py)."""
    port = free_port()
    site = (REPO / "docs" / "nginx-mirror.conf").read_text()
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    site = site.replace("root /srv/deltacas-mirror;", f"root {export_dir};")
    return start_nginx(workdir, site, port)


def test_client_updates_through_nginx_serving_an_export(upstream: Server, tmp_path: Path) -> None:
    mirror_store = tmp_path / "mirror"
    export_dir = tmp_path / "export"
    workdir = tmp_path / "nginx"
    workdir.mkdir()

    def refresh() -> None:
        sync(mirror_store, upstream.url, upstream.store / "root.json")
        run_cas("mirror", "export", str(export_dir), "--store", str(mirror_store))

    refresh()
    nginx = _start_nginx(export_dir, workdir)
    url = nginx.url
    try:
        with httpx.Client(base_url=url) as http, upstream.client(None) as u:
            assert http.get("/v1/root.json").content == u.get("/v1/root.json").content
            assert http.get("/v1/products/app/releases").content == u.get("/v1/products/app/releases").content
            delta = "/v1/products/app/releases/1.2.0/delta?from=1.0.0"
            assert http.get(delta).content == u.get(delta).content
            assert http.get("/v1/products/app/releases/1.2.0/delta?from=../../1.0.0").status_code == 404
            digest = u.get("/v1/products/app/releases/1.2.0/manifest").json()["signed"]["files"][0]["blake3"]
            obj = http.get(f"/v1/objects/{digest}")
            assert obj.status_code == 200 and blake3_bytes(obj.content) == digest
            assert obj.headers["etag"] == f'"{digest}"'
        _update_twice(upstream, "static", url, tmp_path / "client", refresh)
    finally:
        nginx.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def test_client_fails_over_to_upstream_when_the_mirror_stops_mid_download(upstream: Server,
                                                                          tmp_path: Path) -> None:
    """Servers [mirror, upstream]: the mirror dies while an object is half sent; the client
    finishes from the upstream (same digests, so the partial download is resumed there)."""
    import threading
    mirror_store = tmp_path / "mirror"
    set_channel(upstream, "failover", "1.2.0")
    sync(mirror_store, upstream.url, upstream.store / "root.json")
    mirror = start_server(mirror_store, config=f'mirror_of = "{upstream.url}"\n', init_keys=False)
    proxy = HostileProxy(mirror.url).start()   # stands for the mirror's network path
    try:
        proxy.fault(r"^/v1/objects/", "slow", rate=50_000)
        root = tmp_path / "client"
        Updater.init(root, [proxy.url, upstream.url], "app", "failover",
                     (upstream.store / "root.json").read_bytes(), **FAST_CLIENT)
        outcome: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: outcome.update(result=Updater(root).update()))
        worker.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(s.sent > 0 for s in proxy.seen(r"^/v1/objects/")):
            time.sleep(0.02)
        half_sent = [s for s in proxy.seen(r"^/v1/objects/") if s.sent > 0]
        assert half_sent, "no object download started through the mirror"
        mirror.stop()
        proxy.stop()                             # the mirror is gone, mid-body
        worker.join(120)
        result = outcome["result"]
        assert (result.outcome, result.current) == ("updated", "1.2.0")
        assert Updater(root).verify()["ok"]
    finally:
        proxy.stop()
        mirror.stop()
