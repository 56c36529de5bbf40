"""An open server store: configuration, objects, metadata and keys together."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from casformat.roots import Root

from .chunked import IndexCache
from .config import Config
from .deltaplan import PlanCache
from .keys import ServerKeys, load_server_keys, trusted_root
from .metadata import Metadata, open_metadata
from .objectstore import Ingested, ObjectStore, open_object_store


@dataclass
class Repo:
    config: Config
    objects: ObjectStore
    meta: Metadata
    keys: ServerKeys
    plans: PlanCache = field(init=False)  # delta plans by release pair (cas/deltaplan.py)
    chunk_indexes: IndexCache = field(init=False)  # parsed chunk indexes of chunked files (cas/chunked.py)

    def __post_init__(self) -> None:
        self.plans = PlanCache(self.config.delta_plan_cache_entries)
        self.chunk_indexes = IndexCache()

    @property
    def store_dir(self) -> Path:
        return self.config.store

    def root(self) -> Root | None:
        return trusted_root(self.meta)

    def reload_keys(self) -> None:
        self.keys = load_server_keys(self.config.store)

    # Objects as the rest of the server sees them: the store, minus what garbage
    # collection has deleted, plus revival of what it only marked (cas/gc.py).
    def present(self, digests: Iterable[str]) -> set[str]:
        """Which of ``digests`` the store holds; they are needed again, so GC spares them."""
        wanted = list(dict.fromkeys(digests))
        gone = self.meta.revive(wanted)
        return {d for d in wanted if d not in gone and self.objects.exists(d)}

    def missing(self, digests: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(digests))
        have = self.present(wanted)
        return [d for d in wanted if d not in have]

    def ingested(self, result: Ingested) -> Ingested:
        """Record that an object was (re)written: no GC tombstone applies to it now."""
        self.meta.reingested([result.digest])
        return result

    def ingest_file(self, path: Path, expected: str | None = None) -> Ingested:
        return self.ingested(self.objects.ingest_file(path, expected))


def open_repo(config: Config) -> Repo:
    store = Path(config.store)
    store.mkdir(parents=True, exist_ok=True)
    objects = open_object_store(config)
    meta = open_metadata(config.metadata_url, store, config.sqlite_cache_kib, config.postgres_pool_size,
                         config.postgres_pool_timeout_seconds)
    return Repo(config, objects, meta, load_server_keys(store))
