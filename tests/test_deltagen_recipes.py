"""The recipe choice rule: caps, time budget, tiny files, and 'only if smaller'."""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

import deltagen
from deltagen import DeltaLimits
from deltagen.digests import blake3_file

FAST = DeltaLimits(zstd_level=3, compress_level=3)


def _similar(tmp_path: Path, size: int, seed: int = 1) -> tuple[Path, Path]:
    rng = random.Random(seed)
    old = bytearray(rng.randbytes(size))
    new = bytearray(old)
    for _ in range(20):
        at = rng.randrange(size - 100)
        new[at:at + 50] = rng.randbytes(50)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    return tmp_path / "old", tmp_path / "new"


def _names(attempts: list[deltagen.Attempt]) -> dict[str, str]:
    return {a.name: a.outcome for a in attempts}


def test_recipes_are_verified_cheapest_first_and_named_by_digest(tmp_path: Path) -> None:
    old, new = _similar(tmp_path, 100_000)
    recipes = deltagen.best_recipes(old, new, tmp_path / "w", FAST)
    assert [r.kind for r in recipes] == ["patch", "raw"]  # random data: compressed >= raw
    patch, raw = recipes
    assert patch.base == blake3_file(old)
    assert patch.path == tmp_path / "w" / patch.object
    assert blake3_file(patch.path) == patch.object
    assert patch.size == patch.path.stat().st_size < raw.size
    assert raw.object == blake3_file(new) and raw.path == new
    deltagen.apply_patch(patch.algorithm, old, patch.path, tmp_path / "out", raw.size, raw.object)
    assert sorted(os.listdir(tmp_path / "w")) == [patch.object]  # no scratch left


def test_compressed_kept_only_when_smaller_than_raw(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(os.urandom(50_000))
    (tmp_path / "new").write_bytes(b"abcdefgh" * 10_000)
    recipes = deltagen.best_recipes(tmp_path / "old", tmp_path / "new", tmp_path / "w", FAST)
    assert [r.kind for r in recipes] == ["compressed", "raw"]  # patch not smaller than compressed
    assert recipes[0].size < recipes[1].size


def test_tiny_files_get_no_patch(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"hello world " * 40)   # 480 B, below tiny_bytes (512)
    (tmp_path / "new").write_bytes(b"hello world " * 40 + b"!")
    attempts: list[deltagen.Attempt] = []
    recipes = deltagen.best_recipes(tmp_path / "old", tmp_path / "new", tmp_path / "w", FAST, attempts)
    assert [r.kind for r in recipes] == ["compressed", "raw"]
    assert all(o.startswith("skipped: target below tiny_bytes") for n, o in _names(attempts).items()
               if n != "compressed")
    (tmp_path / "new").write_bytes(os.urandom(400))
    recipes = deltagen.best_recipes(tmp_path / "old", tmp_path / "new", tmp_path / "w2", FAST)
    assert [r.kind for r in recipes] == ["raw"]


def test_file_above_bsdiff_cap_gets_no_bsdiff(tmp_path: Path) -> None:
    old, new = _similar(tmp_path, 50_000)
    attempts: list[deltagen.Attempt] = []
    limits = DeltaLimits(zstd_level=3, compress_level=3, bsdiff_max_bytes=40_000,
                         patch_algorithms=("zstd", "bsdiff4"))   # without hdiffpatch, which may win here
    recipes = deltagen.best_recipes(old, new, tmp_path / "w", limits, attempts)
    assert _names(attempts)["bsdiff4"].startswith("skipped: old or new above bsdiff_max_bytes")
    assert recipes[0].kind == "patch" and recipes[0].algorithm == "zstd"
    with pytest.raises(deltagen.SizeExceeded):
        deltagen.make_patch("bsdiff4", old, new, tmp_path / "p", limits)
    assert not (tmp_path / "p").exists()


def test_above_every_patch_cap_falls_back_to_compressed_then_raw(tmp_path: Path) -> None:
    old, new = _similar(tmp_path, 50_000)
    limits = DeltaLimits(zstd_level=3, compress_level=3, bsdiff_max_bytes=1000, zstd_patch_max_bytes=1000,
                         hdiffpatch_max_bytes=1000)
    recipes = deltagen.best_recipes(old, new, tmp_path / "w", limits)
    assert [r.kind for r in recipes] == ["raw"]
    with pytest.raises(deltagen.SizeExceeded):
        deltagen.make_patch("zstd", old, new, tmp_path / "p", limits)


def test_time_budget_exceeded_falls_back_and_kills_the_build(tmp_path: Path) -> None:
    # bsdiff of 12 MiB takes seconds; zstd at level 1 takes well under a second
    old, new = _similar(tmp_path, 12 << 20)
    # hdiffpatch (first by default) would take the budget that this test gives zstd
    limits = DeltaLimits(zstd_level=1, compress_level=1, time_budget_s=2.0, patch_algorithms=("zstd", "bsdiff4"),
                             build_policy="exhaustive")
    attempts: list[deltagen.Attempt] = []
    started = time.monotonic()
    recipes = deltagen.best_recipes(old, new, tmp_path / "w", limits, attempts)
    elapsed = time.monotonic() - started
    assert "BudgetExceeded" in _names(attempts)["bsdiff4"]
    assert recipes[0].kind == "patch" and recipes[0].algorithm == "zstd"
    assert elapsed < 6.0
    assert sorted(os.listdir(tmp_path / "w")) == [recipes[0].object]


def test_no_budget_left_means_raw(tmp_path: Path) -> None:
    old, new = _similar(tmp_path, 20_000)
    attempts: list[deltagen.Attempt] = []
    recipes = deltagen.best_recipes(old, new, tmp_path / "w", DeltaLimits(time_budget_s=0), attempts)
    assert [r.kind for r in recipes] == ["raw"]
    assert all("BudgetExceeded" in a.outcome for a in attempts)


def test_recipe_to_dict_matches_manifest_delta_form(tmp_path: Path) -> None:
    old, new = _similar(tmp_path, 30_000)
    recipes = deltagen.best_recipes(old, new, tmp_path / "w", FAST)
    assert recipes[0].to_dict() == {"kind": "patch", "base": blake3_file(old),
                                    "algorithm": recipes[0].algorithm,
                                    "object": recipes[0].object, "size": recipes[0].size}
    assert recipes[-1].to_dict() == {"kind": "raw", "object": blake3_file(new),
                                     "size": new.stat().st_size}


def test_limits_reject_a_zstd_window_above_31() -> None:
    with pytest.raises(ValueError):
        DeltaLimits(zstd_patch_max_bytes=3 << 30)


def test_small_files_are_built_in_process_large_ones_in_a_worker(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from deltagen import budget

    def no_workers(*args: object, **kwargs: object) -> object:
        raise AssertionError("a worker was started")

    old, new = _similar(tmp_path, 100_000)
    monkeypatch.setattr(budget.subprocess, "Popen", no_workers)
    recipes = deltagen.best_recipes(old, new, tmp_path / "w", FAST)
    assert recipes[0].kind == "patch"
    with pytest.raises(AssertionError, match="a worker was started"):
        deltagen.best_recipes(old, new, tmp_path / "w2", DeltaLimits(inprocess_max_bytes=1000))
    assert [p.name for p in (tmp_path / "w2").iterdir()] == []  # scratch removed
