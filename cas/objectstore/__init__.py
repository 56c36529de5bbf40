"""Objects: immutable, named by their BLAKE3 digest, behind one interface with two backends.

- ``interface.py``: ``ObjectStore`` (what the server needs), ``Writer``, ``Ingested``, ``FsckReport``;
- ``staging.py``: the write path every backend shares (temp file, hash, verify, ``install``);
- ``filesystem.py``: ``FilesystemObjectStore``, the embedded default (``STORE/objects/ab/cdef...``);
- ``s3.py``: ``S3ObjectStore``, any S3-compatible service (imported only when configured: boto3);
- ``factory.py``: ``open_object_store``, the backend ``config.object_store`` names.

Callers import from here: ``from cas.objectstore import ObjectStore, open_object_store``.
"""
from __future__ import annotations

from .factory import BACKENDS, open_object_store
from .filesystem import OBJECT_MODE, FilesystemObjectStore, clone_or_copy, link_or_copy
from .interface import FsckReport, Ingested, ObjectStore, Writer
from .staging import ObjectWriter, StagedObjectStore

__all__ = ["BACKENDS", "OBJECT_MODE", "FilesystemObjectStore", "FsckReport", "Ingested", "ObjectStore",
           "ObjectWriter", "StagedObjectStore", "Writer", "clone_or_copy", "link_or_copy", "open_object_store"]
