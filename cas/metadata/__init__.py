"""Metadata: releases, file entries, lifecycle, channels, uploads, roots, deltas, rollouts...

``Metadata`` (``interface.py``) is the interface the rest of the server calls; it
holds every query once, grouped by the data they own (one module per group), in
the SQL that SQLite and PostgreSQL share.  A backend supplies connections,
transactions, the migration bookkeeping and two lock clauses
(``backend.MetadataBackend``):

- ``SqliteMetadata`` (``sqlite.py``) is the embedded default: WAL, synchronous=FULL,
  one connection per thread, every write transaction ``BEGIN IMMEDIATE``.
- ``PostgresMetadata`` (``postgres.py``, imported only when used) runs the same
  queries at READ COMMITTED for replicas sharing one database.

The schema is the list of scripts in ``migrations.py``; ``open_metadata``
(``factory.py``) picks the backend from ``metadata_url``.  Everything a caller
needs is importable from here: ``from cas.metadata import Metadata, open_metadata``.
"""
from __future__ import annotations

from .backend import Connection, MetadataBackend
from .errors import ObjectsBeingDeleted, SchemaTooNew, StaleWrite
from .factory import open_metadata
from .interface import Metadata
from .migrations import MIGRATIONS
from .records import STATUS_RANK, STATUSES, Channel, Release
from .sqlite import SqliteMetadata

__all__ = ["MIGRATIONS", "STATUSES", "STATUS_RANK", "Channel", "Connection", "Metadata", "MetadataBackend",
           "ObjectsBeingDeleted", "Release", "SchemaTooNew", "SqliteMetadata", "StaleWrite", "open_metadata"]
