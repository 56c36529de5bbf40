"""casformat/manifest_delta.py: the unsigned recipes of a delta, checked against the signed manifest
(issue 13: D4 endless data from a rewritten recipe, D5 malformed recipes that aborted updates)."""
from __future__ import annotations

from typing import Any

from casformat.manifest_delta import MAX_RECIPES_PER_TARGET, check_recipe, manifest_delta, usable_recipes

A, B, C, OBJ, OBJ2 = ("a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64)
ALGOS = ("zstd", "bsdiff4")
FILES = [{"path": "x", "type": "file", "mode": 0o644, "size": 300_000, "blake3": A, "sha256": A},
         {"path": "y", "type": "file", "mode": 0o644, "size": 1000, "blake3": B, "sha256": B},
         {"path": "l", "type": "symlink", "target": "x"}]


def test_good_recipes_pass_and_keep_only_known_fields() -> None:
    recipes = {A: [{"kind": "patch", "algorithm": "bsdiff4", "base": C, "object": OBJ, "size": 900, "x": 1},
                   {"kind": "compressed", "algorithm": "zstd", "object": OBJ2, "size": 120_000},
                   {"kind": "raw", "object": A, "size": 300_000}]}
    out, problems = usable_recipes(recipes, FILES, ALGOS)
    assert problems == []
    assert out[A][0] == {"kind": "patch", "algorithm": "bsdiff4", "base": C, "object": OBJ, "size": 900}
    assert [r["kind"] for r in out[A]] == ["patch", "compressed", "raw"]


def test_d4_a_raw_recipe_cannot_claim_more_than_the_signed_size() -> None:
    """A mirror rewrote a recipe as raw with size 30,000,000 for a 300 KB file: dropped."""
    out, problems = usable_recipes({A: [{"kind": "raw", "object": A, "size": 30_000_000}]}, FILES, ALGOS)
    assert out[A] == [] and "signed size" in problems[0]
    for kind, extra in (("compressed", {"algorithm": "zstd"}),
                        ("patch", {"algorithm": "zstd", "base": C})):
        checked = check_recipe({"kind": kind, "object": OBJ, "size": 300_000, **extra}, A, 300_000, {A: 300_000}, ALGOS)
        assert isinstance(checked, str) and "below the file's signed size" in checked


def test_d5_malformed_recipes_are_dropped_not_fatal() -> None:
    recipes: dict[str, Any] = {
        A: [{"kind": "compressed", "algorithm": "zstd", "object": OBJ, "size": "abc"},
            {"kind": "bundle", "algorithm": "zstd", "object": OBJ, "size": 10, "bases": [], "members": ["x"]},
            "not an object", None, 7,
            {"kind": "patch", "algorithm": "xdelta3", "base": C, "object": OBJ, "size": 5},
            {"kind": "patch", "algorithm": "zstd", "base": "../etc", "object": OBJ, "size": 5},
            {"kind": "raw", "object": "zz", "size": 300_000},
            {"kind": "teleport", "object": OBJ, "size": 5}],
        B: "not a list",
        C: [{"kind": "raw", "object": C, "size": 1}],            # not a file of the manifest: ignored
    }
    out, problems = usable_recipes(recipes, FILES, ALGOS)
    assert out[A] == [] and B not in out and C not in out
    assert len(problems) == 10
    assert usable_recipes(["not", "a", "dict"], FILES, ALGOS) == ({}, ["recipes is not an object"])
    assert usable_recipes(None, FILES, ALGOS) == ({}, [])


def test_bundles_are_checked_member_by_member() -> None:
    def bundle(**kw: Any) -> dict[str, Any]:
        return {"kind": "bundle", "algorithm": "zstd", "object": OBJ, "size": 50_000, "bases": [C],
                "members": [{"blake3": A, "offset": 0, "size": 300_000}, {"blake3": B, "offset": 300_000, "size": 1000}],
                **kw}
    sizes = {A: 300_000, B: 1000}
    assert isinstance(check_recipe(bundle(), A, 300_000, sizes, ALGOS), dict)
    bad = [bundle(size=301_000),                                                       # no saving
           bundle(members=[{"blake3": A, "offset": 0, "size": 1 << 40}]),              # lies about a size
           bundle(members=[{"blake3": A, "offset": 5, "size": 300_000}]),              # gap
           bundle(members=[{"blake3": C, "offset": 0, "size": 1}]),                    # not in the manifest
           bundle(bases=["nope"]), bundle(members=[]), bundle(members={"a": 1}), bundle(algorithm="lz4")]
    for recipe in bad:
        assert isinstance(check_recipe(recipe, A, 300_000, sizes, ALGOS), str), recipe


def test_endless_recipe_lists_are_cut() -> None:
    many = [{"kind": "compressed", "algorithm": "zstd", "object": OBJ, "size": 10 + i} for i in range(10_000)]
    out, _ = usable_recipes({A: many}, FILES, ALGOS)
    assert len(out[A]) == MAX_RECIPES_PER_TARGET


def test_what_the_server_offers_passes() -> None:
    base = {"files": [dict(FILES[1], size=900, blake3=C, sha256=C, path="y")]}
    target = {"signed": {"schema": 1, "product": "p", "version": "2", "created": "2026-01-01T00:00:00Z",
                         "files": FILES}, "signatures": []}
    recipes = {A: [{"kind": "compressed", "algorithm": "zstd", "object": OBJ, "size": 1000}],
               B: [{"kind": "patch", "algorithm": "bsdiff4", "base": C, "object": OBJ2, "size": 100},
                   {"kind": "compressed", "algorithm": "zstd", "object": OBJ, "size": 2000}]}
    delta = manifest_delta("p", "1", base, target, "f" * 64, recipes, True, "9" * 64)
    out, problems = usable_recipes(delta["recipes"], FILES, ALGOS)
    assert problems == [] and out == delta["recipes"]
