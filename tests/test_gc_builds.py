"""Garbage collection against delta builds: an object a build wrote is never swept
before the build records it, a recording of a swept object is refused and the build
retried, and ``cas fsck`` reports recipe and bundle references to missing objects."""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cas

from cas import deltas, gc, publisher, releases
from cas.config import load_config
from cas.keys import init_keys, key_path, load_private_key
from cas.objectstore import Ingested
from cas.repo import Repo, open_repo
from cas.trees import scan_tree

FILES = 6


def write_tree(dest: Path, version: int) -> None:
    """Files that change together between versions (so bundles are worth building)."""
    rng = random.Random(11)
    shared = [rng.randbytes(3000) for _ in range(version + 1)]
    for i in range(FILES):
        path = dest / "lib" / f"part-{i}.so"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(random.Random(i).randbytes(6000) + b"".join(shared[1:version + 1]))


@pytest.fixture
def repo(tmp_path: Path, metadata_url: str) -> Repo:
    # bundles of .so files are built under the exhaustive build policy only
    r = open_repo(load_config(tmp_path / "store", metadata_url=metadata_url, delta_workers=1,
                              delta_build_policy="exhaustive"))
    init_keys(tmp_path / "store", r.meta)
    r.reload_keys()
    key = load_private_key(key_path(r.config.store, "release"))
    for v in (0, 1):
        tree = tmp_path / f"t{v}"
        write_tree(tree, v)
        scanned = scan_tree(tree)
        publisher.publish_local(r, scanned, publisher.signed_manifest("app", f"1.{v}", scanned, key))
        for step in ("testing", "released"):
            releases.move_status(r, "app", f"1.{v}", step, "test")
    return r


def recorded(repo: Repo) -> list[dict[str, Any]]:
    """Every object a recipe or a bundle records (read directly, not through the code under test)."""
    c = repo.meta._conn()
    return ([{"kind": "recipe", "object": r[0]} for r in c.execute("SELECT object FROM recipes")]
            + [{"kind": "bundle", "object": r[0]} for r in c.execute("SELECT object FROM bundles")])


def gc_between_store_and_record(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """After every object a build stores, and before the build records it, run two GC
    passes with no grace (mark, then sweep): the race the soak found, made certain."""
    stored: list[str] = []
    real = repo.ingest_file

    def ingest_then_collect(path: Path, expected: str | None = None) -> Ingested:
        result = real(path, expected)
        stored.append(result.digest)
        gc.collect(repo, grace_seconds=0)
        time.sleep(0.01)  # the sweep wants a tombstone strictly older than its start
        gc.collect(repo, grace_seconds=0)
        return result

    monkeypatch.setattr(repo, "ingest_file", ingest_then_collect)
    return stored


def test_gc_between_store_and_record_never_leaves_a_dangling_recipe_or_bundle(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    stored = gc_between_store_and_record(repo, monkeypatch)
    deltas.drain(repo)
    refs = recorded(repo)
    kinds = {ref["kind"] for ref in refs}
    assert stored and kinds == {"recipe", "bundle"}, (stored, kinds)
    dangling = [ref for ref in refs if not repo.objects.exists(ref["object"])]
    assert not dangling, f"recorded objects GC deleted: {dangling[:3]}"
    counts = repo.meta.jobs_summary()["counts"]
    assert counts["failed"] == 0 and counts["queued"] == counts["running"] == 0, counts
    # Once recorded, the pins are gone and the recipes themselves keep the objects.
    gc.collect(repo, grace_seconds=0)
    time.sleep(0.01)
    gc.collect(repo, grace_seconds=0)
    assert all(repo.objects.exists(ref["object"]) for ref in recorded(repo))


def test_recording_an_object_gc_deleted_is_refused_and_the_build_retried(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pin that came too late (its lease ran out, or a sweep won the race): the
    recording must not point at the deleted object; the job is built again."""
    real = repo.ingest_file
    swept: list[str] = []

    def ingest_then_lose_it(path: Path, expected: str | None = None) -> Ingested:
        result = real(path, expected)
        if not swept:  # the first object stored: GC deletes it before it is recorded
            swept.append(result.digest)
            # What a sweep that won the race leaves: the file gone, a 'deleted' tombstone.
            repo.objects.delete(result.digest)
            with repo.meta._tx() as c:
                c.execute("INSERT INTO gc_tombstones(digest, state, marked) VALUES (?, 'deleted', ?) "
                          "ON CONFLICT (digest) DO UPDATE SET state = 'deleted'", (result.digest, time.time()))
            assert not repo.objects.exists(result.digest)
        return result

    monkeypatch.setattr(repo, "ingest_file", ingest_then_lose_it)
    deltas.drain(repo)
    assert swept
    dangling = [ref for ref in recorded(repo) if not repo.objects.exists(ref["object"])]
    assert not dangling, f"recorded objects GC deleted: {dangling[:3]}"
    assert any(ref["object"] == swept[0] for ref in recorded(repo)), "the retried build records it again"
    assert repo.meta.jobs_summary()["counts"]["failed"] == 0


def test_fsck_reports_dangling_recipe_and_bundle_references(tmp_path: Path) -> None:
    store = tmp_path / "store"
    r = open_repo(load_config(store, delta_workers=1, delta_build_policy="exhaustive"))
    init_keys(store, r.meta)
    r.reload_keys()
    key = load_private_key(key_path(store, "release"))
    for v in (0, 1):
        tree = tmp_path / f"t{v}"
        write_tree(tree, v)
        scanned = scan_tree(tree)
        publisher.publish_local(r, scanned, publisher.signed_manifest("app", f"1.{v}", scanned, key))
        for step in ("testing", "released"):
            releases.move_status(r, "app", f"1.{v}", step, "test")
    deltas.drain(r)
    assert json.loads(run_cas("fsck", "--store", str(store), "--json").stdout)["missing_referenced"] == []
    refs = recorded(r)
    recipe = next(ref for ref in refs if ref["kind"] == "recipe")
    bundle = next(ref for ref in refs if ref["kind"] == "bundle")
    for ref in (recipe, bundle):  # planted: the objects vanish behind the metadata's back
        r.objects.delete(ref["object"])
    proc = run_cas("fsck", "--store", str(store), "--json", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert {recipe["object"], bundle["object"]} <= set(data["missing_referenced"])
    assert {(d["kind"], d["object"]) for d in data["dangling"]} >= {("recipe", recipe["object"]),
                                                                      ("bundle", bundle["object"])}
    human = run_cas("fsck", "--store", str(store), check=False).stdout
    assert f"recipe object {recipe['object']} is missing" in human
    assert f"bundle object {bundle['object']} is missing" in human
