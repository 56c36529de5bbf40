"""client/install.py: the staged tree's directories, made once before files are placed."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from client.install import make_directories, place_file


def _dirs(root: Path) -> list[str]:
    return sorted(Path(d).relative_to(root).as_posix() for d, _, _ in os.walk(root) if Path(d) != root)


def test_make_directories_makes_every_parent_once(tmp_path: Path) -> None:
    entries = [{"path": "top.txt"}, {"path": "a/b/c/deep.so"}, {"path": "a/b/other"}, {"path": "a/x/y"},
               {"path": "link/target", "type": "symlink"}, {"path": "a/b/c/second"}]
    made: list[str] = []
    real_mkdir = os.mkdir

    def counting_mkdir(path: str, *args: object, **kwargs: object) -> None:
        made.append(os.path.relpath(path, tmp_path))
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "mkdir", counting_mkdir)
        make_directories(tmp_path, entries)
    assert _dirs(tmp_path) == ["a", "a/b", "a/b/c", "a/x", "link"]
    assert sorted(made) == ["a", "a/b", "a/b/c", "a/x", "link"]          # one mkdir each, none per file
    assert made.index("a") < made.index("a/b") < made.index("a/b/c")     # parents first
    # the files then go in without a mkdir of their own
    (tmp_path / "src").write_bytes(b"data")
    os.chmod(tmp_path / "src", 0o444)
    place_file(tmp_path / "src", tmp_path / "a/b/c/deep.so", 0o444, link=True, parents=False)
    assert (tmp_path / "a/b/c/deep.so").read_bytes() == b"data"


def test_make_directories_keeps_existing_directories_and_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    make_directories(tmp_path, [{"path": "a/b/f"}])
    assert _dirs(tmp_path) == ["a", "a/b"]
    (tmp_path / "blocker").write_bytes(b"")
    with pytest.raises(FileExistsError):
        make_directories(tmp_path, [{"path": "blocker/f"}])
    assert (tmp_path / "blocker").is_file()


def test_make_directories_with_no_entries_or_only_top_level_files(tmp_path: Path) -> None:
    make_directories(tmp_path, [])
    make_directories(tmp_path, [{"path": "f"}, {"path": "g"}])
    assert _dirs(tmp_path) == []
