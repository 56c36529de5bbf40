"""An open server store: configuration, objects, metadata and keys together."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from client.roots import Root

from .config import Config
from .keys import ServerKeys, load_server_keys, trusted_root
from .metadata import SqliteMetadata
from .objects import FilesystemObjectStore


@dataclass
class Repo:
    config: Config
    objects: FilesystemObjectStore
    meta: SqliteMetadata
    keys: ServerKeys

    @property
    def store_dir(self) -> Path:
        return self.config.store

    def root(self) -> Root | None:
        return trusted_root(self.meta)

    def reload_keys(self) -> None:
        self.keys = load_server_keys(self.config.store)


def open_repo(config: Config) -> Repo:
    store = Path(config.store)
    store.mkdir(parents=True, exist_ok=True)
    objects = FilesystemObjectStore(store, config.max_object_bytes)
    meta = SqliteMetadata(store / "meta.db")
    return Repo(config, objects, meta, load_server_keys(store))
