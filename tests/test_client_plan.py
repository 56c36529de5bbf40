"""The client's planner (``client.plan``): where each file's content comes from, and what it costs.

Pure unit tests: digests are made-up strings and local content is a dict, except the
last tests, which check ``client.local.LocalContent`` on real files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from client.local import LocalContent
from client.plan import Plan, plan_update
from deltagen.digests import blake3_file

A, B, C, OLD = "a" * 64, "b" * 64, "c" * 64, "0" * 64
PATCH, ZST, BUNDLE = "d" * 64, "e" * 64, "f" * 64


def entry(path: str, digest: str, size: int) -> dict[str, Any]:
    return {"path": path, "type": "file", "blake3": digest, "size": size, "mode": 0o644}


def finder(local: dict[str, Path]) -> Any:
    return local.get


def plan(files: list[dict[str, Any]], recipes: dict[str, Any], local: dict[str, Path] | None = None) -> Plan:
    return plan_update(files, recipes, finder(local or {}))


def test_local_content_is_reused_and_nothing_fetched() -> None:
    p = plan([entry("a", A, 1000)], {A: [{"kind": "raw", "object": A, "size": 1000}]}, {A: Path("/v/1/a")})
    (only,) = p.files
    assert only.local == Path("/v/1/a") and only.recipes == () and only.first_choice is None
    assert p.downloads() == {} and p.files_local == 1 and p.new_bytes == 0


def test_symlinks_are_not_planned() -> None:
    p = plan([{"path": "l", "type": "symlink", "target": "a"}, entry("a", A, 10)], {})
    assert [f.entry["path"] for f in p.files] == ["a"]


def test_cheapest_usable_recipe_first_raw_last_resort() -> None:
    offered = {A: [{"kind": "raw", "object": A, "size": 1000},
                   {"kind": "compressed", "algorithm": "zstd", "object": ZST, "size": 400},
                   {"kind": "patch", "algorithm": "zstd-prefix", "base": OLD, "object": PATCH, "size": 50}]}
    with_base = plan([entry("a", A, 1000)], offered, {OLD: Path("/v/1/old")})
    (f,) = with_base.files
    assert [r["kind"] for r in f.recipes] == ["patch", "compressed", "raw"]
    assert f.recipes[0]["base_path"] == "/v/1/old" and f.first_choice == f.recipes[0]
    assert with_base.downloads() == {PATCH: 50}
    # without (an intact copy of) the base, the patch is not an option
    (g,) = plan([entry("a", A, 1000)], offered).files
    assert [r["kind"] for r in g.recipes] == ["compressed", "raw"]


def test_raw_is_added_when_not_offered_and_unknown_kinds_ignored() -> None:
    (f,) = plan([entry("a", A, 70)], {A: [{"kind": "mystery", "object": C, "size": 1}]}).files
    assert f.recipes == ({"kind": "raw", "object": A, "size": 70},)


def bundle(size: int, bases: list[str]) -> dict[str, Any]:
    return {"kind": "bundle", "algorithm": "zstd", "object": BUNDLE, "size": size, "bases": bases,
            "members": [{"blake3": A, "offset": 0, "size": 600}, {"blake3": B, "offset": 600, "size": 600}]}


def bundled_offers(size: int, bases: list[str]) -> dict[str, Any]:
    return {A: [bundle(size, bases), {"kind": "compressed", "algorithm": "zstd", "object": ZST, "size": 300},
                {"kind": "raw", "object": A, "size": 600}],
            B: [bundle(size, bases), {"kind": "raw", "object": B, "size": 600}]}


def test_bundle_cheaper_than_its_members_is_fetched_once() -> None:
    p = plan([entry("a", A, 600), entry("b", B, 600), entry("c", C, 5)], bundled_offers(200, [OLD]),
             {OLD: Path("/v/1/old")})
    a, b, c = p.files
    assert a.bundle is not None and b.bundle is not None and c.bundle is None
    assert a.bundle["base_paths"] == ["/v/1/old"]
    assert [r["kind"] for r in a.recipes] == ["compressed", "raw"]  # per-file fallback kept, bundle not in it
    assert p.downloads() == {BUNDLE: 200, C: 5}
    assert p.download_bytes == 205


def test_bundle_dearer_than_its_members_is_not_used() -> None:
    p = plan([entry("a", A, 600), entry("b", B, 600)], bundled_offers(1000, [OLD]), {OLD: Path("/v/1/old")})
    assert all(f.bundle is None for f in p.files)
    assert p.downloads() == {ZST: 300, B: 600}


def test_bundle_whose_base_is_missing_is_not_used() -> None:
    p = plan([entry("a", A, 600), entry("b", B, 600)], bundled_offers(200, [OLD]))
    assert all(f.bundle is None for f in p.files)
    assert BUNDLE not in p.downloads()


def test_byte_totals_and_space_needed() -> None:
    offered = {B: [{"kind": "compressed", "algorithm": "zstd", "object": ZST, "size": 100}]}
    p = plan([entry("a", A, 1000), entry("b", B, 300), entry("c", C, 50), entry("c2", C, 50)], offered,
             {A: Path("/v/1/a")})
    assert p.downloads() == {ZST: 100, C: 50}  # the same object for two files is fetched once
    assert p.download_bytes == 150
    assert p.new_bytes == 400 and p.full_bytes == 1400 and p.files_local == 1
    assert p.space_needed(2.0) == 2 * 150 + 400


def test_local_content_returns_only_copies_that_hash_right(tmp_path: Path) -> None:
    good, changed = tmp_path / "good", tmp_path / "changed"
    good.write_bytes(b"content")
    changed.write_bytes(b"content")
    digest = blake3_file(good)
    changed.write_bytes(b"modified locally")
    local = LocalContent({digest: [changed, good]})
    assert local.find(digest) == good
    assert local.find("9" * 64) is None
    assert local.hashes[changed] != digest  # each path hashed once, the result kept
