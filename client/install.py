"""Staging a version tree and checking installed trees: local file work only.

Files are staged under ``.cas/staging/{version}``, read-only with their
manifest mode, fsynced, then renamed to ``versions/{version}``.  A file whose
content is already installed is hardlinked when its mode matches (else copied).
"""
from __future__ import annotations

import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping

from deltagen.digests import blake3_file
from deltagen.output import sync_filesystem

FSYNC_THREADS = 16


def installed_mode(entry: Mapping[str, Any]) -> int:
    """Installed files are read-only: the manifest mode without write bits."""
    return int(entry["mode"]) & 0o7555


def make_directories(root: Path, files: Iterable[Mapping[str, Any]]) -> None:
    """Create every directory the manifest's entries sit in under ``root``, each once, parents
    first (placing files then needs no ``mkdir`` per file: a tree of thousands of small
    files spent most of its staging in them).  The paths are the manifest's, already
    validated (casformat/paths.py): relative, ``/``-separated, no ``..``."""
    wanted: set[str] = set()
    for entry in files:
        parent = entry["path"].rpartition("/")[0]
        while parent and parent not in wanted:
            wanted.add(parent)
            parent = parent.rpartition("/")[0]
    base = os.fspath(root)
    for directory in sorted(wanted):   # a directory sorts before everything under it
        try:
            os.mkdir(f"{base}/{directory}")
        except FileExistsError:
            if not os.path.isdir(f"{base}/{directory}"):
                raise


def place_file(source: Path, dest: Path, mode: int, link: bool, parents: bool = True) -> None:
    """Put ``source``'s bytes at ``dest`` with ``mode``: hardlink when allowed, else copy.
    ``parents=False``: ``dest``'s directory exists (``make_directories``)."""
    if parents:
        dest.parent.mkdir(parents=True, exist_ok=True)
    if link and stat.S_IMODE(os.stat(source).st_mode) == mode:
        try:
            os.link(source, dest)
            return
        except OSError:
            pass
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(source, tmp)
    os.chmod(tmp, mode)
    os.replace(tmp, dest)


def finish_file(path: Path, mode: int) -> None:
    os.chmod(path, mode)


def _fsync_path(path: Path) -> None:
    # Read-only open: staged files are already read-only, and fsync needs no write access.
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path, written: Iterable[Path] = ()) -> None:
    """Make a staged tree durable: one ``syncfs`` of its filesystem where Linux has it (the
    staged files are written without their own fsync), else an fsync of every file written
    into it and of every directory, in parallel (one fsync at a time made fresh installs
    of many small files fsync-bound)."""
    if sync_filesystem(root):
        return
    directories = [Path(dirpath) for dirpath, _, _ in os.walk(root)]
    with ThreadPoolExecutor(max_workers=FSYNC_THREADS) as pool:
        list(pool.map(_fsync_path, [*written, *directories]))


def tree_problems(root: Path, files: Iterable[Mapping[str, Any]], hashed: bool = False) -> list[str]:
    """Differences between an installed tree and its manifest (content, mode, links).

    ``hashed``: every file's content was checked against its BLAKE3 as it was placed (the
    staging of an update), so only sizes, modes, links and stray entries are checked here
    rather than hashing the whole tree a second time.  One ``lstat`` per entry and plain
    string paths: this runs over every file of every staged tree."""
    problems: list[str] = []
    expected: set[str] = set()
    base = os.fspath(root)
    for entry in files:
        rel = entry["path"]
        path = f"{base}/{rel}"
        expected.add(rel)
        try:
            st: os.stat_result | None = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):   # missing, or a file where a directory was
            st = None
        if entry["type"] == "symlink":
            if st is None or not stat.S_ISLNK(st.st_mode) or os.readlink(path) != entry["target"]:
                problems.append(f"{rel}: symlink missing or changed")
            continue
        if st is None or not stat.S_ISREG(st.st_mode):
            problems.append(f"{rel}: missing")
            continue
        if st.st_size != entry["size"] or (not hashed and blake3_file(path) != entry["blake3"]):
            problems.append(f"{rel}: content differs from the manifest")
        elif stat.S_IMODE(st.st_mode) != installed_mode(entry):
            problems.append(f"{rel}: mode {stat.S_IMODE(st.st_mode):o}, expected "
                            f"{installed_mode(entry):o}")
    prefix = len(base) + 1
    for dirpath, dirnames, filenames in os.walk(base):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = os.path.join(dirpath, name)[prefix:]
            if rel not in expected:
                problems.append(f"{rel}: not in the manifest")
    return problems


def remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for dirpath, _, _ in os.walk(path):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(path)
