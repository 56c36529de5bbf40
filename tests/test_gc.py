"""Garbage collection and retention: mark, tombstone, sweep; never lose a referenced object."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import Server

from cas import gc, publisher, releases
from cas.config import load_config
from cas.errors import CasError, Conflict
from cas.keys import init_keys, key_path, load_private_key
from cas.repo import Repo, open_repo
from cas.trees import scan_tree
from deltagen.digests import blake3_file
from fixtures import write_release


@pytest.fixture
def repo(tmp_path: Path, metadata_url: str) -> Repo:
    """A local store on each metadata backend (SQLite and PostgreSQL)."""
    r = open_repo(load_config(tmp_path / "store", metadata_url=metadata_url))
    init_keys(tmp_path / "store", r.meta)
    r.reload_keys()
    return r


def publish(repo: Repo, tree: Path, version: str, status: str | None = None) -> dict:
    scanned = scan_tree(tree)
    key = load_private_key(key_path(repo.config.store, "release"))
    publisher.publish_local(repo, scanned, publisher.signed_manifest("app", version, scanned, key))
    for step in {"testing": ["testing"], "released": ["testing", "released"],
                 "deprecated": ["testing", "released", "deprecated"]}.get(status or "", []):
        releases.move_status(repo, "app", version, step, "test")
    return {e["blake3"] for e in scanned.entries if e["type"] == "file"}


def objects(repo: Repo) -> set[str]:
    return set(repo.objects.iter_digests())


def referenced_all_present(repo: Repo) -> None:
    live = repo.meta.live_objects()
    assert live <= objects(repo), f"referenced objects missing: {sorted(live - objects(repo))[:3]}"


def test_deleted_draft_objects_go_after_two_runs_shared_ones_stay(repo: Repo, release_trees: list[Path]) -> None:
    v1 = publish(repo, release_trees[0], "1.0.0", "released")
    v2 = publish(repo, release_trees[1], "1.1.0")  # draft
    only_v2 = v2 - v1
    assert only_v2 and only_v2 <= objects(repo)
    gc.delete_release(repo, "app", "1.1.0", "test", "bad build")
    first = gc.collect(repo, grace_seconds=0)
    assert first.marked == len(only_v2) and not first.deleted   # tombstoned, not yet deleted
    dry = gc.collect(repo, grace_seconds=0, dry_run=True)
    assert set(dry.would_delete) == only_v2 and only_v2 <= objects(repo)  # a dry run changes nothing
    second = gc.collect(repo, grace_seconds=0)
    assert set(second.deleted) == only_v2
    assert not (only_v2 & objects(repo)) and v1 <= objects(repo)
    referenced_all_present(repo)
    history = repo.meta.release_history("app", "1.1.0")
    assert history[-1]["to"] == "deleted" and history[-1]["reason"] == "bad build"


def test_grace_period_keeps_fresh_tombstones(repo: Repo, release_trees: list[Path]) -> None:
    publish(repo, release_trees[0], "1.0.0")
    gc.delete_release(repo, "app", "1.0.0", "test")
    gc.collect(repo, grace_seconds=3600)
    assert not gc.collect(repo, grace_seconds=3600).deleted


def test_republish_revives_tombstoned_objects(repo: Repo, release_trees: list[Path]) -> None:
    v1 = publish(repo, release_trees[0], "1.0.0")
    gc.delete_release(repo, "app", "1.0.0", "test")
    gc.collect(repo, grace_seconds=0)                 # all of v1's objects are now tombstoned
    publish(repo, release_trees[0], "1.0.1")          # same content, new version: revives them
    assert not gc.collect(repo, grace_seconds=0).deleted
    assert v1 <= objects(repo)
    referenced_all_present(repo)


def test_released_and_offered_releases_cannot_be_deleted(repo: Repo, release_trees: list[Path]) -> None:
    from cas import channels
    publish(repo, release_trees[0], "1.0.0", "released")
    with pytest.raises(Conflict, match="deprecate it first"):
        gc.delete_release(repo, "app", "1.0.0", "test")
    publish(repo, release_trees[1], "1.1.0", "released")
    channels.set_channel(repo, "app", "stable", "1.1.0")
    releases.move_status(repo, "app", "1.0.0", "deprecated", "test")
    gc.delete_release(repo, "app", "1.0.0", "test")   # deprecated and not offered: fine
    with pytest.raises(CasError):
        releases.move_status(repo, "app", "1.1.0", "deprecated", "test")  # a channel points at it


def test_retention_keeps_last_n_and_what_a_channel_offers(repo: Repo, tmp_path: Path) -> None:
    from cas import channels
    versions = ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"]
    for i, v in enumerate(versions):
        write_release(tmp_path / v, i)
        publish(repo, tmp_path / v, v, "released")
    channels.set_channel(repo, "app", "old", "1.0.0")  # something still offers the oldest
    dry = gc.collect(repo, grace_seconds=0, dry_run=True, retain=2)
    assert dry.releases_deleted == ["app 1.1.0", "app 1.2.0"]
    assert len(repo.meta.list_releases("app")) == 5
    report = gc.collect(repo, grace_seconds=0, retain=2)
    assert report.releases_deleted == ["app 1.1.0", "app 1.2.0"]
    assert [r.version for r in repo.meta.list_releases("app")] == ["1.0.0", "1.3.0", "1.4.0"]
    gc.collect(repo, grace_seconds=0)
    referenced_all_present(repo)


def test_gc_racing_publishes_never_loses_a_referenced_object(repo: Repo, release_trees: list[Path]) -> None:
    """One thread runs GC in a tight loop with a two-second grace period; another keeps
    publishing (and deleting) releases made of the same objects.  A publish may be refused
    (objects deleted under it: the publisher uploads them again), but every recorded
    release stays whole.  (With no grace at all the protocol still loses nothing, but a
    publish may be refused again and again.)"""
    publish(repo, release_trees[0], "0.0.1")
    gc.delete_release(repo, "app", "0.0.1", "test")
    stop = threading.Event()
    errors: list[BaseException] = []

    def collector() -> None:
        while not stop.is_set():
            try:
                gc.collect(repo, grace_seconds=2)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return

    thread = threading.Thread(target=collector)
    thread.start()
    refused = 0
    try:
        for i in range(12):
            version = f"2.0.{i}"
            for _attempt in range(3):
                try:
                    publish(repo, release_trees[i % 3], version)
                    break
                except CasError as exc:
                    assert exc.code == "missing_objects", exc  # refused cleanly: publish again
                    refused += 1
            else:
                raise AssertionError(f"{version} refused three times")
            referenced_all_present(repo)
            if i % 2:
                gc.delete_release(repo, "app", version, "test")
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    referenced_all_present(repo)
    for release in repo.meta.list_releases("app"):
        for entry in json.loads(release.manifest)["signed"]["files"]:
            if entry["type"] == "file":
                assert blake3_file(repo.objects.path(entry["blake3"])) == entry["blake3"]


def test_gc_over_http_and_cli(server: Server, release_trees: list[Path]) -> None:
    key = str(server.store / "keys" / "release.pem")
    server.cas("publish", str(release_trees[0]), "--product", "app", "--version", "1.0.0", "--key", key)
    with server.client("read-token-t") as reader:
        assert reader.post("/v1/admin/gc", json={"dry_run": True}).status_code == 403
        assert reader.delete("/v1/products/app/releases/1.0.0").status_code == 403
    server.cas("release", "delete", "app", "1.0.0", "--reason", "test")
    dry = json.loads(server.cas("gc", "--dry-run", "--grace", "0", "--json").stdout)
    assert dry["would_mark"] and not dry["deleted"]
    json.loads(server.cas("gc", "--grace", "0", "--json").stdout)
    done = json.loads(server.cas("gc", "--grace", "0", "--json").stdout)
    assert done["deleted"] and done["deleted_bytes"] > 0
    with server.client() as admin:
        status = admin.get("/v1/admin/gc").json()
        assert status["last_run"]["dry_run"] is False
        gone = admin.get(f"/v1/objects/{done['deleted'][0]}")
        assert gone.status_code == 404


def test_gc_prunes_reports_older_than_the_retention_in_batches(tmp_path: Path, metadata_url: str,
                                                               release_trees: list[Path]) -> None:
    r = open_repo(load_config(tmp_path / "store", metadata_url=metadata_url, report_retention_days=30))
    init_keys(tmp_path / "store", r.meta)
    r.reload_keys()
    publish(r, release_trees[0], "1.0.0", "released")
    now = __import__("time").time()
    ages = [40, 35, 31, 29, 10, 0]    # days
    for i, days in enumerate(ages):
        r.meta.add_report("app", f"c{i}", None, "1.0.0", "success", "", at=now - days * 86400)
    assert gc.collect(r, grace_seconds=0, dry_run=True).reports_pruned == 0   # a dry run deletes nothing
    assert len(r.meta.reports("app")) == 6
    assert r.meta.prune_reports(now - 30 * 86400, batch=2) == 3               # two batches, the second short
    assert gc.collect(r, grace_seconds=0).reports_pruned == 0
    assert sorted(x["client_id"] for x in r.meta.reports("app")) == ["c3", "c4", "c5"]
    r.meta.add_report("app", "old", None, "1.0.0", "failed", "", at=now - 31 * 86400)
    assert gc.collect(r, grace_seconds=0).reports_pruned == 1
    forever = open_repo(load_config(tmp_path / "store", metadata_url=metadata_url, report_retention_days=0))
    forever.meta.add_report("app", "ancient", None, "1.0.0", "success", "", at=now - 3650 * 86400)
    assert gc.collect(forever, grace_seconds=0).reports_pruned == 0
    assert "ancient" in {x["client_id"] for x in forever.meta.reports("app")}


@pytest.mark.parametrize("days", [-1, 0.5])
def test_a_retention_shorter_than_the_gate_window_is_refused(tmp_path: Path, days: float) -> None:
    (tmp_path / "config.toml").write_text(f"report_retention_days = {days}\n")
    with pytest.raises((ValueError, TypeError)):
        load_config(tmp_path, config_file=str(tmp_path / "config.toml"))
