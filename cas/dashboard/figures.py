"""Per-process caches of the dashboard's figures, and the store statistics (``cas stats``).

Releases are immutable, so what is computed from a release's manifest is cached under
its digest; only the store walk (objects and bytes) expires, after ``usage_seconds``.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from casformat.canonical import parse_json

from ..metadata import Release
from ..repo import Repo

V = TypeVar("V")

MANIFESTS_CACHED = 64
RELEASES_CACHED = 256   # the default of dashboard_cache_releases: each entry is a release's blake3 -> size map
CACHE_BYTES = 16 << 20  # the default of dashboard_cache_bytes: manifest JSON bytes behind each cache
DELTAS_CACHED = 4096


class Lru(Generic[V]):
    """A thread-safe least-recently-used cache of ``size`` values, each made on first use.

    With ``max_weight``, the weights the values are kept with (``get(..., weight=)``) also
    stay within it: the least recently used go first, and a value heavier than all of it is
    returned but not kept."""

    def __init__(self, size: int, max_weight: int | None = None) -> None:
        self.size = size
        self.max_weight = max_weight
        self.weight = 0
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, make: Callable[[], V], weight: int = 0) -> V:
        """The value under ``key``, made (outside the lock) and kept, weighing ``weight``, when absent."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        value = make()
        if self.max_weight is not None and weight > self.max_weight:
            return value
        with self._lock:
            if key in self._items:
                self.weight -= self._items.pop(key)[1]
            self._items[key] = (value, weight)
            self.weight += weight
            while len(self._items) > self.size or (self.max_weight is not None and self.weight > self.max_weight):
                self.weight -= self._items.popitem(last=False)[1][1]
        return value


class Figures:
    """Per-process caches of figures that only change when releases or objects do.

    Releases are immutable, so dedup figures are cached under the list of every
    release (name and manifest digest) and recomputed when it changes; a
    complete delta's figures are cached under its (base, target) manifests
    (``deltas``); the store walk (objects and bytes) is cached for ``usage_seconds``."""

    def __init__(self, usage_seconds: float = 5.0, releases_cached: int = RELEASES_CACHED,
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.usage_seconds = usage_seconds
        # Both caches are bounded by a count and by the JSON bytes of the manifests they
        # hold or came from (``dashboard_cache_bytes``): a count alone lets a few releases
        # of 200,000 files each take gigabytes.
        self._manifests: Lru[dict[str, Any]] = Lru(MANIFESTS_CACHED, cache_bytes)
        self._blobs: Lru[dict[str, int]] = Lru(max(1, releases_cached), cache_bytes)
        self._stored: Lru[dict[str, int]] = Lru(max(1, releases_cached))
        self.deltas: Lru[dict[str, Any]] = Lru(DELTAS_CACHED)
        self._dedup: tuple[Any, dict[tuple[str, str], dict[str, int]]] | None = None
        self._usage: tuple[float, tuple[int, int]] | None = None
        self._lock = threading.Lock()

    def manifest(self, release: Release) -> dict[str, Any]:
        """The release's manifest envelope, parsed."""
        return self._manifests.get(release.manifest_digest, lambda: parse_json(release.manifest),
                                   len(release.manifest))

    def blobs(self, release: Release) -> dict[str, int]:
        """Distinct contents of a release: blake3 -> size."""
        def make() -> dict[str, int]:
            return {f["blake3"]: f["size"] for f in self.manifest(release)["signed"]["files"]
                    if f["type"] == "file"}
        return self._blobs.get(release.manifest_digest, make, len(release.manifest))

    def stored(self, repo: Repo, release: Release) -> dict[str, int]:
        """Distinct stored objects of a release: whole files, and for chunked files their
        index and chunks (dedup is counted per chunk): blake3 -> size."""
        def make() -> dict[str, int]:
            out: dict[str, int] = {}
            for f in self.manifest(release)["signed"]["files"]:
                if f["type"] != "file":
                    continue
                if "chunks" in f:
                    out[f["chunks"]["index"]] = f["chunks"]["size"]
                    out.update(repo.meta.index_chunk_sizes(f["chunks"]["index"]))
                else:
                    out[f["blake3"]] = f["size"]
            return out
        return self._stored.get(release.manifest_digest, make)

    def usage(self, repo: Repo) -> tuple[int, int]:
        """(objects, stored bytes) of the object store, at most ``usage_seconds`` old."""
        now = time.monotonic()
        with self._lock:
            if self._usage is not None and now - self._usage[0] < self.usage_seconds:
                return self._usage[1]
        value = repo.objects.usage()
        with self._lock:
            self._usage = (now, value)
        return value

    def dedup(self, repo: Repo, every: list[Release]) -> dict[tuple[str, str], dict[str, int]]:
        """Dedup figures of every release, in publication order across products."""
        order = sorted(every, key=lambda r: (r.created, r.product, r.version))
        key = tuple((r.product, r.version, r.manifest_digest) for r in order)
        with self._lock:
            if self._dedup is not None and self._dedup[0] == key:
                return self._dedup[1]
        seen: set[str] = set()
        out: dict[tuple[str, str], dict[str, int]] = {}
        for r in order:
            blobs = self.stored(repo, r)
            new = {d: s for d, s in blobs.items() if d not in seen}
            seen.update(blobs)
            unique, added = sum(blobs.values()), sum(new.values())
            out[(r.product, r.version)] = {
                "logical_bytes": r.logical_bytes, "unique_bytes": unique, "new_bytes": added,
                "objects": len(blobs), "new_objects": len(new),
                "deduplicated_bytes": r.logical_bytes - added,
                "dedup_within_bytes": r.logical_bytes - unique}
        with self._lock:
            self._dedup = (key, out)
        return out


def store_stats(repo: Repo, figures: Figures | None = None) -> dict[str, Any]:
    """Objects, stored, logical and unique bytes, dedup ratio (``cas stats``)."""
    count, stored = figures.usage(repo) if figures else repo.objects.usage()
    logical = repo.meta.logical_bytes()
    referenced = sum(size for _, size in repo.meta.referenced_objects())
    return {"objects": count, "stored_bytes": stored, "logical_bytes": logical,
            "unique_referenced_bytes": referenced,
            "dedup_ratio": round(logical / referenced, 3) if referenced else None,
            "releases": sum(p["releases"] for p in repo.meta.list_products())}
