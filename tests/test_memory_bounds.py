"""What a long-running server keeps stays bounded (issue 14, item 7).

The soak found the server's open files (and with them its memory) rising: each
thread of the server's pool opened its own SQLite connection, the pool replaces
idle threads, and the connections of ended threads stayed open.

A later soak with allocation dumps (``benchmarks/soak.py --tracemalloc``, docs/performance.md)
found the rest: the dashboard's parsed manifests and file maps, bounded by count only (a
few releases of 200,000 files could take gigabytes), now also within ``dashboard_cache_bytes``
of manifest JSON; and memory freed but kept by glibc in per-thread malloc arenas, now capped by
``malloc_arena_max`` (the real server, its arenas counted by the ``CAS_MEMTRACE_DIR`` dump,
cas/http/memtrace.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import start_server

from cas.dashboard.figures import Figures, Lru
from cas.metadata import Release, SqliteMetadata
from casformat.canonical import canonical_bytes, document_digest


def _open_db_files(db: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(db)):
                count += 1
        except OSError:
            pass
    return count


def test_connections_of_ended_threads_are_closed(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    meta = SqliteMetadata(db)
    meta.get_root()
    before = _open_db_files(db)
    for _ in range(30):  # what the thread pool does over hours: threads come and go
        t = threading.Thread(target=meta.get_root)
        t.start()
        t.join()
    # This thread's connection and at most the last ended thread's (closed when the next opens).
    assert _open_db_files(db) <= before + 3, f"{_open_db_files(db)} files of meta.db open after 30 threads"
    meta.close()


def test_connections_stay_bounded_on_every_backend(metadata_url: str) -> None:
    from cas.metadata import open_metadata
    meta = open_metadata(metadata_url, Path("/nonexistent"))
    try:
        for _ in range(20):
            t = threading.Thread(target=meta.get_root)
            t.start()
            t.join()
        assert meta.open_connections() <= 3, f"{meta.open_connections()} connections after 20 ended threads"
    finally:
        close_all = getattr(meta, "close_all", meta.close)
        close_all()


SAFETY_NET = 60.0


def release(version: int, files: int) -> Release:
    signed = {"product": "app", "version": f"1.{version}.0",
              "files": [{"path": f"f/{i:05d}", "type": "file", "size": i + version,
                         "blake3": f"{version:016x}{i:048x}"} for i in range(files)]}
    manifest = canonical_bytes({"signed": signed, "signatures": []})
    return Release("app", f"1.{version}.0", document_digest(signed), manifest, "released", files, 0, 0.0, 0.0)


def test_dashboard_caches_stay_within_their_bytes_however_many_releases() -> None:
    bound = 200_000
    figures = Figures(releases_cached=256, cache_bytes=bound)
    releases = [release(v, 300) for v in range(60)]   # ~40 KB of manifest JSON each
    assert all(len(r.manifest) < bound for r in releases)
    for r in releases:
        blobs = figures.blobs(r)
        assert len(blobs) == 300                       # the figures themselves are whole
        assert figures.manifest(r)["signed"]["version"] == r.version
    for cache in (figures._manifests, figures._blobs):
        assert cache.weight <= bound, cache.weight
        assert 0 < len(cache) <= bound // len(releases[0].manifest)
    # The most recent stay; a manifest larger than the whole bound is used, not kept.
    assert releases[-1].manifest_digest in figures._blobs._items
    huge = release(99, 3000)
    assert len(huge.manifest) > bound
    assert len(figures.blobs(huge)) == 3000
    assert huge.manifest_digest not in figures._blobs._items
    assert figures._blobs.weight <= bound


def test_lru_count_and_weight_bounds() -> None:
    lru: Lru[int] = Lru(3, max_weight=10)
    for key in range(5):
        lru.get(key, lambda k=key: k, weight=4)  # type: ignore[misc]
    assert len(lru) == 2 and lru.weight == 8     # the weight bound, before the count bound
    assert lru.get(3, lambda: -1) == 3           # kept: not made again
    lru.get("big", lambda: 99, weight=11)
    assert "big" not in lru._items and lru.weight == 8
    plain: Lru[int] = Lru(3)
    for key in range(10):
        plain.get(key, lambda k=key: k, weight=1000)  # type: ignore[misc]
    assert len(plain) == 3


def _arenas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str) -> int:
    """Start the real server, make its thread pool busy, and count its malloc arenas."""
    dumps = tmp_path / "dumps"
    monkeypatch.setenv("CAS_MEMTRACE_DIR", str(dumps))
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    server = start_server(tmp_path / "store", config=config)
    try:
        def hammer() -> None:
            with server.client() as http:
                for _ in range(30):
                    assert http.get("/v1/products").status_code == 200
                    assert http.get("/healthz").status_code == 200
        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SAFETY_NET)
        server.proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + SAFETY_NET
        path = dumps / "snapshot-001.json"
        while not path.exists():
            assert time.monotonic() < deadline, "the server wrote no memory dump"
            time.sleep(0.05)
        time.sleep(0.1)  # written in one call; let it land
        arenas = json.loads(path.read_text())["arenas"]
        assert isinstance(arenas, int)
        return arenas
    finally:
        server.stop()


def test_cas_serve_keeps_to_malloc_arena_max(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _arenas(tmp_path / "capped", monkeypatch, "malloc_arena_max = 1\n") == 1
    # glibc's own default (malloc_arena_max = 0) gives the pool's threads arenas of their own:
    # the bound above is the setting's doing.
    assert _arenas(tmp_path / "glibc", monkeypatch, "malloc_arena_max = 0\n") > 1


def test_a_bad_tracemalloc_setting_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "CAS_TRACEMALLOC": "lots"}
    done = subprocess.run([sys.executable, "-m", "cas.cli", "serve", "--store", str(tmp_path / "store"),
                           "--port", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "cas: error: CAS_TRACEMALLOC must be a number of frames (0-50), not 'lots' (bad_environment)"]
