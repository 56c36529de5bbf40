"""Tests for the deterministic release-tree fixtures (fixtures/)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import VERSIONS, release_paths, version_name, write_release
from fixtures.releases import LARGE_BLOCK


def snapshot(root: Path) -> dict[str, tuple]:
    """path -> ("file", sha256, mode) | ("symlink", target) for everything under root."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(),
                            stat.S_IMODE(st.st_mode))
    return out


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> list[dict[str, tuple]]:
    base = tmp_path_factory.mktemp("rel")
    snaps = []
    for i in range(3):
        written = write_release(base / version_name(i), i, seed=7)
        snap = snapshot(base / version_name(i))
        assert sorted(written) == sorted(snap) == release_paths(i)
        snaps.append(snap)
    return snaps


def test_version_names():
    assert VERSIONS == ["1.0.0", "1.1.0", "1.2.0"]
    assert version_name(5) == "1.5.0"
    with pytest.raises(ValueError):
        version_name(-1)


def test_deterministic(tmp_path, trees):
    write_release(tmp_path / "a", 2, seed=7)
    assert snapshot(tmp_path / "a") == trees[2]


def test_deterministic_across_hash_seeds(tmp_path):
    code = ("import sys, pathlib; from fixtures import write_release; "
            "write_release(pathlib.Path(sys.argv[1]), 1, seed=3)")
    root = Path(__file__).resolve().parents[1]
    for name, hs in (("x", "1"), ("y", "12345")):
        env = dict(os.environ, PYTHONHASHSEED=hs, PYTHONPATH=str(root))
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], env=env, check=True)
    assert snapshot(tmp_path / "x") == snapshot(tmp_path / "y")


def test_seed_changes_content(tmp_path, trees):
    write_release(tmp_path / "s", 0, seed=8)
    other = snapshot(tmp_path / "s")
    assert other["bin/app"] != trees[0]["bin/app"]


def test_consecutive_versions_share_and_differ(trees):
    for a, b in zip(trees, trees[1:]):
        common = set(a) & set(b)
        same = {p for p in common if a[p] == b[p]}
        changed = {p for p in common if a[p] != b[p]}
        assert {"share/data/defaults.json", "share/data/colors.json", "etc/empty.conf",
                "share/doc/LICENSE", "lib/libfoo.so"} <= same
        assert {"bin/app", "lib/libfoo.so.1", "share/doc/README.txt",
                "share/data/features.json"} <= changed


def test_binaries_edited_not_rewritten(tmp_path):
    import zstandard

    write_release(tmp_path / "a", 0)
    write_release(tmp_path / "b", 1)
    for rel, lo, hi in (("bin/app", 200, 400), ("lib/libfoo.so.1", 100, 200)):
        old = (tmp_path / "a" / rel).read_bytes()
        new = (tmp_path / "b" / rel).read_bytes()
        assert lo * 1024 <= len(old) <= hi * 1024 and lo * 1024 <= len(new) <= hi * 1024
        assert len(old) != len(new)  # insertions/deletions shift offsets
        d = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        patch = zstandard.ZstdCompressor(level=19, dict_data=d).compress(new)
        assert len(patch) < len(new) // 10


def test_rename_add_remove(trees):
    v0, v1, v2 = (set(t) for t in trees)
    assert "share/locale/old-name.mo" in v0 and "share/locale/old-name.mo" not in v1
    assert "share/locale/new-name.mo" in v1 and "share/locale/new-name.mo" not in v0
    assert trees[0]["share/locale/old-name.mo"] == trees[1]["share/locale/new-name.mo"]
    # versioned plugin: renamed every version with small edits
    assert "lib/plugins/libplug-1.0.0.so" in v0 and "lib/plugins/libplug-1.1.0.so" in v1
    for a, b in ((v0, v1), (v1, v2)):
        assert b - a, "files added"
        assert a - b, "files removed"
    assert "share/extras/feature-2.txt" in v2 - v1
    assert "share/legacy/compat-1.txt" in v1 - v2


def test_dedup_within_version(trees):
    for t in trees:
        assert t["share/doc/LICENSE"] == t["share/licenses/LICENSE"]


def test_symlink_and_modes(tmp_path, trees):
    for t in trees:
        assert t["lib/libfoo.so"] == ("symlink", "libfoo.so.1")
        assert t["lib/libfoo.so.1"][0] == "file"
        assert t["bin/app"][2] == 0o755 and t["bin/health"][2] == 0o755
        assert t["share/doc/README.txt"][2] == 0o644
    root = tmp_path / "r"
    write_release(root, 0)
    link = root / "lib" / "libfoo.so"
    assert link.resolve().is_relative_to(root.resolve()) and link.resolve().is_file()


def test_empty_file(trees, tmp_path):
    assert trees[0]["etc/empty.conf"][1] == hashlib.sha256(b"").hexdigest()


def test_large_file_streamed(tmp_path, trees):
    size = 3 * LARGE_BLOCK + 12345  # not a multiple of the block size
    write_release(tmp_path / "a", 0, large_bytes=size)
    write_release(tmp_path / "b", 1, large_bytes=size)
    write_release(tmp_path / "c", 1, large_bytes=size)
    a = (tmp_path / "a/share/big.bin").read_bytes()
    b = (tmp_path / "b/share/big.bin").read_bytes()
    assert len(a) == len(b) == size
    assert b == (tmp_path / "c/share/big.bin").read_bytes()
    diff = sum(x != y for x, y in zip(a, b))
    assert 0 < diff < size // 10  # a few edited regions, the rest unchanged
    assert not (tmp_path / "a").joinpath("share/big.bin").is_symlink()
    # other files are unaffected by the large file
    snap = snapshot(tmp_path / "a")
    del snap["share/big.bin"]
    write_release(tmp_path / "n", 0)
    assert snap == snapshot(tmp_path / "n")


@pytest.mark.parametrize("ok,rc", [(True, 0), (False, 1)])
def test_health_script(tmp_path, ok, rc):
    write_release(tmp_path, 1, health_ok=ok)
    res = subprocess.run([str(tmp_path / "bin/health")], capture_output=True, text=True)
    assert res.returncode == rc
    assert "1.1.0" in (res.stdout + res.stderr)


def test_rewrite_in_place(tmp_path):
    write_release(tmp_path, 0)
    write_release(tmp_path, 0)  # overwrites files and the symlink without error
    write_release(tmp_path / "x", 0)
    assert snapshot(tmp_path / "x") == {k: v for k, v in snapshot(tmp_path).items()
                                        if not k.startswith("x/")}


def test_cli(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    cmd = [sys.executable, "-m", "fixtures", str(tmp_path / "out"), "--versions", "2",
           "--seed", "7", "--large-bytes", "100000", "--unhealthy", "1"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1.0.0", "1.1.0"]
    assert (tmp_path / "out/1.1.0/share/big.bin").stat().st_size == 100000
    assert subprocess.run([str(tmp_path / "out/1.1.0/bin/health")],
                          capture_output=True).returncode == 1
    # refuses to overwrite non-empty output without --force
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 1 and "--force" in again.stderr
    assert subprocess.run(cmd + ["--force"], env=env, capture_output=True).returncode == 0
