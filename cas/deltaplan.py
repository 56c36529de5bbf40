"""Which file pairs to build deltas for, and the manifest delta: pure functions.

``plan_pairs`` picks, for every file of a target release whose content the
base release lacks, the base files worth patching from: the file at the same
path, files with the same name elsewhere, and removed files of similar size
and kind (renames).  ``manifest_delta`` assembles the contract's document from
two manifests and the recipes built so far, offering a recipe only when it is
smaller than the next cheaper way to get the same bytes.
"""
from __future__ import annotations

import bisect
import posixpath
import threading
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

MAX_BASES_PER_FILE = 3
RENAME_SIZE_RATIO = 0.5  # a removed file within +-50% of the size may be a renamed one
#: a file with the same name elsewhere is a base only if it is at least this fraction of the
#: target's size: a patch from a much smaller file saves at most about that file's size, and
#: costs a build over the whole target (git: its 3.7 MB program from a 79 KB bash-completion
#: script and a 604 B file, both named ``git``: two 1.5 MB patches, 6.8 s, never offered)
SAME_NAME_MIN_RATIO = 0.125


def _files(entries: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {e["path"]: e for e in entries}


def _stem(path: str) -> tuple[str, str]:
    name = posixpath.basename(path)
    root, ext = posixpath.splitext(name)
    return name, ext


class _BySize:
    """Distinct contents (one entry per digest, empty files left out) in size order, so that
    the few closest in size to a target are found with a binary search, not a scan."""

    def __init__(self, entries: Iterable[Mapping[str, Any]]) -> None:
        unique: dict[str, int] = {}
        for e in entries:
            if e["size"] > 0:
                unique.setdefault(e["blake3"], e["size"])
        self.items = sorted((size, digest) for digest, size in unique.items())
        self.sizes = [size for size, _ in self.items]
        self.size_of = unique

    def closest(self, size: int, count: int, within: float | None = None) -> Iterator[str]:
        """Up to ``count`` digests nearest ``size`` (nearest first), at most ``within`` away."""
        right = bisect.bisect_left(self.sizes, size)
        left = right - 1
        for _ in range(count):
            take_left = left >= 0 and (right >= len(self.items)
                                       or size - self.sizes[left] <= self.sizes[right] - size)
            if take_left:
                found, left = self.items[left], left - 1
            elif right < len(self.items):
                found, right = self.items[right], right + 1
            else:
                return
            if within is not None and abs(found[0] - size) > within:
                return
            yield found[1]


def plan_pairs(base_files: Iterable[Mapping[str, Any]], target_files: Iterable[Mapping[str, Any]],
               tiny_bytes: int = 0) -> list[tuple[str, str]]:
    """(base blake3, target blake3) pairs to build; base '' = compress the target only.

    Near-linear in the number of files: base files are indexed by name and removed ones by
    extension, each index in size order, and a target looks at no more than
    ``MAX_BASES_PER_FILE`` entries of each (a release renaming thousands of files of one
    kind and size used to compare every pair)."""
    base = _files(base_files)
    target = _files(target_files)
    base_regular = {p: e for p, e in base.items() if e["type"] == "file"}
    have = {e["blake3"] for e in base_regular.values()}
    grouped_by_name: dict[str, list[Mapping[str, Any]]] = {}
    grouped_removed: dict[str, list[Mapping[str, Any]]] = {}
    for p, e in base_regular.items():
        grouped_by_name.setdefault(posixpath.basename(p), []).append(e)
        if p not in target:
            grouped_removed.setdefault(_stem(p)[1], []).append(e)
    by_name = {name: _BySize(entries) for name, entries in grouped_by_name.items()}
    removed_by_ext = {ext: _BySize(entries) for ext, entries in grouped_removed.items()}
    pairs: dict[tuple[str, str], None] = {}
    for path, entry in sorted(target.items()):
        if entry["type"] != "file" or entry["blake3"] in have:
            continue
        digest, size = entry["blake3"], entry["size"]
        pairs[("", digest)] = None
        if size < tiny_bytes:
            continue
        chosen: list[str] = []
        same = base_regular.get(path)
        if same is not None and same["size"] > 0:
            chosen.append(same["blake3"])
        name, ext = _stem(path)
        named, renamed = by_name.get(name), removed_by_ext.get(ext)
        namesakes = (c for c in named.closest(size, MAX_BASES_PER_FILE + 1)
                     if named.size_of[c] >= SAME_NAME_MIN_RATIO * size) if named else iter(())
        for candidates in (namesakes,
                           renamed.closest(size, MAX_BASES_PER_FILE * 2, RENAME_SIZE_RATIO * max(size, 1))
                           if renamed else iter(())):
            for c in candidates:
                if len(chosen) == MAX_BASES_PER_FILE:
                    break
                if c not in chosen:
                    chosen.append(c)
        for b in chosen:
            pairs[(b, digest)] = None
    return list(pairs)


class PlanCache:
    """The last ``entries`` plans, keyed by (base manifest digest, target manifest digest,
    tiny_bytes): a plan is a pure function of the two manifests, so a repeated
    ``GET .../delta?from=`` of a large pair plans once.  ``computed`` counts the plans
    actually made (exposed as ``cas_delta_plans_computed``)."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self.computed = 0
        self._plans: OrderedDict[tuple[str, str, int], list[tuple[str, str]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int], plan: Callable[[], list[tuple[str, str]]]) -> list[tuple[str, str]]:
        with self._lock:
            found = self._plans.get(key)
            if found is not None:
                self._plans.move_to_end(key)
                return found
        made = plan()
        with self._lock:
            self.computed += 1
            if self.entries > 0:
                self._plans[key] = made
                self._plans.move_to_end(key)
                while len(self._plans) > self.entries:
                    self._plans.popitem(last=False)
        return made


def bundle_inputs(base_files: Iterable[Mapping[str, Any]], target_files: Iterable[Mapping[str, Any]],
                  pairs: Iterable[tuple[str, str]],
                  offers: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The changed files of a release pair as ``deltagen.bundle_candidates`` takes them.

    ``offers``: each changed target's per-file offers, cheapest first (``offered``).  A
    target brings the base of its best patch, else the first base the plan gave it, and
    its cheapest offer (``best_size``, ``best_algorithm``: the build policy keeps files
    whose best is a machine-code patch or large out of bundles)."""
    base_list = [e for e in base_files if e["type"] == "file"]
    have = {e["blake3"] for e in base_list}
    sizes = {e["blake3"]: e["size"] for e in base_list}
    first_base: dict[str, str] = {}
    for pair_base, t in pairs:
        if pair_base:
            first_base.setdefault(t, pair_base)
    files = []
    changed = (e for e in target_files if e["type"] == "file" and e["blake3"] not in have)
    for entry in sorted(changed, key=lambda e: e["path"]):
        t = entry["blake3"]
        mine = offers.get(t) or [{"kind": "raw", "size": entry["size"]}]
        patch = next((r for r in mine if r["kind"] == "patch"), None)
        b = patch["base"] if patch else first_base.get(t)
        best = mine[0]
        files.append({"target": t, "path": entry["path"], "size": entry["size"], "base": b,
                      "base_size": sizes.get(b, 0) if b else 0, "best_size": best["size"],
                      "best_algorithm": best.get("algorithm") if best["kind"] != "raw" else None})
    return files
