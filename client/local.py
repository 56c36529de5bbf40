"""Content already on this machine, found by digest and hashed before it is used.

Sources are the files of every installed version (through its cached manifest) and the
finished downloads in ``.cas/downloads/<blake3>``.  A path is returned only after its
content hashed to the digest asked for, so a file modified locally is never used.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deltagen.digests import blake3_file

from .installroot import InstallRoot


class LocalContent:
    """Verified local copies by BLAKE3; each path is hashed at most once (``hashes`` is the cache)."""

    def __init__(self, index: dict[str, list[Path]], hashes: dict[Path, str] | None = None,
                 by_path: dict[str, list[Path]] | None = None, chunked: list[Path] | None = None) -> None:
        self.index = index
        self.hashes: dict[Path, str] = {} if hashes is None else hashes
        self.by_path = by_path or {}     # manifest path -> the installed files at that path
        self.chunked = chunked or []     # installed files that were chunked files in their manifest

    @classmethod
    def scan(cls, layout: InstallRoot, hashes: dict[Path, str] | None = None) -> LocalContent:
        """Index the files of the installed versions and the finished downloads of ``layout``."""
        index: dict[str, list[Path]] = {}
        by_path: dict[str, list[Path]] = {}
        chunked: list[Path] = []
        for version in layout.installed():
            manifest = layout.cached_manifest(version)
            if manifest is None:
                continue
            base = layout.version_dir(version)
            for entry in manifest["signed"]["files"]:
                if entry["type"] == "file":
                    index.setdefault(entry["blake3"], []).append(base / entry["path"])
                    by_path.setdefault(entry["path"], []).append(base / entry["path"])
                    if "chunks" in entry:
                        chunked.append(base / entry["path"])
        for path in layout.downloads.iterdir():
            if len(path.name) == 64:
                index.setdefault(path.name, []).append(path)
        return cls(index, hashes, by_path, chunked)

    def find(self, digest: str) -> Path | None:
        """A local file whose content really is ``digest``, or None."""
        for path in self.index.get(digest, []):
            if self._digest_of(path) == digest:
                return path
        return None

    def chunk_candidates(self, entry: Mapping[str, Any]) -> list[Path]:
        """Installed files worth chunking for a chunked target (``client/chunks.py``): those at
        its path, then every installed chunked file.  Their chunks are verified as they are used."""
        return list(dict.fromkeys([*self.by_path.get(entry["path"], []), *self.chunked]))

    def _digest_of(self, path: Path) -> str:
        if path not in self.hashes:
            try:
                self.hashes[path] = blake3_file(path) if path.is_file() and not path.is_symlink() else ""
            except OSError:
                self.hashes[path] = ""
        return self.hashes[path]
