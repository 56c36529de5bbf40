"""The client against a hostile network: cut connections, corrupt and lying
mirrors, rate limiting, stalls, endless and over-long bodies.

A real `cas serve` holds three released versions (channel `stable` -> 1.2.0,
deltas built); every client talks to it through ``tests/hostile_proxy.py``.
"""
from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import READ, Server, start_server
from hostile_proxy import FAST_CLIENT, VERSIONS, HostileProxy, wait_for_builds

from casformat.canonical import MAX_MANIFEST_BYTES, canonical_bytes
from client.config import ClientConfig, ConfigError
from client.errors import ClientError, DownloadError
from client.fetcher import Fetcher
from client.updater import Updater

REPO = Path(__file__).resolve().parent.parent
CHANNEL = r"^/v1/products/app/channels/stable$"


@dataclass
class World:
    server: Server
    proxy: HostileProxy
    manifests: dict[str, Any]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, release_trees: list[Path]) -> Iterator[World]:
    server = start_server(tmp_path_factory.mktemp("net") / "store", config="delta_poll_seconds = 0.2\n")
    proxy = HostileProxy(server.url)
    try:
        key = str(server.store / "keys" / "release.pem")
        for version, tree in zip(VERSIONS, release_trees):
            server.cas("publish", str(tree), "--product", "app", "--version", version, "--key", key,
                       "--status", "released")
        server.cas("channel", "set", "app", "stable", "1.2.0")
        with server.client() as http:
            wait_for_builds(http)
            manifests = {v: http.get(f"/v1/products/app/releases/{v}/manifest").json() for v in VERSIONS}
        proxy.start()
        yield World(server, proxy, manifests)
    finally:
        proxy.stop()
        server.stop()


@pytest.fixture
def proxy(world: World) -> Iterator[HostileProxy]:
    world.proxy.clear()
    world.proxy.reset_log()
    yield world.proxy
    world.proxy.clear()


# --------------------------------------------------------------------------- helpers

def init_client(root: Path, servers: list[str], store: Path, **limits: Any) -> Updater:
    return Updater.init(root, servers, "app", "stable", (store / "root.json").read_bytes(),
                        client_id="network-test", **{**FAST_CLIENT, **limits})


def set_config(root: Path, **changes: Any) -> None:
    path = root / ".cas" / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def entry(world: World, version: str, path: str) -> dict[str, Any]:
    return next(e for e in world.manifests[version]["signed"]["files"] if e["path"] == path)


def obj(digest: str) -> str:
    return rf"^/v1/objects/{digest}$"


@dataclass
class Cli:
    rc: int
    out: str
    err: str
    maxrss_kb: int
    seconds: float


def run_cli(root: Path, *args: str, timeout: float = 60) -> Cli:
    """`cas-client` in a subprocess; its own peak RSS from wait4."""
    out_path, err_path = root.parent / f"{root.name}.out", root.parent / f"{root.name}.err"
    started = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "client.cli", args[0], str(root), *args[1:]],
                                cwd=REPO, stdout=out, stderr=err)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - started > timeout:
            proc.kill()
            os.wait4(proc.pid, 0)
            raise AssertionError(f"cas-client {args} did not finish in {timeout}s")
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Cli(proc.returncode, out_path.read_text(), err_path.read_text(), usage.ru_maxrss,
               time.monotonic() - started)


def current(root: Path) -> str | None:
    return Updater(root).layout.link("current")


# --------------------------------------------------------------------------- 1. cut connections

def test_cut_mid_object_resumes_with_range_and_if_range(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    app = entry(world, "1.2.0", "bin/app")
    cut_at = app["size"] // 2          # less than the fetcher's read chunk: every byte received counts
    proxy.fault(obj(app["blake3"]), "cut", times=1, after=cut_at)
    up = init_client(tmp_path / "c", [proxy.url], world.server.store)
    result = up.update()
    assert (result.outcome, result.current) == ("updated", "1.2.0")
    seen = proxy.seen(obj(app["blake3"]), method="GET")
    assert seen[0].fault == "cut" and seen[0].range is None and seen[0].sent == cut_at
    resumed = [s for s in seen[1:] if s.range]
    assert resumed, f"no ranged retry: {[(s.range, s.status) for s in seen]}"
    start = int(resumed[0].range.removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= cut_at
    assert resumed[0].if_range == f'"{app["blake3"]}"'
    assert resumed[0].status == 206
    assert up.verify()["ok"]


def test_killed_client_resumes_from_part_file(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    app = entry(world, "1.2.0", "bin/app")
    proxy.fault(obj(app["blake3"]), "slow", rate=64_000)
    root = tmp_path / "c"
    init_client(root, [proxy.url], world.server.store)
    part = root / ".cas" / "downloads" / f"{app['blake3']}.part"
    proc = subprocess.Popen([sys.executable, "-m", "client.cli", "update", str(root), "--json"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (part.exists() and part.stat().st_size >= 40_000):
            assert proc.poll() is None, "client finished before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert part.exists(), "the partial download did not survive the kill"
    have = part.stat().st_size
    assert 0 < have < app["size"]
    assert current(root) is None
    proxy.clear()
    rerun = run_cli(root, "update", "--json")
    assert rerun.rc == 0, rerun.err
    assert json.loads(rerun.out)["current"] == "1.2.0"
    ranged = [s for s in proxy.seen(obj(app["blake3"])) if s.range]
    assert ranged and ranged[0].range == f"bytes={have}-" and ranged[0].if_range == f'"{app["blake3"]}"'
    assert Updater(root).verify()["ok"]


def test_stalled_body_hits_read_timeout_then_resumes(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    app = entry(world, "1.2.0", "bin/app")
    proxy.fault(obj(app["blake3"]), "stall", times=1, after=100_000, seconds=15)
    up = init_client(tmp_path / "c", [proxy.url], world.server.store, read_timeout_s=1.0)
    started = time.monotonic()
    result = up.update()
    elapsed = time.monotonic() - started
    assert result.current == "1.2.0" and up.verify()["ok"]
    assert elapsed < 8, f"a silent sender held the client for {elapsed:.1f}s"
    ranged = [s for s in proxy.seen(obj(app["blake3"])) if s.range]
    assert ranged and int(ranged[0].range[6:-1]) > 0


def test_stall_before_headers_fails_over_to_next_server(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    """A black-holed first mirror costs its timeouts once, not once per object."""
    proxy.fault(r"^/v1/(roots|objects|products/app/(channels|releases))", "stall", seconds=15)
    up = init_client(tmp_path / "c", [proxy.url, world.server.url], world.server.store,
                     read_timeout_s=0.5, attempts=2)
    started = time.monotonic()
    assert up.update().current == "1.2.0"
    assert time.monotonic() - started < 6
    assert len(proxy.seen(r"^/v1/objects/")) <= 4   # demoted after the first failures


def test_black_holed_report_endpoint_does_not_hold_the_update(world: World, proxy: HostileProxy,
                                                              tmp_path: Path) -> None:
    proxy.fault(r"/reports$", "stall", seconds=15)
    up = init_client(tmp_path / "c", [proxy.url], world.server.store, read_timeout_s=0.5)
    started = time.monotonic()
    assert up.update().current == "1.2.0"
    assert time.monotonic() - started < 5


def _reports(world: World, client_id: str) -> list[dict[str, Any]]:
    with world.server.client() as http:
        rows: list[dict[str, Any]] = http.get("/v1/products/app/reports").json()["reports"]
    return [r for r in rows if r["client_id"] == client_id]


def test_reports_and_their_token_go_to_the_origin_never_to_a_mirror(world: World, proxy: HostileProxy,
                                                                    tmp_path: Path) -> None:
    """D11: with servers [mirror, origin] the report (and its token) goes to the report URL
    (the origin); the mirror, which 403s reports, never sees it."""
    proxy.fault(r"/reports$", "status", code=403)
    up = Updater.init(tmp_path / "c", [proxy.url, world.server.url], "app", "stable",
                      (world.server.store / "root.json").read_bytes(), client_id="report-url-test",
                      report_token=READ, report_url=world.server.url, **FAST_CLIENT)
    assert up.update().current == "1.2.0"
    assert proxy.seen(r"^/v1/objects/")                      # the mirror served the data ...
    assert not proxy.seen(r"/reports$")                      # ... but never saw a report
    assert not [s for s in proxy.requests if "authorization" in s.headers]
    assert [r["outcome"] for r in _reports(world, "report-url-test")] == ["success"]


def test_without_a_report_url_reports_go_to_the_last_server(world: World, proxy: HostileProxy,
                                                            tmp_path: Path) -> None:
    proxy.fault(r"/reports$", "status", code=403)
    up = Updater.init(tmp_path / "c", [proxy.url, world.server.url], "app", "stable",
                      (world.server.store / "root.json").read_bytes(), client_id="report-last-test",
                      **FAST_CLIENT)
    assert up.update().current == "1.2.0"
    assert not proxy.seen(r"/reports$")
    assert [r["outcome"] for r in _reports(world, "report-last-test")] == ["success"]
    # A report token with several servers needs to be told where it may go.
    with pytest.raises(ClientError, match="report-url"):
        Updater.init(tmp_path / "d", [proxy.url, world.server.url], "app", "stable",
                     (world.server.store / "root.json").read_bytes(), report_token=READ, **FAST_CLIENT)


# --------------------------------------------------------------------------- 2. corrupt or missing data

def test_corrupting_mirror_fails_over_to_second_server(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    proxy.fault(r"^/v1/objects/", "corrupt")
    up = init_client(tmp_path / "c", [proxy.url, world.server.url], world.server.store)
    result = up.update()
    assert result.current == "1.2.0" and up.verify()["ok"]
    corrupted = proxy.seen(r"^/v1/objects/")
    assert corrupted and all(s.fault == "corrupt" for s in corrupted)
    assert not list((tmp_path / "c" / ".cas" / "downloads").iterdir())


def test_only_a_corrupting_server_fails_cleanly(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    root = tmp_path / "c"
    init_client(root, [world.server.url], world.server.store).update(to="1.0.0")
    set_config(root, servers=[proxy.url])
    proxy.fault(r"^/v1/objects/", "corrupt")
    cli = run_cli(root, "update", "--json")
    assert cli.rc != 0
    assert "error" in cli.err and "Traceback" not in cli.err, cli.err
    assert current(root) == "1.0.0"
    assert not (root / "versions" / "1.2.0").exists()
    assert Updater(root).verify()["ok"]


def test_mirror_without_the_data(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    proxy.fault(r"^/v1/", "notfound")
    up = init_client(tmp_path / "a", [proxy.url, world.server.url], world.server.store)
    assert up.update().current == "1.2.0"
    only = init_client(tmp_path / "b", [proxy.url], world.server.store)
    with pytest.raises(ClientError, match="not available"):
        only.update()
    assert current(tmp_path / "b") is None


def test_compressing_cdn_is_harmless(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    """A mirror that gzips whatever the client says it accepts (nginx `gzip on`): documents
    come gzipped (the client asks for it), objects never (it asks for identity)."""
    proxy.fault(r"^/v1/", "gzip")
    up = init_client(tmp_path / "c", [proxy.url], world.server.store)
    assert up.update().current == "1.2.0" and up.verify()["ok"]
    seen = proxy.seen(r"^/v1/")
    documents = [s for s in seen if "/objects/" not in s.path]
    assert documents and all("gzip" in s.headers.get("accept-encoding", "") for s in documents)
    assert all(s.headers.get("accept-encoding") == "identity" for s in seen if "/objects/" in s.path)


GZIP_FAULTS = {
    # 8 MiB of zeros in an 8 KiB gzip stream, against a cap of 1 MiB: inflating it whole is what the cap forbids
    "bomb": (gzip.compress(b"\0" * (8 << 20), 9), "inflates past the cap"),
    "truncated": (gzip.compress(b'{"signed": {}}' * 100)[:-9], "ends before its end"),
    "trailing": (gzip.compress(b'{"signed": {}}') + b"junk", "after the end"),
    "corrupt": (b"\x1f\x8b\x08\x00" + b"\xff" * 64, "corrupt gzip"),
}


@pytest.mark.parametrize("fault", sorted(GZIP_FAULTS))
def test_hostile_gzip_documents_are_refused(world: World, proxy: HostileProxy, tmp_path: Path, fault: str) -> None:
    body, message = GZIP_FAULTS[fault]
    proxy.fault(CHANNEL, "replace", body=body, headers={"content-encoding": "gzip"})
    root = tmp_path / "c"
    up = init_client(root, [proxy.url], world.server.store, max_channel_bytes=1 << 20)
    with pytest.raises(DownloadError, match=message):
        up.update()
    assert current(root) is None


def test_an_encoding_not_asked_for_is_refused(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    proxy.fault(CHANNEL, "replace", body=b"\x00" * 100, headers={"content-encoding": "br"})
    up = init_client(tmp_path / "c", [proxy.url], world.server.store)
    with pytest.raises(DownloadError, match="not asked for"):
        up.update()


# --------------------------------------------------------------------------- 3. retry policy

def test_503_retry_after_is_honoured(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    proxy.fault(CHANNEL, "status", times=1, code=503, headers={"retry-after": "1"})
    up = init_client(tmp_path / "c", [proxy.url], world.server.store)
    assert up.update().current == "1.2.0"
    seen = proxy.seen(CHANNEL)
    assert [s.status for s in seen] == [503, 200]
    assert seen[1].started - seen[0].started >= 0.95


def test_429_on_objects_is_retried_with_backoff(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    app = entry(world, "1.2.0", "bin/app")
    proxy.fault(obj(app["blake3"]), "status", times=2, code=429)
    up = init_client(tmp_path / "c", [proxy.url], world.server.store)
    assert up.update().current == "1.2.0" and up.verify()["ok"]
    assert [s.status for s in proxy.seen(obj(app["blake3"]))] == [429, 429, 200]


@pytest.mark.parametrize("code", [403, 400])
def test_client_errors_are_not_retried(world: World, proxy: HostileProxy, tmp_path: Path, code: int) -> None:
    proxy.fault(CHANNEL, "status", code=code)
    up = init_client(tmp_path / "c", [proxy.url], world.server.store)
    with pytest.raises(DownloadError, match=f"HTTP {code}"):
        up.update()
    assert len(proxy.seen(CHANNEL)) == 1
    # The same for an object, at the fetcher's level.
    app = entry(world, "1.2.0", "bin/app")
    proxy.fault(obj(app["blake3"]), "status", code=code)
    config = ClientConfig(servers=(proxy.url,), product="app", channel="stable", client_id="x", **FAST_CLIENT)

    async def fetch() -> None:
        async with Fetcher(config, tmp_path) as fetcher:
            await fetcher.object(app["blake3"], app["size"])

    with pytest.raises(DownloadError, match=f"HTTP {code}"):
        asyncio.run(fetch())
    assert len(proxy.seen(obj(app["blake3"]))) == 1


# --------------------------------------------------------------------------- 6. bounded bodies

def test_endless_channel_document_is_cut(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    root = tmp_path / "c"
    init_client(root, [proxy.url], world.server.store)
    proxy.fault(CHANNEL, "endless", max_seconds=30)
    cli = run_cli(root, "update", "--json", timeout=30)
    assert cli.rc != 0 and "cap" in cli.err, cli.err
    assert cli.seconds < 15
    assert cli.maxrss_kb < 300 * 1024, f"client peaked at {cli.maxrss_kb // 1024} MiB"
    [seen] = proxy.seen(CHANNEL)
    assert seen.sent < 64 << 20     # the proxy could not push more than buffers hold past the cap
    assert current(root) is None


def test_endless_manifest_is_cut(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    root = tmp_path / "c"
    init_client(root, [proxy.url], world.server.store, max_manifest_bytes=1 << 20)
    proxy.fault(r"/releases/1\.2\.0/manifest$", "endless", max_seconds=30)
    cli = run_cli(root, "update", "--json", timeout=30)
    assert cli.rc != 0 and "cap" in cli.err, cli.err
    assert cli.seconds < 15 and cli.maxrss_kb < 300 * 1024


def test_a_manifest_rebuilt_from_a_delta_is_held_to_the_manifest_cap(world: World, proxy: HostileProxy,
                                                                   tmp_path: Path) -> None:
    """A fresh install takes its manifest from the delta from nothing: the manifest that
    delta rebuilds is held to ``max_manifest_bytes`` as a full one is (and every accepted
    manifest is then readable from the cache, whose cap is casformat's ``MAX_MANIFEST_BYTES``,
    the most ``max_manifest_bytes`` may be)."""
    size = len(canonical_bytes(world.manifests["1.2.0"]))
    root = tmp_path / "c"
    up = init_client(root, [proxy.url], world.server.store, max_manifest_bytes=size - 1, fresh_install_delta=True)
    with pytest.raises(DownloadError, match="cap"):
        up.update()
    assert current(root) is None
    assert proxy.seen(r"/releases/1\.2\.0/delta")  # the delta was fetched, then refused
    set_config(root, max_manifest_bytes=size)
    Updater(root).update()
    assert current(root) == "1.2.0"
    assert Updater(root).layout.cached_manifest("1.2.0") == world.manifests["1.2.0"]


def test_max_manifest_bytes_cannot_exceed_the_cap_the_cache_is_read_with() -> None:
    ClientConfig(servers=("http://x",), product="app", channel="stable", client_id="c",
                 max_manifest_bytes=MAX_MANIFEST_BYTES)
    with pytest.raises(ConfigError, match="max_manifest_bytes"):
        ClientConfig(servers=("http://x",), product="app", channel="stable", client_id="c",
                     max_manifest_bytes=MAX_MANIFEST_BYTES + 1)


@pytest.mark.parametrize("kind,params", [("huge_length", {"length": 10 << 30}),
                                         ("overlong", {"extra": 70_000})])
def test_document_longer_than_its_cap_is_refused(world: World, proxy: HostileProxy, tmp_path: Path,
                                                 kind: str, params: dict[str, Any]) -> None:
    proxy.fault(CHANNEL, kind, **params)
    up = init_client(tmp_path / "c", [proxy.url], world.server.store, max_channel_bytes=64 << 10)
    with pytest.raises(DownloadError, match="cap"):
        up.update()
    assert len(proxy.seen(CHANNEL)) == 1
    assert current(tmp_path / "c") is None


@pytest.mark.parametrize("kind,params", [("endless", {"max_seconds": 30}), ("overlong", {"extra": 5000})])
def test_object_longer_than_signed_size_is_refused(world: World, proxy: HostileProxy, tmp_path: Path,
                                                   kind: str, params: dict[str, Any]) -> None:
    root = tmp_path / "c"
    init_client(root, [world.server.url], world.server.store).update(to="1.0.0")
    set_config(root, servers=[proxy.url])
    proxy.fault(r"^/v1/objects/", kind, **params)
    started = time.monotonic()
    with pytest.raises(ClientError, match="every recipe failed"):
        Updater(root).update()
    assert time.monotonic() - started < 15
    assert current(root) == "1.0.0" and not (root / "versions" / "1.2.0").exists()
    for path in (root / ".cas" / "downloads").iterdir():
        assert path.stat().st_size <= 1 << 20, path
    for s in proxy.seen(r"^/v1/objects/"):
        assert s.sent < 64 << 20


def test_bytes_past_content_length_are_never_read(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    proxy.fault(r"^/v1/", "overlong", extra=100_000, declare=False)
    up = init_client(tmp_path / "c", [proxy.url], world.server.store)
    assert up.update().current == "1.2.0" and up.verify()["ok"]


# --------------------------------------------------------------------------- slowloris

def test_slow_drip_object_is_cut_below_the_minimum_rate(world: World, proxy: HostileProxy, tmp_path: Path) -> None:
    """A sender that keeps the connection alive but drips bytes never trips the read timeout;
    the minimum average rate cuts it, and the update fails cleanly with nothing installed."""
    app = entry(world, "1.2.0", "bin/app")
    proxy.fault(obj(app["blake3"]), "slow", rate=20_000)
    root = tmp_path / "c"
    up = init_client(root, [proxy.url], world.server.store, min_rate_bytes_per_s=100_000, slow_grace_s=0.5,
                     read_timeout_s=10, attempts=2)
    started = time.monotonic()
    with pytest.raises(ClientError) as failure:
        up.update()
    assert time.monotonic() - started < 20
    assert "minimum rate" in json.dumps(failure.value.detail) + str(failure.value)
    assert current(root) is None and not any((root / "versions").iterdir())
