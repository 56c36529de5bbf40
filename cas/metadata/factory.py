"""Opening the metadata backend ``metadata_url`` names."""
from __future__ import annotations

from pathlib import Path

from .interface import Metadata
from .sqlite import SqliteMetadata


def open_metadata(url: str | None, store: Path, sqlite_cache_kib: int = 1024, pool_size: int = 10,
                  pool_timeout: float = 5.0) -> Metadata:
    """The backend ``metadata_url`` names: ``postgresql://...`` (or ``postgres://``),
    ``sqlite:///PATH``, or nothing for the embedded default ``STORE/meta.db``.

    PostgreSQL's driver (psycopg) is imported only when that backend is asked for; ``pool_size``
    and ``pool_timeout`` bound its connection pool."""
    if not url:
        return SqliteMetadata(Path(store) / "meta.db", sqlite_cache_kib)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresMetadata
        return PostgresMetadata(url, pool_size=pool_size, pool_timeout=pool_timeout)
    if url.startswith("sqlite:///"):  # sqlite:///relative.db, sqlite:////absolute.db
        return SqliteMetadata(Path(url[len("sqlite:///"):]), sqlite_cache_kib)
    raise ValueError(f"metadata_url must be postgresql://... or sqlite:///PATH, not {url.split(':')[0]}:...")
