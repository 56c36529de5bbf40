"""``python -m deltagen`` through a real subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from deltagen.digests import blake3_file

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "deltagen", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    old = bytes(range(256)) * 200 + os.urandom(20_000)
    new = old[:30_000] + b"changed!" * 10 + old[30_000:] + b"tail"
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    return tmp_path / "old", tmp_path / "new"


def test_diff_then_apply_each_algorithm(tmp_path: Path) -> None:
    old, new = _files(tmp_path)
    digest = blake3_file(new)
    for algorithm in ("hdiffpatch", "bsdiff4", "zstd"):
        patch, out = tmp_path / f"p.{algorithm}", tmp_path / f"o.{algorithm}"
        made = _run("diff", "--algorithm", algorithm, str(old), str(new), str(patch))
        assert made.returncode == 0, made.stderr
        applied = _run("apply", "--algorithm", algorithm, str(old), str(patch), str(out),
                       "--size", str(new.stat().st_size), "--blake3", digest)
        assert applied.returncode == 0, applied.stderr
        assert blake3_file(out) == digest
        # --size is optional: the size declared in the patch is used
        assert _run("apply", "--algorithm", algorithm, str(old), str(patch), str(out) + "2").returncode == 0


def test_apply_with_wrong_digest_fails_with_one_line_and_no_output(tmp_path: Path) -> None:
    old, new = _files(tmp_path)
    assert _run("diff", "--algorithm", "zstd", str(old), str(new), str(tmp_path / "p")).returncode == 0
    res = _run("apply", "--algorithm", "zstd", str(old), str(tmp_path / "p"), str(tmp_path / "out"),
               "--blake3", "0" * 64)
    assert res.returncode != 0
    assert len(res.stderr.strip().splitlines()) == 1
    assert "digest_mismatch" in res.stderr
    assert not (tmp_path / "out").exists()


def test_apply_corrupt_patch_fails(tmp_path: Path) -> None:
    old, _ = _files(tmp_path)
    (tmp_path / "p").write_bytes(b"BSDIFF40" + b"\x00" * 10)
    res = _run("apply", "--algorithm", "bsdiff4", str(old), str(tmp_path / "p"), str(tmp_path / "out"),
               "--size", "10")
    assert res.returncode == 1
    assert res.stderr.startswith("deltagen: corrupt_patch")
    assert not (tmp_path / "out").exists()


def test_missing_file_fails_with_one_line(tmp_path: Path) -> None:
    res = _run("diff", "--algorithm", "zstd", str(tmp_path / "nope"), str(tmp_path / "nope2"),
               str(tmp_path / "p"))
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1


def test_best_prints_recipes_as_json(tmp_path: Path) -> None:
    old, new = _files(tmp_path)
    res = _run("best", str(old), str(new), str(tmp_path / "objs"))
    assert res.returncode == 0, res.stderr
    recipes = json.loads(res.stdout)["recipes"]
    assert [r["kind"] for r in recipes] == ["patch", "compressed", "raw"]
    assert recipes[-1]["object"] == blake3_file(new)
    for recipe in recipes[:-1]:
        assert blake3_file(recipe["path"]) == recipe["object"]
        assert Path(recipe["path"]).stat().st_size == recipe["size"]
