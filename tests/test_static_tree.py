"""Reads at nginx speed (issue 17, item 5): the production layout of docs/deploy.md, with a
real nginx running docs/nginx-production.conf (or -tokens.conf) in front of a real `cas serve`
that keeps the static document tree (cas/static.py) current."""
from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import PUBLISH, READ, Server, free_port, run_cas, start_server, wait_for_builds
from hostile_proxy import FAST_CLIENT
from nginx_fixture import REPO, Nginx, start_nginx

from cas import static
from cas.config import load_config
from cas.repo import open_repo
from client.updater import Updater
from deltagen.digests import blake3_bytes

IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass
class Layout:
    server: Server
    nginx: Nginx
    tree: Path

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.nginx.url, headers=headers, timeout=30)

    def local_cas(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A `cas` command in a process of its own, on the store itself (not through the server)."""
        return run_cas(*args, "--store", str(self.server.store))


def wait_until(what: str, check: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until ``check()`` held (at most ``timeout``)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def production_site(server: Server, store: Path, tree: Path | None, port: int, tokens: bool = False) -> str:
    name = "nginx-production-tokens.conf" if tokens else "nginx-production.conf"
    return static.render_nginx_site((REPO / "docs" / name).read_text(), listen=f"127.0.0.1:{port}",
                                    upstreams=[server.url.removeprefix("http://")], store=store, tree=tree)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory, release_trees: list[Path]) -> Iterator[Layout]:
    base = tmp_path_factory.mktemp("production")
    tree = base / "static"
    server = start_server(base / "store", config=textwrap.dedent(f"""\
        static_tree = "{tree}"
        static_tree_poll_seconds = 0.1
        static_tree_refresh_seconds = 2.0
        delta_poll_seconds = 0.2
        """))
    key = str(server.store / "keys" / "release.pem")
    for version, src in zip(["1.0.0", "1.1.0"], release_trees):
        server.cas("publish", str(src), "--product", "app", "--version", version, "--key", key, "--status", "released")
    server.cas("channel", "set", "app", "stable", "1.0.0")
    server.cas("channel", "set", "app", "beta", "1.1.0")
    with server.client() as http:
        wait_for_builds(http)
    port = free_port()
    nginx = start_nginx(base / "nginx", production_site(server, server.store, tree, port), port)
    lay = Layout(server, nginx, tree)
    # the tree has caught up with the builds: the delta 1.0.0 -> 1.1.0 is in it
    wait_until("final delta in the tree", lambda: (tree / "v1/products/app/releases/1.1.0/delta/from-1.0.0").exists())
    yield lay
    nginx.stop()
    server.stop()


def url_of(rel: str) -> str:
    """The read API URL a file of the tree answers."""
    if "/delta/from-" in rel:
        head, _, base = rel.rpartition("/from-")
        return f"/{head}?from={base}"
    return "/" + rel


def tree_files(tree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in tree.rglob("*") if p.is_file()}


def test_the_tree_holds_what_cas_serves_and_nginx_sends_it_itself(layout: Layout) -> None:
    files = tree_files(layout.tree)
    assert {"v1/root.json", "v1/roots/1.json", "v1/products/app/channels/stable", "v1/products/app/channels/beta",
            "v1/products/app/releases/1.0.0/manifest", "v1/products/app/releases/1.1.0/manifest",
            "v1/products/app/releases/1.1.0/delta/from-", "v1/products/app/releases/1.1.0/delta/from-1.0.0",
            "v1/products/app/releases/1.0.0/delta/from-"} <= set(files)
    assert not [rel for rel in files if rel.rpartition("/")[2].startswith(".")]   # no temp file left
    with layout.server.client(None) as cas, layout.http() as ngx:
        for rel, data in files.items():
            url = url_of(rel)
            direct, served = cas.get(url), ngx.get(url)
            assert direct.status_code == served.status_code == 200, url
            assert direct.content == served.content == data, url
            assert served.headers["cache-control"] == direct.headers["cache-control"], url
            assert served.headers["content-type"] == direct.headers["content-type"] == "application/json", url
            assert layout.nginx.upstream_of(url) == "-", f"{url} went to cas serve"
            assert "last-modified" not in served.headers
            # the same ETag for the same bytes: If-None-Match answered by nginx itself
            again = ngx.get(url, headers={"If-None-Match": served.headers["etag"]})
            assert again.status_code == 304 and again.content == b"", url
            assert layout.nginx.upstream_of(url) == "-"
            # manifests and deltas of 1 KiB+ go gzipped by nginx as by cas serve, channels never
            asked = {"Accept-Encoding": "gzip"}
            packed, packed_direct = ngx.get(url, headers=asked), cas.get(url, headers=asked)
            assert packed.content == data and packed_direct.content == data, url
            expect = "gzip" if ("/manifest" in url or "/delta" in url) and len(data) >= 1024 else None
            assert packed.headers.get("content-encoding") == packed_direct.headers.get("content-encoding") == expect, url
        # a file's mtime (so nginx's ETag) is a function of its bytes alone
        channel = layout.tree / "v1/products/app/channels/stable"
        assert int(channel.stat().st_mtime) == static.mtime_of(channel.read_bytes())
        # what the tree does not hold goes to cas serve, answered as cas serve answers it
        for url, status in [("/v1/roots/2.json", 404), ("/v1/roots/01.json", 200),
                            ("/v1/products/app/releases/1.1.0/delta?from=../../1.0.0", 422),
                            ("/v1/products/app/releases/1.1.0/delta?from=1.0.0%2F..", 422),
                            ("/v1/products/app/releases/1.1.0/delta?from=.", 422),
                            ("/v1/products/app/releases/1.1.0/delta?from=0.9", 404),
                            ("/v1/products/app/releases/1.1.0/delta", 400),
                            ("/v1/products/app/releases/1.1.0/delta?base=1.0.0", 400),
                            ("/v1/products/app/releases/1.1.0/delta?from=1.0.0&from=0.9", 404),
                            ("/v1/products/app/channels/nope", 404),
                            ("/v1/products/app/channels/.stable", 404),
                            ("/v1/products/app/releases/9.9.9/manifest", 404)]:
            answer, direct = ngx.get(url), cas.get(url)
            assert answer.status_code == direct.status_code == status, url
            assert answer.content == direct.content, url
            assert layout.nginx.upstream_of(url) != "-"
        # a delta from a base no publish planned is not final: cas serve answers it
        listing = ngx.get("/v1/products/app/releases")
        assert listing.status_code == 200 and layout.nginx.upstream_of("/v1/products/app/releases") != "-"


def test_objects_come_from_the_store_files(layout: Layout, tmp_path: Path) -> None:
    with layout.server.client(None) as cas, layout.http() as ngx:
        files = cas.get("/v1/products/app/releases/1.1.0/manifest").json()["signed"]["files"]
        entry = max((f for f in files if f["type"] == "file"), key=lambda f: f["size"])
        digest, size = entry["blake3"], entry["size"]
        url = f"/v1/objects/{digest}"
        whole = ngx.get(url)
        assert whole.status_code == 200 and blake3_bytes(whole.content) == digest
        assert whole.headers["etag"] == f'"{digest}"' and whole.headers["cache-control"] == IMMUTABLE
        assert whole.headers["content-type"] == "application/octet-stream"
        assert layout.nginx.upstream_of(url) == "-"
        # Range, and If-Range with the digest (how the client resumes): 206 from nginx
        part = ngx.get(url, headers={"Range": f"bytes=10-{size - 1}", "If-Range": f'"{digest}"'})
        assert part.status_code == 206 and part.headers["content-range"] == f"bytes 10-{size - 1}/{size}"
        assert part.content == whole.content[10:] and part.headers["etag"] == f'"{digest}"'
        assert layout.nginx.upstream_of(url) == "-"
        stale = ngx.get(url, headers={"Range": "bytes=10-", "If-Range": '"another"'})
        assert stale.status_code == 200 and stale.content == whole.content
        head = ngx.head(url)
        assert head.status_code == 200 and int(head.headers["content-length"]) == size
        # an unknown digest: cas serve's 404 JSON
        unknown = ngx.get("/v1/objects/" + "0" * 64)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "object_not_found"
        assert layout.nginx.upstream_of("/v1/objects/" + "0" * 64) != "-"
        bad = ngx.get("/v1/objects/XYZ")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_digest"
    # writes go to cas serve: no token 401, with one stored
    blob = os.urandom(3000)
    put_url = f"/v1/objects/{blake3_bytes(blob)}"
    with layout.http() as ngx:
        assert ngx.put(put_url, content=blob).status_code == 401
    with layout.http(PUBLISH) as ngx:
        assert ngx.put(put_url, content=blob).status_code == 201
        assert ngx.get(put_url).content == blob and layout.nginx.upstream_of(put_url) == "-"
    # a chunked file's whole-file object is no plain file in the store: cas serve assembles it
    src = tmp_path / "big"
    src.mkdir()
    (src / "blob.bin").write_bytes(os.urandom(3 << 20))
    layout.server.cas("publish", str(src), "--product", "chunky", "--version", "1", "--status", "released",
                      "--key", str(layout.server.store / "keys" / "release.pem"), "--chunk-min-file-bytes", "1048576")
    with layout.http() as ngx:
        chunked = ngx.get("/v1/products/chunky/releases/1/manifest").json()["signed"]["files"][0]
        assert not (layout.server.store / "objects" / chunked["blake3"][:2] / chunked["blake3"][2:]).exists()
        url = f"/v1/objects/{chunked['blake3']}"
        got = ngx.get(url)
        assert got.status_code == 200 and got.content == (src / "blob.bin").read_bytes()
        assert layout.nginx.upstream_of(url) != "-"
        tail = ngx.get(url, headers={"Range": "bytes=-100"})
        assert tail.status_code == 206 and tail.content == got.content[-100:]


def test_a_client_updates_through_the_production_layout(layout: Layout, tmp_path: Path) -> None:
    layout.local_cas("channel", "set", "app", "fleet", "1.0.0")
    channel = layout.tree / "v1/products/app/channels/fleet"
    wait_until("channel in the tree", channel.exists)
    root = tmp_path / "client"
    Updater.init(root, [layout.nginx.url], "app", "fleet", (layout.server.store / "root.json").read_bytes(),
                 **FAST_CLIENT)
    first = Updater(root).update()
    assert (first.outcome, first.to_version) == ("updated", "1.0.0"), first.steps
    # moved by another process on the store (the CLI): in the tree, through nginx, in bounded time
    before = channel.read_bytes()
    mark = len(layout.nginx.log_lines())
    layout.local_cas("channel", "set", "app", "fleet", "1.1.0")
    took = wait_until("moved channel in the tree", lambda: channel.read_bytes() != before, timeout=3.0)
    with layout.server.client(None) as cas:
        assert channel.read_bytes() == cas.get("/v1/products/app/channels/fleet").content
    assert took < 3.0
    time.sleep(1.1)   # open_file_cache_valid: nginx looks at the file again within a second
    second = Updater(root).update()
    assert (second.outcome, second.to_version) == ("updated", "1.1.0"), second.steps
    assert second.used_delta and second.bytes_downloaded < second.bytes_full
    assert os.readlink(root / "current").endswith("1.1.0")
    # every read of the update was nginx's own, but the next root's 404 (no such file)
    lines = [line.split(" ", 3) for line in layout.nginx.log_lines()[mark:]]
    reads = [(uri, status, upstream) for method, uri, status, upstream in lines if method == "GET"]
    assert any("/delta?from=1.0.0" in uri for uri, _, _ in reads)
    assert any(uri.startswith("/v1/objects/") for uri, _, _ in reads)
    went_to_cas = [(uri, status) for uri, status, upstream in reads if upstream != "-"]
    assert all(uri.startswith("/v1/roots/") and status == "404" for uri, status in went_to_cas), went_to_cas


def test_changes_anywhere_reach_the_tree_and_stale_documents_go(layout: Layout, tmp_path: Path) -> None:
    tree, store = layout.tree, layout.server.store
    stable = tree / "v1/products/app/channels/stable"

    def same_as_cas(rel: str) -> Callable[[], bool]:
        def check() -> bool:
            with layout.server.client(None) as cas:
                answer = cas.get(url_of(rel))
            path = tree / rel
            return answer.status_code == 200 and path.exists() and path.read_bytes() == answer.content
        return check

    # a rollout started, then aborted, through nginx (admin writes go to cas serve)
    with layout.http(layout.server.env["CAS_TOKEN"]) as admin:
        assert admin.post("/v1/products/app/channels/stable/rollout", json={"release": "1.1.0"}).status_code == 201
    wait_until("rollout in the channel document", lambda: b'"rollout":{' in stable.read_bytes(), timeout=3.0)
    assert same_as_cas("v1/products/app/channels/stable")()
    with layout.http(layout.server.env["CAS_TOKEN"]) as admin:
        assert admin.post("/v1/products/app/channels/stable/rollout/abort").status_code == 200
    wait_until("aborted rollout", lambda: b'"rollout":null' in stable.read_bytes(), timeout=3.0)
    assert same_as_cas("v1/products/app/channels/stable")()

    # a second `cas serve` on the same metadata (no static tree of its own) moves a channel
    other_config = tmp_path / "other.toml"
    other_config.write_text("delta_builder = false\n")
    other = start_server(store, init_keys=False, extra_args=("--config", str(other_config)))
    try:
        with other.client() as http:
            assert http.put("/v1/products/app/channels/stable", json={"release": "1.1.0"}).status_code == 200
        wait_until("channel moved by another replica", same_as_cas("v1/products/app/channels/stable"), timeout=3.0)
    finally:
        other.stop()

    # a new release published by the CLI (another process), then deleted: in, then out
    key = str(store / "keys" / "release.pem")
    src = tmp_path / "r"
    src.mkdir()
    (src / "f.txt").write_text("one more release\n")
    layout.local_cas("publish", str(src), "--product", "app", "--version", "2.0.0", "--status", "released",
                     "--key", key)
    manifest = tree / "v1/products/app/releases/2.0.0/manifest"
    wait_until("new release's manifest", manifest.exists, timeout=3.0)
    with layout.http(layout.server.env["CAS_TOKEN"]) as admin:
        deprecate = admin.post("/v1/products/app/releases/2.0.0/status", json={"status": "deprecated"})
        assert deprecate.status_code == 200, deprecate.text
        assert admin.delete("/v1/products/app/releases/2.0.0").status_code == 204
    wait_until("deleted release's manifest removed", lambda: not manifest.exists(), timeout=3.0)
    assert not manifest.parent.exists()   # its empty directory too
    time.sleep(1.1)   # open_file_cache_valid
    with layout.http() as ngx:
        gone = ngx.get("/v1/products/app/releases/2.0.0/manifest")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_release"
    # a channel moving off a release takes that release's deltas out of the tree
    layout.local_cas("channel", "set", "app", "beta", "1.0.0")
    layout.local_cas("channel", "set", "app", "stable", "1.0.0")
    layout.local_cas("channel", "set", "app", "fleet", "1.0.0")
    wait_until("deltas to 1.1.0 removed",
               lambda: not (tree / "v1/products/app/releases/1.1.0/delta").exists(), timeout=3.0)
    # and an export now writes nothing: the tree is current
    assert static.export(open_repo(load_config(store))).written == 0


def test_hostile_names_in_the_metadata_never_become_paths(tmp_path: Path, release_trees: list[Path]) -> None:
    store, tree = tmp_path / "store", tmp_path / "deep" / "tree"
    run_cas("keys", "init", "--store", str(store))
    run_cas("publish", str(release_trees[0]), "--product", "app", "--version", "1.0.0", "--status", "released",
            "--channel", "stable", "--store", str(store))
    run_cas("channel", "set", "app", "beta", "1.0.0", "--store", str(store))
    # names no API accepts, written straight into the database
    conn = sqlite3.connect(store / "meta.db")
    with conn:
        conn.execute("UPDATE channels SET channel = '../../../escaped' WHERE channel = 'stable'")
        conn.execute("UPDATE channels SET channel = '..' WHERE channel = 'beta'")
    conn.close()
    repo = open_repo(load_config(store, static_tree=str(tree)))
    stats = static.export(repo)
    assert len(stats.skipped) == 2 and all("bad name name" in s for s in stats.skipped), stats.skipped
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and tree not in p.parents
               and store not in p.parents and "server-" not in p.name]
    assert outside == []
    assert not (tree / "v1/products/app/channels").exists()
    assert (tree / "v1/products/app/releases/1.0.0/manifest").exists()
    # the CLI says what it left out
    out = run_cas("static", "export", "--store", str(store), "--tree", str(tree)).stdout
    assert "left out channel" in out and "0 written" in out


def test_a_crash_mid_export_leaves_no_partial_file(tmp_path: Path, release_trees: list[Path]) -> None:
    store, tree = tmp_path / "store", tmp_path / "tree"
    run_cas("keys", "init", "--store", str(store))
    (store / "config.toml").write_text(f'static_tree = "{tree}"\n')
    run_cas("publish", str(release_trees[0]), "--product", "app", "--version", "1.0.0", "--status", "released",
            "--channel", "stable", "--store", str(store))
    run_cas("publish", str(release_trees[1]), "--product", "app", "--version", "1.1.0", "--status", "released",
            "--store", str(store))
    first = run_cas("static", "export", "--store", str(store), "--json")
    assert '"written": 5' in first.stdout, first.stdout
    channel = tree / "v1/products/app/channels/stable"
    old = channel.read_bytes()
    run_cas("channel", "set", "app", "stable", "1.1.0", "--store", str(store))
    # an export killed (SIGKILL) after writing the new channel document's temp file in full,
    # before its rename
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from cas import static
        from cas.config import load_config
        from cas.repo import open_repo
        real = os.replace
        def replace(src, dst, *a, **k):
            if str(dst).endswith("/channels/stable"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst, *a, **k)
        os.replace = replace
        static.export(open_repo(load_config({str(store)!r})))
        """)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert channel.read_bytes() == old   # the old document, whole
    leftovers = [p for p in channel.parent.iterdir() if p.name != "stable"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".stable.")
    # the manifest of 1.1.0 was written before the channel that points to it
    assert (tree / "v1/products/app/releases/1.1.0/manifest").exists()
    # the next export: the new document, and a crashed writer's temp file removed once old
    repo = open_repo(load_config(store))
    stats = static.export(repo)
    assert stats.written == 1 and leftovers[0].exists()   # young: may be another exporter's
    os.utime(leftovers[0])
    original = static.TMP_MAX_AGE_SECONDS
    static.TMP_MAX_AGE_SECONDS = 0.0
    try:
        stats = static.export(repo)
    finally:
        static.TMP_MAX_AGE_SECONDS = original
    assert stats.removed == 1 and not leftovers[0].exists()
    assert channel.read_bytes() == repo.meta.get_channel("app", "stable").document


def test_with_anonymous_reads_off_nginx_sends_objects_after_the_token_check(tmp_path: Path,
                                                                           release_trees: list[Path]) -> None:
    tree = tmp_path / "tree"
    (tree / "v1").mkdir(parents=True)
    (tree / "v1" / "root.json").write_bytes(b"left from when reads were anonymous")
    server = start_server(tmp_path / "store", config=textwrap.dedent(f"""\
        anonymous_read = false
        accel_redirect_prefix = "/_deltacas/objects/"
        static_tree = "{tree}"
        static_tree_poll_seconds = 0.1
        delta_builder = false
        """))
    port = free_port()
    nginx = start_nginx(tmp_path / "nginx", production_site(server, server.store, None, port, tokens=True), port)
    try:
        server.cas("publish", str(release_trees[0]), "--product", "app", "--version", "1.0.0", "--status",
                   "released", "--channel", "stable", "--key", str(server.store / "keys" / "release.pem"))
        # no document may stay public: the tree is emptied
        wait_until("tree emptied", lambda: not (tree / "v1" / "root.json").exists())
        assert [p for p in tree.rglob("*") if p.is_file()] == []
        with server.client(READ) as cas:
            files = cas.get("/v1/products/app/releases/1.0.0/manifest").json()["signed"]["files"]
            entry = max((f for f in files if f["type"] == "file"), key=lambda f: f["size"])
            digest, size = entry["blake3"], entry["size"]
            url = f"/v1/objects/{digest}"
            # cas serve alone answers with the redirect and no body (it is meant for nginx)
            direct = cas.get(url)
            assert direct.status_code == 200 and direct.content == b""
            assert direct.headers["x-accel-redirect"] == f"/_deltacas/objects/{digest[:2]}/{digest[2:]}"
        with httpx.Client(base_url=nginx.url, timeout=30) as anon:
            for path in (url, "/v1/products/app/channels/stable", "/v1/root.json"):
                refused = anon.get(path)
                assert refused.status_code == 401 and refused.json()["error"]["code"] == "token_required", path
            assert anon.get(f"/_deltacas/objects/{digest[:2]}/{digest[2:]}").status_code == 404   # internal
        with httpx.Client(base_url=nginx.url, timeout=30, headers={"Authorization": f"Bearer {READ}"}) as ngx:
            got = ngx.get(url)
            assert got.status_code == 200 and blake3_bytes(got.content) == digest and len(got.content) == size
            assert got.headers["etag"] == f'"{digest}"' and "x-accel-redirect" not in got.headers
            assert got.headers["cache-control"] == IMMUTABLE
            part = ngx.get(url, headers={"Range": "bytes=5-", "If-Range": f'"{digest}"'})
            assert part.status_code == 206 and part.content == got.content[5:]
            assert part.headers["content-range"] == f"bytes 5-{size - 1}/{size}"
            assert ngx.get("/v1/objects/" + "0" * 64).json()["error"]["code"] == "object_not_found"
            assert ngx.get("/v1/products/app/channels/stable").status_code == 200
    finally:
        nginx.stop()
        server.stop()


def test_the_tree_follows_changes_made_elsewhere_on_either_metadata_backend(
        metadata_url: str, tmp_path: Path, release_trees: list[Path]) -> None:
    """PostgreSQL's data version moves with channel writes only: a channel moved by another
    process shows within a poll, anything else within static_tree_refresh_seconds."""
    tree = tmp_path / "tree"
    server = start_server(tmp_path / "store", config=textwrap.dedent(f"""\
        metadata_url = "{metadata_url}"
        static_tree = "{tree}"
        static_tree_poll_seconds = 0.1
        static_tree_refresh_seconds = 1.0
        delta_builder = false
        """))
    try:
        key = str(server.store / "keys" / "release.pem")

        def cli(*args: str) -> None:   # its own process, on the store's config (not the server)
            run_cas(*args, "--store", str(server.store))

        cli("publish", str(release_trees[0]), "--product", "app", "--version", "1.0.0", "--status", "released",
            "--key", key)
        manifest = tree / "v1/products/app/releases/1.0.0/manifest"
        wait_until("a release published elsewhere", manifest.exists, timeout=4.0)
        cli("channel", "set", "app", "stable", "1.0.0")
        channel = tree / "v1/products/app/channels/stable"
        wait_until("a channel set elsewhere", channel.exists, timeout=3.0)
        with server.client(None) as cas:
            assert channel.read_bytes() == cas.get("/v1/products/app/channels/stable").content
            assert manifest.read_bytes() == cas.get("/v1/products/app/releases/1.0.0/manifest").content
        cli("publish", str(release_trees[1]), "--product", "app", "--version", "1.1.0", "--status", "released",
            "--key", key)
        wait_until("a second release", (tree / "v1/products/app/releases/1.1.0/manifest").exists, timeout=4.0)
        cli("release", "status", "app", "1.1.0", "deprecated")
        cli("release", "delete", "app", "1.1.0")
        wait_until("a release deleted elsewhere",
                   lambda: not (tree / "v1/products/app/releases/1.1.0").exists(), timeout=4.0)
        assert manifest.exists() and channel.exists()
    finally:
        server.stop()


def test_the_watcher_exports_once_per_poll_interval_and_refused_writes_do_not_wake_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone may POST (reports, or junk answered 401/404): a refused write wakes nothing, and
    a flood of accepted ones costs one export per static_tree_poll_seconds, not one each."""
    import asyncio
    from types import SimpleNamespace

    from cas.http import statictree

    exports: list[float] = []
    monkeypatch.setattr(statictree.static, "export", lambda repo: exports.append(time.monotonic()))
    repo = SimpleNamespace(meta=SimpleNamespace(data_version=lambda: 1),
                           config=SimpleNamespace(static_tree_poll_seconds=0.2, static_tree_refresh_seconds=3600))

    async def scenario() -> None:
        watcher = statictree.StaticTreeWatcher(repo)  # type: ignore[arg-type]

        def app_answering(status: int):  # type: ignore[no-untyped-def]
            async def app(scope, receive, send):  # type: ignore[no-untyped-def]
                await send({"type": "http.response.start", "status": status, "headers": []})
                await send({"type": "http.response.body", "body": b""})
            return app

        async def post(status: int) -> None:
            async def receive():  # type: ignore[no-untyped-def]
                return {"type": "http.request", "body": b""}

            async def send(message):  # type: ignore[no-untyped-def]
                pass
            await statictree.Trigger(app_answering(status), watcher)({"type": "http", "method": "POST"},
                                                                      receive, send)

        for status in (401, 404, 422, 429):
            await post(status)
        assert not watcher.wake.is_set()
        await post(202)
        assert watcher.wake.is_set()
        task = asyncio.create_task(watcher.run())
        try:
            end = time.monotonic() + 1.5
            while time.monotonic() < end:   # a write accepted every millisecond
                await post(202)
                await asyncio.sleep(0.001)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert 4 <= len(exports) <= 9, exports           # 1.5 s at one per 0.2 s, not ~1,000
    gaps = [b - a for a, b in zip(exports, exports[1:])]
    assert min(gaps) >= 0.19, gaps
