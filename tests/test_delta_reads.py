"""Anonymous delta reads cost bounded work (issue 13 D3).

Planning is near-linear (counted in accesses to manifest entries, not in seconds), a
planned pair is cached, and a read queues builds only for a testing/released target from
an older shipped release of the same product, once per pair: drafts and reversed pairs
queue nothing.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import httpx
import pytest
from conftest import run_cas, start_server

from cas.deltaplan import MAX_BASES_PER_FILE, plan_pairs

RENAMED = 2500


class CountingEntry(Mapping[str, Any]):
    """A manifest entry that counts every field read (the planner's work)."""

    reads = 0

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def __getitem__(self, key: str) -> Any:
        CountingEntry.reads += 1
        return self.fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)


def _renamed_pair(n: int) -> tuple[list[CountingEntry], list[CountingEntry]]:
    """n files of one kind and size, every one renamed and changed: each removed base file
    is a rename candidate of every target file."""
    base = [CountingEntry(path=f"old/f{i:05d}.bin", type="file", blake3=f"{i:064x}", size=4096)
            for i in range(n)]
    target = [CountingEntry(path=f"new/g{i:05d}.bin", type="file", blake3=f"{n + i:064x}", size=4096)
              for i in range(n)]
    return base, target


def test_plan_of_thousands_of_renames_is_near_linear() -> None:
    base, target = _renamed_pair(RENAMED)
    CountingEntry.reads = 0
    pairs = plan_pairs(base, target, tiny_bytes=512)
    reads = CountingEntry.reads
    # Every target gets its compressed form and up to MAX_BASES_PER_FILE rename bases.
    assert len(pairs) == RENAMED * (1 + MAX_BASES_PER_FILE)
    # A few field reads per file, not one per (removed, target) pair (6.25 million here).
    assert reads < 40 * 2 * RENAMED, reads


def test_plan_still_prefers_same_path_then_name_then_nearest_rename() -> None:
    base = [{"path": "a/x.so", "type": "file", "blake3": "1" * 64, "size": 1000},
            {"path": "b/x.so", "type": "file", "blake3": "2" * 64, "size": 5000},
            {"path": "c/gone.so", "type": "file", "blake3": "3" * 64, "size": 990},
            {"path": "c/far.so", "type": "file", "blake3": "4" * 64, "size": 100},
            {"path": "c/other.txt", "type": "file", "blake3": "5" * 64, "size": 1000}]
    target = [{"path": "a/x.so", "type": "file", "blake3": "9" * 64, "size": 1000}]
    assert plan_pairs(base, target) == [("", "9" * 64), ("1" * 64, "9" * 64), ("2" * 64, "9" * 64),
                                        ("3" * 64, "9" * 64)]


# ------------------------------------------------------------------ over HTTP


def _tree(root: Path, folder: str, prefix: str, n: int, salt: str) -> Path:
    (root / folder).mkdir(parents=True)
    for i in range(n):
        (root / folder / f"{prefix}{i:05d}.dat").write_bytes((f"{salt}{i:05d}" * 80).encode())
    return root


def _plans(http: httpx.Client) -> float:
    text = http.get("/metrics").text
    return float(re.search(r"^cas_delta_plans_computed (\S+)$", text, re.M)[1])  # type: ignore[index]


def _jobs(http: httpx.Client) -> int:
    counts = http.get("/v1/admin/deltas").json()["counts"]
    return sum(counts.values())


@pytest.fixture(scope="module")
def renamed_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with 1.0 (released), 2.0 (every file renamed and changed; released) and 3.0 (draft),
    published locally (no builder runs: only what reads queue is counted)."""
    top = tmp_path_factory.mktemp("renames")
    store = top / "store"
    run_cas("keys", "init", "--store", str(store))
    (store / "config.toml").write_text("delta_builder = false\ndelta_build_on = []\n")
    trees = {"1.0": _tree(top / "t1", "old", "f", RENAMED, "a"),
             "2.0": _tree(top / "t2", "new", "g", RENAMED, "b"),
             "3.0": _tree(top / "t3", "new", "g", 10, "c")}
    for version, tree in trees.items():
        status = ["--status", "released"] if version != "3.0" else []
        run_cas("publish", str(tree), "--store", str(store), "--product", "app", "--version", version, *status,
                timeout=600)
    return store


def test_delta_of_thousands_of_renames_plans_once_and_queues_once(renamed_store: Path) -> None:
    server = start_server(renamed_store)
    try:
        with server.client(None) as anon, server.client() as admin:
            assert _jobs(admin) == 0
            first = anon.get("/v1/products/app/releases/2.0/delta", params={"from": "1.0"})
            assert first.status_code == 200, first.text
            queued = _jobs(admin)
            # One compress job per changed file and at most MAX_BASES_PER_FILE patches each, plus a bundle.
            assert 0 < queued <= RENAMED * (1 + MAX_BASES_PER_FILE) + 1
            assert _plans(admin) == 1
            for _ in range(3):
                again = anon.get("/v1/products/app/releases/2.0/delta", params={"from": "1.0"})
                assert again.status_code == 200
            assert _plans(admin) == 1      # planned once, then served from the cache
            assert _jobs(admin) == queued  # queued once per pair
    finally:
        server.stop()


@pytest.mark.parametrize("target,base", [("3.0", "2.0"),   # a draft target
                                         ("1.0", "2.0")],  # a reversed pair: the base is newer
                         ids=["draft", "reversed"])
def test_draft_or_reversed_delta_queues_nothing(renamed_store: Path, target: str, base: str) -> None:
    server = start_server(renamed_store)
    try:
        with server.client(None) as anon, server.client() as admin:
            before = _jobs(admin)
            r = anon.get(f"/v1/products/app/releases/{target}/delta", params={"from": base})
            assert r.status_code == 200, r.text
            assert _jobs(admin) == before
    finally:
        server.stop()


def test_a_read_queues_only_the_bases_a_publish_plans(tmp_path: Path) -> None:
    """An anonymous read cannot queue N^2 pairs: from a shipped release that is neither among
    the last ``delta_bases`` nor the factory release, it queues nothing."""
    from cas.config import load_config
    from cas.deltas import bases_for, read_may_queue
    from cas.repo import open_repo
    store = tmp_path / "store"
    run_cas("keys", "init", "--store", str(store))
    (store / "config.toml").write_text("delta_builder = false\ndelta_build_on = []\ndelta_bases = 1\n")
    for i in range(4):
        tree = tmp_path / f"t{i}"
        (tree / "bin").mkdir(parents=True)
        (tree / "bin" / "app").write_bytes(bytes([i]) * 4096)
        run_cas("publish", str(tree), "--store", str(store), "--product", "app", "--version", f"1.{i}",
                "--status", "released")
    repo = open_repo(load_config(store))
    try:
        target = repo.meta.get_release("app", "1.3")
        assert target is not None
        assert [b.version for b in bases_for(repo, target)] == ["1.2", "1.0"]
        for version, allowed in (("1.2", True), ("1.0", True), ("1.1", False)):
            base = repo.meta.get_release("app", version)
            assert read_may_queue(repo, target, base) is allowed, version
    finally:
        repo.meta.close()


def test_a_much_smaller_namesake_is_no_base() -> None:
    """Files with the target's name elsewhere are bases only from 1/8 of its size: git's
    3.7 MB program is not patched from a 79 KB script that is also called ``git``."""
    def e(path: str, digest: str, size: int) -> dict[str, object]:
        return {"path": path, "type": "file", "blake3": digest * 64, "size": size}
    base = [e("usr/bin/git", "1", 3_700_000), e("usr/share/completions/git", "2", 79_000),
            e("usr/share/doc/git", "3", 604), e("usr/lib/git-core/git", "4", 3_600_000)]
    target = [e("usr/bin/git", "9", 3_713_416), e("usr/share/completions/git", "2", 79_000),
              e("usr/share/doc/git", "3", 604), e("usr/lib/git-core/git", "4", 3_600_000)]
    assert plan_pairs(base, target, 512) == [("", "9" * 64), ("1" * 64, "9" * 64), ("4" * 64, "9" * 64)]
    # the file at the same path is a base whatever its size
    small_same = [e("usr/bin/git", "1", 1_000)]
    assert plan_pairs(small_same, target[:1], 512) == [("", "9" * 64), ("1" * 64, "9" * 64)]
