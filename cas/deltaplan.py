"""Which file pairs to build deltas for, and the manifest delta: pure functions.

``plan_pairs`` picks, for every file of a target release whose content the
base release lacks, the base files worth patching from: the file at the same
path, files with the same name elsewhere, and removed files of similar size
and kind (renames).  ``manifest_delta`` assembles the contract's document from
two manifests and the recipes built so far, offering a recipe only when it is
smaller than the next cheaper way to get the same bytes.
"""
from __future__ import annotations

import posixpath
from typing import Any, Iterable, Mapping

MAX_BASES_PER_FILE = 3
RENAME_SIZE_RATIO = 0.5  # a removed file within +-50% of the size may be a renamed one


def _files(entries: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {e["path"]: e for e in entries}


def _stem(path: str) -> tuple[str, str]:
    name = posixpath.basename(path)
    root, ext = posixpath.splitext(name)
    return name, ext


def plan_pairs(base_files: Iterable[Mapping[str, Any]], target_files: Iterable[Mapping[str, Any]],
               tiny_bytes: int = 0) -> list[tuple[str, str]]:
    """(base blake3, target blake3) pairs to build; base '' = compress the target only."""
    base = _files(base_files)
    target = _files(target_files)
    base_regular = {p: e for p, e in base.items() if e["type"] == "file"}
    have = {e["blake3"] for e in base_regular.values()}
    removed = [e for p, e in base_regular.items() if p not in target]
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for e in base_regular.values():
        by_name.setdefault(posixpath.basename(e["path"]), []).append(e)
    pairs: dict[tuple[str, str], None] = {}
    for path, entry in sorted(target.items()):
        if entry["type"] != "file" or entry["blake3"] in have:
            continue
        digest, size = entry["blake3"], entry["size"]
        pairs[("", digest)] = None
        if size < tiny_bytes:
            continue
        candidates: list[Mapping[str, Any]] = []
        same = base_regular.get(path)
        if same is not None:
            candidates.append(same)
        name, ext = _stem(path)
        candidates.extend(sorted(by_name.get(name, []), key=lambda e: abs(e["size"] - size)))
        renamed = [e for e in removed if _stem(e["path"])[1] == ext
                   and abs(e["size"] - size) <= RENAME_SIZE_RATIO * max(size, 1)]
        candidates.extend(sorted(renamed, key=lambda e: abs(e["size"] - size)))
        chosen: list[str] = []
        for c in candidates:
            if c["blake3"] not in chosen and c["size"] > 0:
                chosen.append(c["blake3"])
            if len(chosen) == MAX_BASES_PER_FILE:
                break
        for b in chosen:
            pairs[(b, digest)] = None
    return list(pairs)
