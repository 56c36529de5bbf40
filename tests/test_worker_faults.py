"""What kills and stops leave behind around the delta worker (issue 14, item 2).

Real processes: ``cas serve`` killed with SIGKILL takes its ``cas deltas worker`` with it;
SIGTERM ends the running build, removes its ``tmp/delta-*`` and hands the job back; two
workers on one store never build at once; old temp directories are swept; a
compress-only build runs under the same budget (a killable worker) as a patch build.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import start_server
from proc_helpers import process_alive, wait_until

import deltagen.budget
from cas import deltas, publisher, releases
from cas.config import load_config
from cas.keys import init_keys, key_path, load_private_key
from cas.objectstore import FilesystemObjectStore
from cas.repo import Repo, open_repo
from cas.trees import scan_tree
from deltagen import BudgetExceeded, DeltaLimits

ROOT = Path(__file__).resolve().parent.parent
_LETTERS = bytes(range(97, 113)) * 16   # byte -> one of 16 letters: compressible, slow at level 19




def _procs(marker: bytes) -> list[int]:
    """Live processes whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdecimal():
            try:
                if marker in Path(f"/proc/{entry}/cmdline").read_bytes() and process_alive(int(entry)):
                    found.append(int(entry))
            except OSError:
                pass
    return found


def _worker_of(server_pid: int) -> int | None:
    for pid in _procs(b"cas.deltas_worker"):  # cas serve starts it as python -m cas.deltas_worker
        with open(f"/proc/{pid}/stat") as fh:
            if int(fh.read().split(") ")[1].split()[1]) == server_pid:
                return pid
    return None


def _big_tree(dest: Path, mib: int) -> None:
    (dest / "data").mkdir(parents=True, exist_ok=True)
    (dest / "data" / "big.bin").write_bytes(random.Random(3).randbytes(mib << 20).translate(_LETTERS))


def _jobs(store: Path) -> list[tuple[str, str | None]]:
    conn = sqlite3.connect(store / "meta.db")
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT state, owner FROM delta_jobs")]
    finally:
        conn.close()


def test_kill_9_of_cas_serve_takes_its_delta_worker_with_it(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "store")
    worker = None
    try:
        assert wait_until(lambda: _worker_of(srv.proc.pid) is not None, 20), "the server started no delta worker"
        worker = _worker_of(srv.proc.pid)
        assert worker is not None
        time.sleep(1.0)  # the worker has armed its parent-death signal
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
        assert wait_until(lambda: not process_alive(worker), 15), "the delta worker outlived the killed server"
    finally:
        if worker is not None and process_alive(worker):
            os.kill(worker, signal.SIGKILL)
        srv.stop()


def test_sigterm_of_cas_serve_ends_the_build_and_leaves_no_temp_dir(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "store", config="delta_poll_seconds = 0.2\n")
    tmp = srv.store / "tmp"
    worker = None
    try:
        _big_tree(tmp_path / "t0", 24)
        srv.cas("publish", str(tmp_path / "t0"), "--product", "app", "--version", "1.0", "--key",
                str(srv.store / "keys" / "release.pem"), "--status", "released")
        worker = _worker_of(srv.proc.pid)
        assert worker is not None
        # Mid-build: the worker's temp directory exists (24 MiB at level 19 takes seconds).
        assert wait_until(lambda: list(tmp.glob("delta-*")), 60), "no build in progress"
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(30)
        assert wait_until(lambda: not process_alive(worker), 15)
        assert list(tmp.glob("delta-*")) == [], "the stopped build left its temp directory"
        assert wait_until(lambda: not _procs(str(tmp).encode()), 10), "a build worker outlived the stop"
        states = [state for state, _ in _jobs(srv.store)]
        assert "running" not in states and "failed" not in states, states  # handed back, not failed
    finally:
        if worker is not None and process_alive(worker):
            os.kill(worker, signal.SIGKILL)
        srv.stop()


def _publish_local(repo: Repo, tree: Path, version: str) -> None:
    key = load_private_key(key_path(repo.config.store, "release"))
    scanned = scan_tree(tree)
    publisher.publish_local(repo, scanned, publisher.signed_manifest("app", version, scanned, key))
    for step in ("testing", "released"):
        releases.move_status(repo, "app", version, step, "test")


def test_two_workers_on_one_store_never_build_at_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "config.toml").write_text("delta_workers = 1\ndelta_poll_seconds = 0.1\ndelta_bundles = false\n")
    repo = open_repo(load_config(store))
    init_keys(store, repo.meta)
    repo.reload_keys()
    for v in (0, 1):
        tree = tmp_path / f"t{v}"
        for i in range(24):
            path = tree / f"f{i:02d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            body = random.Random(i).randbytes(300_000).translate(_LETTERS)
            path.write_bytes(body[:1000 * v] + random.Random(100 + v).randbytes(500) + body[1000 * v:])
        _publish_local(repo, tree, f"1.{v}")
    assert len(_jobs(store)) > 30
    env = {k: v for k, v in os.environ.items() if k != "DELTACAS_PARENT_PID"}
    workers = [subprocess.Popen([sys.executable, "-m", "cas.cli", "deltas", "worker", "--store", str(store)],
                                cwd=ROOT, env=env) for _ in range(2)]
    try:
        assert wait_until(lambda: all(s == "done" for s, _ in _jobs(store)), 240), _jobs(store)
        assert all(w.poll() is None for w in workers), "a worker exited instead of waiting"
        owners = {owner for _, owner in _jobs(store)}
        assert len(owners) == 1, f"two workers built on one store: {owners}"
        assert owners.pop().endswith(tuple(f":{w.pid}" for w in workers))
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        codes = [w.wait(30) for w in workers]
    assert codes == [0, 0], "SIGTERM stops a waiting worker and a building one cleanly"


def test_sweep_removes_old_temp_directories_and_keeps_fresh_ones(tmp_path: Path) -> None:
    store = FilesystemObjectStore(tmp_path / "store")
    old = time.time() - 7200
    stale = store.tmp_dir / "delta-killed"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "compressed.zst").write_bytes(b"x" * 100)
    for p in (stale / "sub" / "compressed.zst", stale / "sub", stale):
        os.utime(p, (old, old))
    live = store.tmp_dir / "delta-live"   # an old directory a build is still writing into
    live.mkdir()
    (live / "out").write_bytes(b"y")
    os.utime(live, (old, old))
    fresh = store.tmp_dir / "bundle-fresh"
    fresh.mkdir()
    assert store.sweep_temp() == 1
    assert not stale.exists() and live.exists() and fresh.exists()


@pytest.fixture
def local_repo(tmp_path: Path) -> Repo:
    return open_repo(load_config(tmp_path / "store"))


def test_compress_only_build_runs_in_a_budgeted_worker(local_repo: Repo, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(random.Random(9).randbytes(3 << 20).translate(_LETTERS))
    target = local_repo.objects.ingest_file(source).digest
    calls: list[str] = []
    real = deltagen.budget.build_within

    def spy(job: Any, *args: Any, **kw: Any) -> Any:
        calls.append(job)
        return real(job, *args, **kw)

    monkeypatch.setattr(deltagen.budget, "build_within", spy)
    rows = deltas.build_job(local_repo, "", target, DeltaLimits())
    assert calls == ["compressed"], "a compress-only build over inprocess_max_bytes ran in the delta worker"
    assert rows and rows[0]["kind"] == "compressed"
    with pytest.raises(BudgetExceeded):  # the time budget applies too
        deltas.build_job(local_repo, "", target, DeltaLimits(time_budget_s=0.0))
    assert list(local_repo.objects.tmp_dir.glob("delta-*")) == []
