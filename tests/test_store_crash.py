"""The object store under concurrency, crashes and corruption; a publish killed mid-upload."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN, Server, run_cas, start_server

from cas.objectstore import OBJECT_MODE, FilesystemObjectStore
from cas.trees import scan_tree
from deltagen.digests import blake3_bytes, blake3_file
from fixtures import write_release

ROOT = Path(__file__).resolve().parent.parent
DATA = os.urandom(3 << 20) + b"tail"  # several CHUNKs, so writers interleave


def object_files(store: Path) -> list[Path]:
    return [p for p in (store / "objects").rglob("*") if p.is_file()]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


INGEST_SCRIPT = """
import sys, time
from pathlib import Path
from cas.objectstore import FilesystemObjectStore
store = FilesystemObjectStore(Path(sys.argv[1]))
data = Path(sys.argv[2]).read_bytes()
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
print(store.ingest_bytes(data).digest)
"""


def test_threads_and_processes_ingest_the_same_object(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store = FilesystemObjectStore(store_dir)
    source = tmp_path / "data"
    source.write_bytes(DATA)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", INGEST_SCRIPT, str(store_dir), str(source), str(go)],
                              stdout=subprocess.PIPE, text=True, env=_env()) for _ in range(4)]
    barrier = threading.Barrier(8)
    results: list[object] = []

    def worker() -> None:
        barrier.wait()
        try:
            results.append(store.ingest_bytes(DATA))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    time.sleep(0.3)  # let the processes import and wait on the go file
    go.touch()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    outputs = [p.communicate(timeout=30) for p in procs]
    digest = blake3_bytes(DATA)
    assert all(p.returncode == 0 for p in procs), outputs
    assert [o.strip() for o, _ in outputs] == [digest] * 4
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert all(r.digest == digest and r.size == len(DATA) for r in results)  # type: ignore[union-attr]
    files = object_files(store_dir)
    assert files == [store.path(digest)]
    assert files[0].read_bytes() == DATA
    assert stat.S_IMODE(files[0].stat().st_mode) == OBJECT_MODE
    assert list(store.tmp_dir.iterdir()) == []
    report = store.fsck()
    assert report.corrupt == [] and report.stray_temp == 0 and report.checked == 1


KILLED_WRITER = """
import sys, time
from pathlib import Path
from cas.objectstore import FilesystemObjectStore
store = FilesystemObjectStore(Path(sys.argv[1]))
data = Path(sys.argv[2]).read_bytes()
w = store.writer()
w.write(data[: len(data) // 2])
w._fh.flush()
print(w.temp_path, flush=True)
time.sleep(60)
w.write(data[len(data) // 2:])
w.commit()
"""


def test_writer_killed_mid_ingest_leaves_only_a_temp_file(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store = FilesystemObjectStore(store_dir)
    source = tmp_path / "data"
    source.write_bytes(DATA)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(store_dir), str(source)],
                            stdout=subprocess.PIPE, text=True, env=_env())
    temp = Path(proc.stdout.readline().strip())  # type: ignore[union-attr]
    assert temp.parent == store.tmp_dir and temp.stat().st_size == len(DATA) // 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    digest = blake3_bytes(DATA)
    assert not store.exists(digest) and store.size(digest) is None
    assert object_files(store_dir) == []
    assert store.missing([digest]) == [digest]
    assert list(store.tmp_dir.iterdir()) == [temp]
    assert store.fsck().stray_temp == 1
    assert store.sweep_temp(older_than=3600) == 0  # young temp files of live writers are kept
    time.sleep(0.02)
    assert store.sweep_temp(older_than=0) == 1
    assert list(store.tmp_dir.iterdir()) == []
    # The store works normally afterwards.
    assert store.ingest_bytes(DATA).created and store.path(digest).read_bytes() == DATA


def test_ingest_with_wrong_expected_digest_keeps_nothing(tmp_path: Path) -> None:
    store = FilesystemObjectStore(tmp_path / "store", max_object_bytes=1 << 20)
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    with pytest.raises(Exception, match="hashes to"):
        store.ingest_file(src, expected="0" * 64)
    with pytest.raises(Exception, match="limit"):
        store.ingest_bytes(b"x" * ((1 << 20) + 1))
    assert object_files(store.root) == [] and list(store.tmp_dir.iterdir()) == []


def _publish_local(store: Path, tree: Path, version: str) -> dict:
    return json.loads(run_cas("publish", str(tree), "--product", "app", "--version", version, "--store",
                              str(store), "--json").stdout)


@pytest.fixture
def local_store(tmp_path: Path, release_trees: list[Path]) -> Path:
    store = tmp_path / "store"
    run_cas("keys", "init", "--store", str(store))
    _publish_local(store, release_trees[0], "1.0.0")
    _publish_local(store, release_trees[1], "1.1.0")
    return store


def test_fsck_reports_and_quarantines_a_corrupt_object(local_store: Path) -> None:
    clean = run_cas("fsck", "--store", str(local_store), "--json")
    assert json.loads(clean.stdout)["corrupt"] == []
    victim = sorted(object_files(local_store))[len(object_files(local_store)) // 2]
    digest = victim.parent.name + victim.name
    os.chmod(victim, 0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    bad = run_cas("fsck", "--store", str(local_store), check=False)
    assert bad.returncode != 0
    assert digest in bad.stdout and "1 corrupt" in bad.stdout
    assert not victim.exists()
    quarantined = list((local_store / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith(digest)
    assert quarantined[0].read_bytes() == bytes(data)
    # Still failing: a release refers to the now missing object.
    again = run_cas("fsck", "--store", str(local_store), "--json", check=False)
    assert again.returncode != 0 and json.loads(again.stdout)["missing_referenced"] == [digest]


def test_stats_show_dedup_of_two_releases(local_store: Path, release_trees: list[Path]) -> None:
    data = json.loads(run_cas("stats", "--store", str(local_store), "--json").stdout)
    sizes: dict[str, int] = {}
    logical = 0
    for tree in release_trees[:2]:
        for e in scan_tree(tree).entries:
            if e["type"] == "file":
                logical += e["size"]
                sizes[e["blake3"]] = e["size"]
    unique = sum(sizes.values())
    stored = sum(p.stat().st_size for p in object_files(local_store))
    assert data["releases"] == 2
    assert data["logical_bytes"] == logical
    assert data["unique_referenced_bytes"] == unique
    assert data["stored_bytes"] == stored == unique
    assert data["objects"] == len(sizes)
    assert unique < logical  # the releases share files
    assert data["dedup_ratio"] == round(logical / unique, 3) and data["dedup_ratio"] > 1
    human = run_cas("stats", "--store", str(local_store)).stdout
    assert f"{logical:,}" in human and f"{stored:,}" in human and f"{logical / unique:.2f}x" in human


# --------------------------------------------------------------------------- killed publisher

def _metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _patches(server: Server) -> float:
    return _metric(server, "cas_http_requests_total", method="PATCH", endpoint="append_upload", status="202")


def test_publish_killed_mid_upload_resumes(tmp_path: Path) -> None:
    large = 48 << 20
    tree = tmp_path / "tree"
    write_release(tree, 0, large_bytes=large)
    server = start_server(tmp_path / "store")
    try:
        store = server.store
        cache = tmp_path / "cache"
        env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
        args = [sys.executable, "-m", "cas.cli", "publish", str(tree), "--product", "app", "--version",
                "1.0.0", "--server", server.url, "--token", ADMIN, "--key", str(store / "keys" / "release.pem"),
                "--json"]
        before_objects = set(object_files(store))
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        uploads = store / "uploads"
        upload_file = None
        deadline = time.monotonic() + 60
        # Kill once the first 8 MiB chunk is complete (the file grew past it) and before the last.
        while time.monotonic() < deadline and proc.poll() is None:
            sizes = {p: p.stat().st_size for p in uploads.iterdir()} if uploads.exists() else {}
            grown = [p for p, s in sizes.items() if (8 << 20) < s < large]
            if grown:
                proc.send_signal(signal.SIGKILL)
                upload_file = grown[0]
                break
            time.sleep(0.001)
        proc.wait(30)
        assert upload_file is not None, f"publish finished before it could be killed: {proc.communicate()}"
        assert proc.returncode == -signal.SIGKILL

        # The server truncates an interrupted append back to the last complete chunk.
        deadline = time.monotonic() + 10
        while upload_file.stat().st_size % (8 << 20) and time.monotonic() < deadline:
            time.sleep(0.02)
        offset = upload_file.stat().st_size
        assert 0 < offset < large and offset % (8 << 20) == 0

        with server.client(None) as http:
            assert http.get("/v1/products/app/releases/1.0.0/manifest").status_code == 404
            assert http.get("/v1/products/app/releases").status_code == 404  # product not recorded either
        fsck = run_cas("fsck", "--store", str(store), "--json")
        assert json.loads(fsck.stdout)["corrupt"] == []
        for path in set(object_files(store)) - before_objects:
            assert blake3_file(path) == path.parent.name + path.name
        state_files = list((cache / "deltacas" / "uploads").glob("*.json"))
        assert len(state_files) == 1
        state = json.loads(state_files[0].read_text())
        big_digest = blake3_file(tree / "share" / "big.bin")
        assert state[big_digest].endswith("/" + upload_file.name)

        patches_before = _patches(server)
        starts_before = _metric(server, "cas_http_requests_total", method="POST", endpoint="start_upload")
        rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        result = json.loads(rerun.stdout)
        assert result["created"] is True
        # Resumed: the same upload went on from the server's offset; no new upload was started.
        remaining_chunks = -(-(large - offset) // (8 << 20))
        assert _patches(server) - patches_before == remaining_chunks
        assert _metric(server, "cas_http_requests_total", method="POST", endpoint="start_upload") == starts_before
        assert not upload_file.exists()  # completed into the object store
        assert json.loads(state_files[0].read_text()) == {}

        with server.client(None) as http:
            envelope = http.get("/v1/products/app/releases/1.0.0/manifest").json()
        assert envelope["signed"]["files"] == scan_tree(tree).entries
        assert run_cas("fsck", "--store", str(store), "--json").returncode == 0
        out = tmp_path / "out"
        run_cas("checkout", "app", "1.0.0", str(out), "--store", str(store))
        for e in envelope["signed"]["files"]:
            if e["type"] == "file":
                assert blake3_file(out / e["path"]) == e["blake3"] == blake3_file(tree / e["path"])
            else:
                assert os.readlink(out / e["path"]) == e["target"]
    finally:
        server.stop()
