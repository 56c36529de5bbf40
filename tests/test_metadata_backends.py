"""The metadata contract, run against every backend (SQLite and PostgreSQL).

Races are played for real: several threads, and several processes each with its own
connections, publishing, moving channels and claiming jobs at once.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import pytest

from cas.errors import Conflict
from cas.metadata import MIGRATIONS, Channel, Metadata, SqliteMetadata, StaleWrite, open_metadata

FILES = [{"path": "bin/app", "type": "file", "blake3": "a" * 64, "sha256": "b" * 64, "size": 10, "mode": 493},
         {"path": "lib/x.so", "type": "file", "blake3": "c" * 64, "sha256": "d" * 64, "size": 5, "mode": 420},
         {"path": "lib/y.so", "type": "symlink", "target": "x.so"}]


def open_meta(url: str) -> Metadata:
    return open_metadata(url, Path("/nonexistent"))


def seed(m: Metadata) -> Metadata:
    """A product with a release, which channels refer to."""
    m.insert_release("app", "1.0", "e" * 64, b"{}", FILES, "ci")
    return m


@pytest.fixture
def meta(metadata_url: str) -> Any:
    m = open_meta(metadata_url)
    yield m
    _close(m)


def _close(m: Metadata) -> None:
    getattr(m, "close_all", m.close)()


def in_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(i)`` in ``n`` threads released together; results in order."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def channel(seq: int, release: str = "1.0", name: str = "stable") -> Channel:
    now = time.time()
    return Channel("app", name, release, seq, "released", f"doc-{seq}".encode(), f'"etag-{seq}"',
                   now + 3600, now)


def move_channel(m: Metadata, moves: int, name: str = "stable") -> list[int]:
    """Make ``moves`` successful compare-and-set writes, retrying lost ones; the sequences written."""
    written: list[int] = []
    while len(written) < moves:
        current = m.get_channel("app", name)
        seq = (current.sequence if current else 0) + 1
        try:
            m.put_channel(channel(seq, name=name))
        except StaleWrite:
            continue
        written.append(seq)
    return written


# --------------------------------------------------------------------------- child processes

def _proc_move_channel(url: str, moves: int) -> list[int]:
    m = open_meta(url)
    try:
        return move_channel(m, moves)
    finally:
        _close(m)


def _proc_claim_all(url: str, owner: str) -> list[tuple[str, str]]:
    m = open_meta(url)
    taken = []
    try:
        while (job := m.claim_job(owner, 600, 3)) is not None:
            taken.append(job)
            m.finish_job(job[0], job[1], owner, [{"base": job[0], "kind": "patch", "algorithm": "zstd",
                                                   "object": "f" * 64, "size": 1}])
        return taken
    finally:
        _close(m)


def _proc_publish(url: str, version: str) -> bool:
    m = open_meta(url)
    try:
        return m.insert_release("app", version, "e" * 64, b"{}", FILES, "ci") is None
    finally:
        _close(m)


def processes(n: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(n, mp_context=get_context("spawn"))


# --------------------------------------------------------------------------- schema

def test_fresh_store_is_at_the_latest_schema_and_reopens(metadata_url: str) -> None:
    m = open_meta(metadata_url)
    assert m.schema_version() == len(MIGRATIONS)
    m.put_root(1, b"root-1")
    _close(m)
    again = open_meta(metadata_url)  # migrations are not re-applied
    assert again.schema_version() == len(MIGRATIONS) and again.get_root() == (1, b"root-1")
    _close(again)


def _set_schema(url: str, version: int) -> None:
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url[len("sqlite:///"):])
        conn.execute(f"PRAGMA user_version = {version}")
        conn.close()
    else:
        import psycopg
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE schema_version SET version = %s", (version,))


def test_a_newer_schema_is_refused(metadata_url: str) -> None:
    _close(open_meta(metadata_url))
    _set_schema(metadata_url, len(MIGRATIONS) + 1)
    with pytest.raises(RuntimeError, match="newer than this program"):
        open_meta(metadata_url)


def test_an_old_store_is_migrated_in_place(metadata_url: str) -> None:
    """A store left at schema 5 (before the channel counter) comes up to date, data kept."""
    m = open_meta(metadata_url)
    m.insert_release("app", "1.0", "e" * 64, b"{}", FILES, "ci")
    m.put_channel(channel(1))
    _close(m)
    # Undo migrations 6.. (append a line here with every new migration).
    undo = ["ALTER TABLE uploads DROP COLUMN reserved",
            "DROP TABLE upload_parts", "DROP TABLE client_pin_events", "DROP TABLE client_pins",
            "DROP TABLE channel_policies",
            "DROP TABLE index_chunks", "DROP INDEX release_files_chunk_index",
            "ALTER TABLE release_files DROP COLUMN chunk_index_size",
            "ALTER TABLE release_files DROP COLUMN chunk_index",
            "DROP TABLE build_pins",
            "DROP INDEX uploads_owner", "ALTER TABLE uploads DROP COLUMN owner", "ALTER TABLE uploads DROP COLUMN bytes",
            "DROP INDEX reports_reporter", "ALTER TABLE reports DROP COLUMN counted",
            "ALTER TABLE reports DROP COLUMN reporter", "DROP TABLE counters", "DROP TABLE gc_tombstones",
            "DROP TABLE gc_runs", "DROP TABLE bundles", "ALTER TABLE delta_jobs DROP COLUMN kind"]
    assert len(undo) >= len(MIGRATIONS) - 5, "undo the new migration above"
    if metadata_url.startswith("sqlite:"):
        conn = sqlite3.connect(metadata_url[len("sqlite:///"):])
        for statement in undo:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 5")
        conn.commit()
        conn.close()
    else:
        import psycopg
        with psycopg.connect(metadata_url, autocommit=True) as conn:
            for statement in undo:
                conn.execute(statement)
            conn.execute("UPDATE schema_version SET version = 5")
    m = open_meta(metadata_url)
    assert m.schema_version() == len(MIGRATIONS)
    assert m.get_release("app", "1.0") is not None and m.get_channel("app", "stable").sequence == 1
    m.put_channel(channel(2))
    assert m.channels_counter() == 1
    _close(m)


def test_migrations_run_once_when_replicas_start_together(postgres_url: str) -> None:
    metas = in_threads(6, lambda i: open_meta(postgres_url))
    assert {m.schema_version() for m in metas} == {len(MIGRATIONS)}
    for m in metas:
        _close(m)


def test_both_backends_have_the_same_tables_and_columns(postgres_url: str, tmp_path: Path) -> None:
    """One source of truth: PostgreSQL's schema is translated from the SQLite migrations."""
    lite = SqliteMetadata(tmp_path / "meta.db")
    pg = open_meta(postgres_url)

    def columns(m: Metadata, tables: list[str]) -> dict[str, list[str]]:
        out = {}
        for t in tables:
            cur = m._conn().execute(f"SELECT * FROM {t} WHERE 1 = 0")
            out[t] = [d[0] for d in cur.description]
        return out

    tables = [r[0] for r in lite._conn().execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    pg_tables = [r[0] for r in pg._conn().execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name")]
    assert sorted([*tables, "schema_version"]) == sorted(pg_tables)
    assert columns(lite, tables) == columns(pg, tables)
    _close(pg)


# --------------------------------------------------------------------------- releases

def test_release_insert_read_and_idempotent_republish(meta: Metadata) -> None:
    assert meta.insert_release("app", "1.0", "e" * 64, b'{"m": 1}', FILES, "ci") is None
    existing = meta.insert_release("app", "1.0", "f" * 64, b"other", FILES, "ci")
    assert existing is not None and existing.manifest == b'{"m": 1}' and existing.manifest_digest == "e" * 64
    rel = meta.get_release("app", "1.0")
    assert rel is not None and (rel.status, rel.file_count, rel.logical_bytes, rel.critical) == ("draft", 3, 15, False)
    assert meta.product_exists("app") and not meta.product_exists("nope")
    assert [p["name"] for p in meta.list_products()] == ["app"] and meta.list_products()[0]["releases"] == 1
    assert {f["path"]: f["type"] for f in meta.release_files("app", "1.0")} == {
        "bin/app": "file", "lib/x.so": "file", "lib/y.so": "symlink"}
    assert sorted(meta.referenced_objects()) == [("a" * 64, 10), ("c" * 64, 5)]
    assert meta.logical_bytes() == 15
    meta.insert_release("app", "1.1", "e" * 64, b"{}", FILES, "ci", status="testing")
    assert [r.version for r in meta.list_releases("app")] == ["1.0", "1.1"]
    assert [h["reason"] for h in meta.release_history("app", "1.1")] == ["published"]


def test_status_compare_and_set_and_critical(meta: Metadata) -> None:
    meta.insert_release("app", "1.0", "e" * 64, b"{}", FILES, "ci")
    meta.set_status("app", "1.0", "draft", "testing", "qa", "ok")
    with pytest.raises(StaleWrite):
        meta.set_status("app", "1.0", "draft", "released", "qa", "stale")
    meta.set_critical("app", "1.0", True, "ops", "cve")
    assert meta.critical_versions("app", ["1.0", "2.0"]) == ["1.0"]
    assert [(h["from"], h["to"]) for h in meta.release_history("app", "1.0")] == [
        (None, "draft"), ("draft", "testing"), ("testing", "testing")]


def test_concurrent_status_moves_one_wins(meta: Metadata) -> None:
    meta.insert_release("app", "1.0", "e" * 64, b"{}", FILES, "ci")

    def move(i: int) -> bool:
        try:
            meta.set_status("app", "1.0", "draft", "testing", f"w{i}", "race")
            return True
        except StaleWrite:
            return False

    assert sum(in_threads(8, move)) == 1
    assert len(meta.release_history("app", "1.0")) == 2


def test_two_publishes_of_one_version_record_it_once(meta: Metadata) -> None:
    results = in_threads(8, lambda i: meta.insert_release("app", "1.0", "e" * 64, b"{}", FILES, f"ci{i}"))
    assert sum(r is None for r in results) == 1
    assert all(r is None or r.version == "1.0" for r in results)
    assert len(meta.list_releases("app")) == 1 and len(meta.release_history("app", "1.0")) == 1


def test_concurrent_publishes_from_processes(metadata_url: str) -> None:
    _close(open_meta(metadata_url))
    versions = ["1.0", "1.0", "1.0", "1.1", "1.2", "1.1"]
    with processes(len(versions)) as pool:
        created = list(pool.map(_proc_publish, [metadata_url] * len(versions), versions))
    assert sum(created) == 3
    m = open_meta(metadata_url)
    assert sorted(r.version for r in m.list_releases("app")) == ["1.0", "1.1", "1.2"]
    _close(m)


# --------------------------------------------------------------------------- channels

def test_channel_compare_and_set(meta: Metadata) -> None:
    seed(meta)
    with pytest.raises(StaleWrite):
        meta.put_channel(channel(2))  # the first document is sequence 1
    meta.put_channel(channel(1))
    with pytest.raises(StaleWrite):
        meta.put_channel(channel(1))
    with pytest.raises(StaleWrite):
        meta.put_channel(channel(3))
    meta.put_channel(channel(2, release="1.1"))
    ch = meta.get_channel("app", "stable")
    assert ch is not None and (ch.sequence, ch.release, ch.document, ch.etag) == (2, "1.1", b"doc-2", '"etag-2"')
    assert [c.channel for c in meta.list_channels("app")] == ["stable"] == [c.channel for c in meta.list_channels()]
    assert meta.channels_pointing_at("app", "1.1") == ["stable"]
    assert meta.was_offered("app", "1.0") and meta.was_offered("app", "1.1") and not meta.was_offered("app", "9")
    assert meta.channels_counter() == 2


def test_data_version_moves_when_another_writer_moves_a_channel(metadata_url: str) -> None:
    reader, writer = open_meta(metadata_url), seed(open_meta(metadata_url))
    before = reader.data_version()
    assert reader.data_version() == before
    writer.put_channel(channel(1))
    assert reader.data_version() != before
    _close(reader)
    _close(writer)


def test_channel_sequences_under_concurrent_threads(meta: Metadata) -> None:
    seed(meta)
    written = in_threads(8, lambda i: move_channel(meta, 5))
    sequences = sorted(s for w in written for s in w)
    assert sequences == list(range(1, 41))  # no repeats, no gaps
    assert meta.get_channel("app", "stable").sequence == 40
    assert meta.channels_counter() == 40


def test_channel_sequences_under_concurrent_processes(metadata_url: str) -> None:
    _close(seed(open_meta(metadata_url)))
    with processes(4) as pool:
        written = list(pool.map(_proc_move_channel, [metadata_url] * 4, [6] * 4))
    assert sorted(s for w in written for s in w) == list(range(1, 25))
    m = open_meta(metadata_url)
    ch = m.get_channel("app", "stable")
    assert ch.sequence == 24 and ch.document == b"doc-24"
    _close(m)


def test_first_document_of_a_channel_is_written_once(meta: Metadata) -> None:
    seed(meta)
    def first(i: int) -> bool:
        try:
            meta.put_channel(channel(1, name="new"))
            return True
        except StaleWrite:
            return False

    assert sum(in_threads(8, first)) == 1


# --------------------------------------------------------------------------- delta jobs

def test_jobs_queue_claim_finish(meta: Metadata) -> None:
    assert meta.enqueue_jobs([("", "t1"), ("b1", "t1"), ("", "t1")]) == 2
    assert meta.enqueue_jobs([("", "t1"), ("b2", "t2")]) == 1
    assert meta.enqueue_jobs([]) == 0
    first = meta.claim_job("w1", 600, 3)
    assert first == ("", "t1")
    meta.finish_job("", "t1", "w1", [{"base": "", "kind": "compressed", "algorithm": "zstd", "object": "o" * 64,
                                      "size": 7, "build_seconds": 0.1}])
    meta.finish_job("", "t1", "w1", [{"base": "", "kind": "compressed", "algorithm": "zstd", "object": "p" * 64,
                                      "size": 6}])  # a rebuild replaces the recipe
    assert meta.recipes_for(["t1"])["t1"] == [{"base": "", "target": "t1", "kind": "compressed",
                                                "algorithm": "zstd", "object": "p" * 64, "size": 6}]
    second = meta.claim_job("w1", 600, 3)
    meta.finish_job(*second, "w1", [], error="boom")
    assert meta.job_states([("", "t1"), second, ("x", "y")]) == {("", "t1"): "done", second: "failed"}
    third = meta.claim_job("w2", 600, 3)
    meta.release_jobs("w2")  # clean shutdown: back in the queue, the attempt not counted
    summary = meta.jobs_summary()
    assert summary["counts"] == {"queued": 1, "running": 0, "done": 1, "failed": 1}
    assert summary["queued"][0]["attempts"] == 0 and (summary["queued"][0]["base"], summary["queued"][0]["target"]) == third
    meta.record_plan("app", "1.0", "1.1")
    meta.record_plan("app", "1.0", "1.1")
    assert meta.planned("app", "1.0", "1.1") and not meta.planned("app", "1.1", "1.0")


def test_expired_lease_is_taken_over_and_attempts_are_capped(meta: Metadata) -> None:
    meta.enqueue_jobs([("b", "t")])
    assert meta.claim_job("dead", -1, 2) == ("b", "t")  # lease already over
    assert meta.claim_job("alive", -1, 2) == ("b", "t")
    assert meta.claim_job("third", 600, 2) is None  # two attempts used
    assert meta.jobs_summary()["running"][0]["owner"] == "alive"


def test_each_job_is_claimed_once_by_concurrent_threads(meta: Metadata) -> None:
    pairs = [(f"b{i}", f"t{i}") for i in range(60)]
    meta.enqueue_jobs(pairs)

    def work(i: int) -> list[tuple[str, str]]:
        taken = []
        while (job := meta.claim_job(f"w{i}", 600, 3)) is not None:
            taken.append(job)
            meta.finish_job(*job, f"w{i}", [])
        return taken

    taken = [j for t in in_threads(8, work) for j in t]
    assert sorted(taken) == sorted(pairs)
    assert meta.jobs_summary()["counts"]["done"] == 60


def test_each_job_is_claimed_once_by_concurrent_processes(metadata_url: str) -> None:
    m = open_meta(metadata_url)
    pairs = [(f"b{i}", f"t{i}") for i in range(80)]
    m.enqueue_jobs(pairs)
    with processes(4) as pool:
        taken = [j for t in pool.map(_proc_claim_all, [metadata_url] * 4, [f"p{i}" for i in range(4)]) for j in t]
    assert sorted(taken) == sorted(pairs)
    summary = m.jobs_summary(limit=1000)
    assert summary["counts"]["done"] == 80
    assert sum(len(v) for v in m.recipes_for([t for _, t in pairs]).values()) == 80
    _close(m)


# --------------------------------------------------------------------------- uploads, roots, reports

def test_uploads(meta: Metadata) -> None:
    meta.create_upload("u1")
    meta.create_upload("u2")
    assert meta.upload_exists("u1") and not meta.upload_exists("u3")
    meta.touch_upload("u1")
    assert sorted(meta.all_uploads()) == ["u1", "u2"]
    assert meta.stale_uploads(-10) and meta.stale_uploads(3600) == []
    assert meta.delete_upload("u1") and not meta.delete_upload("u1")
    assert meta.all_uploads() == ["u2"]


def _held(meta: Metadata, owner: str) -> int:
    """What an owner's uploads hold and reserve: what its quota is checked against."""
    row = meta._conn().execute("SELECT COALESCE(SUM(bytes + reserved), 0) FROM uploads "  # type: ignore[attr-defined]
                               "WHERE owner = ?", (owner,)).fetchone()
    return int(row[0])


def test_upload_byte_reservations_stay_within_the_quota(meta: Metadata) -> None:
    meta.create_upload("a", "tok")
    meta.create_upload("b", "tok")
    meta.create_upload("c", "other")
    assert meta.reserve_upload_bytes("a", "tok", 600, 1000)
    assert not meta.reserve_upload_bytes("b", "tok", 600, 1000)   # 1200 > 1000: nothing reserved
    assert _held(meta, "tok") == 600
    assert meta.reserve_upload_bytes("b", "tok", 400, 1000)
    assert meta.reserve_upload_bytes("c", "other", 1000, 1000)    # another owner's quota
    assert meta.reserve_upload_bytes("a", "tok", 100, 1000)       # a reservation shrinks too
    assert _held(meta, "tok") == 500
    assert not meta.reserve_upload_bytes("gone", "tok", 1, 1000)  # no such upload


def test_append_reservations_of_shared_uploads_stay_within_the_quota(meta: Metadata) -> None:
    """A shared upload's bytes are its recorded parts; appends in flight reserve on top
    (``reserved``), counted by the quota, from any number of threads (replicas) at once."""
    meta.create_upload("a", "tok")
    meta.create_upload("b", "tok")
    assert meta.record_upload_part("a", 0, 300, "k1")
    assert meta.reserve_append_bytes("a", "tok", 500, 1000)      # 300 held + 500 reserved
    assert _held(meta, "tok") == 800 and meta.upload_size("a") == 300  # the offset is the parts
    assert not meta.reserve_append_bytes("b", "tok", 201, 1000)  # 1001 > 1000: nothing reserved
    assert meta.reserve_append_bytes("b", "tok", 200, 1000)
    meta.release_append_bytes("a", 500)
    meta.release_append_bytes("b", 999)                          # never below zero
    assert _held(meta, "tok") == 300
    assert not meta.reserve_append_bytes("gone", "tok", 1, 1000)
    # Twenty appends of 100 bytes at once against the 700 bytes left: exactly seven fit.
    assert sum(in_threads(20, lambda i: meta.reserve_append_bytes("b", "tok", 100, 1000))) == 7
    assert _held(meta, "tok") == 1000


def test_roots(meta: Metadata) -> None:
    assert meta.get_root() is None
    meta.put_root(1, b"one")
    meta.put_root(2, b"two")
    assert meta.get_root() == (2, b"two") and meta.get_root(1) == (1, b"one") and meta.get_root(3) is None
    with pytest.raises(Conflict) as refused:
        meta.put_root(2, b"again")
    assert refused.value.code == "root_exists"
    assert meta.get_root(2) == (2, b"two")


def test_reports(meta: Metadata) -> None:
    now = time.time()
    meta.add_report("app", "c1", "1.0", "1.1", "success", "", at=now - 10)
    meta.add_report("app", "c2", "1.0", "1.1", "health_failed", "x", at=now - 5)
    meta.add_report("app", "c2", "1.0", "1.1", "success", "", at=now - 1)
    meta.add_report("app", "c3", None, "1.2", "success", "")
    assert [r["client_id"] for r in meta.reports("app")] == ["c3", "c2", "c2", "c1"]
    assert len(meta.reports("app", "1.1", limit=2)) == 2
    # Each client once, with its latest outcome in the window (c2 failed, then succeeded).
    assert meta.report_outcomes("app", "1.1", now - 6, now) == {"success": 1}
    assert meta.report_outcomes("app", "1.1", now - 6, now - 2) == {"health_failed": 1}
    assert meta.latest_outcomes("app", "1.1", now - 100) == {"c1": ("success", False), "c2": ("success", True)}


def test_reports_counted_per_reporter(meta: Metadata) -> None:
    """D9: a reporter's distinct client ids count for the gate up to a cap per window;
    uncounted reports are stored but the gate's queries skip them."""
    now = time.time()
    cap = {"ids_per_reporter": 2, "window_seconds": 3600}
    assert meta.add_report("app", "a", "1.0", "1.1", "success", "", now, "t@1", True, **cap)
    assert meta.add_report("app", "b", "1.0", "1.1", "success", "", now, "t@1", True, **cap)
    assert not meta.add_report("app", "c", "1.0", "1.1", "success", "", now, "t@1", True, **cap)
    assert meta.add_report("app", "a", "1.0", "1.1", "failed", "", now, "t@1", True, **cap)   # a known id
    assert meta.add_report("app", "c", "1.0", "1.1", "success", "", now, "t@2", True, **cap)  # another source
    assert not meta.add_report("app", "d", "1.0", "1.1", "failed", "", now, "anonymous@3", False, **cap)
    assert meta.report_outcomes("app", "1.1", now - 1, now + 1) == {"failed": 1, "success": 2}
    assert set(meta.latest_outcomes("app", "1.1", now - 1)) == {"a", "b", "c"}
    stored = meta.reports("app", "1.1")
    assert len(stored) == 6 and sum(1 for r in stored if not r["counted"]) == 2


# --------------------------------------------------------------------------- rollouts, webhooks

def _rollout_row(now: float) -> dict[str, Any]:
    return {"product": "app", "channel": "stable", "strategy": "stages", "release": "1.1", "manifest": "m" * 64,
            "previous": "1.0", "previous_manifest": "n" * 64, "salt": "ab", "stages": "[5, 100]", "stage": 0,
            "stage_started": now, "stage_seconds": 60, "max_failure_bp": 500, "min_reports": 20,
            "auto_abort": True, "clients": None, "batch_size": None, "max_failures": None,
            "max_concurrent": None, "state": "running", "reason": "", "revision": 0, "started": now,
            "updated": now, "actor": "ops"}


def test_rollout_insert_and_revision_compare_and_set(meta: Metadata) -> None:
    seed(meta)
    now = time.time()
    meta.put_channel(channel(1))
    rid = meta.insert_rollout(_rollout_row(now), channel(2), ("started", 5, "ops", "go", now),
                              [("http://hook", "rollout.started", b"{}")])
    with pytest.raises(StaleWrite):  # one active rollout per channel
        meta.insert_rollout(_rollout_row(now), None, ("started", 5, "ops", "again", now))
    row = meta.get_rollout(rid)
    assert row is not None and row["revision"] == 0 and row["auto_abort"] == 1
    assert meta.latest_rollout("app", "stable", active_only=True)["id"] == rid
    assert [r["id"] for r in meta.active_rollouts("app", "1.1")] == [rid]
    assert meta.get_channel("app", "stable").sequence == 2 and meta.was_offered("app", "1.1")

    def step(i: int) -> bool:
        try:
            meta.update_rollout(rid, 0, {"stage": 1, "updated": now}, channel(3), ("advanced", 100, f"w{i}", "", now))
            return True
        except StaleWrite:
            return False

    assert sum(in_threads(6, step)) == 1
    assert meta.get_rollout(rid)["revision"] == 1 and meta.get_channel("app", "stable").sequence == 3
    assert [e["event"] for e in meta.rollout_events(rid)] == ["started", "advanced"]
    with pytest.raises(StaleWrite):  # the rollout moved on, the channel too: nothing written
        meta.update_rollout(rid, 1, {"state": "aborted"}, channel(3), None)
    assert meta.get_rollout(rid)["state"] == "running"
    meta.update_rollout(rid, 1, {"state": "aborted"}, None, None)
    assert meta.latest_rollout("app", "stable", active_only=True) is None
    assert meta.webhook_summary()["counts"]["pending"] == 1


def test_webhook_deliveries_are_claimed_once(meta: Metadata) -> None:
    now = time.time()
    meta.enqueue_webhooks([("http://hook", "e", f"body{i}".encode()) for i in range(30)], now)
    claimed = in_threads(6, lambda i: [r["id"] for r in meta.claim_webhooks(now + 1, 600, limit=5)])
    ids = [i for c in claimed for i in c]
    assert len(ids) == len(set(ids)) == 30
    first = meta.claim_webhooks(now + 10_000, 600, limit=1)[0]
    assert isinstance(first["body"], bytes)
    meta.finish_webhook(first["id"], "delivered", 200, None, now, now)
    assert meta.webhook_summary()["counts"]["delivered"] == 1


def test_pins_are_written_with_their_channel_document_or_not_at_all(meta: Metadata) -> None:
    """Per-node rollback (cas/pins.py): pin rows, their events and the channel document in one
    transaction; a stale document writes no pin."""
    seed(meta)
    meta.insert_release("app", "0.9", "f" * 64, b"{}", FILES, "ci")
    meta.put_channel(channel(1))
    meta.write_pins(channel(2), ["b", "a"], [], "0.9", "f" * 64, "token:ops", "rack 4")
    assert [(p["client_id"], p["release"], p["actor"]) for p in meta.channel_pins("app", "stable")] == [
        ("a", "0.9", "token:ops"), ("b", "0.9", "token:ops")]
    assert meta.pinned_channels("app", "0.9") == ["stable"] and meta.pinned_versions("app") == {"0.9"}
    assert meta.was_offered("app", "0.9")
    with pytest.raises(StaleWrite):
        meta.write_pins(channel(2), ["c"], ["a"], "0.9", "f" * 64, "token:ops", "stale")
    assert [p["client_id"] for p in meta.channel_pins("app", "stable")] == ["a", "b"]
    meta.write_pins(channel(3), [], ["a"], None, None, "token:ops", "fixed")
    assert [p["client_id"] for p in meta.channel_pins("app", "stable")] == ["b"]
    assert [(e["event"], e["client_id"], e["reason"]) for e in meta.pin_events("app", "stable")] == [
        ("unpin", "a", "fixed"), ("pin", "b", "rack 4"), ("pin", "a", "rack 4")]
    assert meta.get_channel("app", "stable").sequence == 3


def test_operational_gauges(meta: Metadata) -> None:
    """What /metrics reads at each scrape, on an empty and a used store."""
    empty = meta.operational_gauges()
    assert empty["jobs"] == {} and empty["uploads"] == 0 and empty["active_rollouts"] == []
    meta.enqueue_jobs([("", "1" * 64), ("", "2" * 64)])
    meta.create_upload("u1", "owner")
    gauges = meta.operational_gauges()
    assert gauges["jobs"] == {"queued": 2} and gauges["uploads"] == 1 and gauges["upload_bytes"] == 0
