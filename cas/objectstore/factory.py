"""Opening the object store ``config.object_store`` names."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .filesystem import FilesystemObjectStore
from .interface import ObjectStore

if TYPE_CHECKING:
    from ..config import Config

BACKENDS = ("filesystem", "s3")


def open_object_store(config: Config) -> ObjectStore:
    """The backend ``config.object_store`` names; S3 (boto3) is imported only when used."""
    if config.object_store == "s3":
        from .s3 import S3ObjectStore
        return S3ObjectStore.from_config(config)
    if config.object_store != "filesystem":
        raise ValueError(f"object_store must be one of {BACKENDS}, not {config.object_store!r}")
    return FilesystemObjectStore(Path(config.store), config.max_object_bytes)
