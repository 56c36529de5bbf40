"""Content already on this machine, found by digest and hashed before it is used.

Sources are the files of every installed version (through its cached manifest) and the
finished downloads in ``.cas/downloads/<blake3>``.  A path is returned only after its
content hashed to the digest asked for, so a file modified locally is never used.
"""
from __future__ import annotations

from pathlib import Path

from deltagen.digests import blake3_file

from .installroot import InstallRoot


class LocalContent:
    """Verified local copies by BLAKE3; each path is hashed at most once (``hashes`` is the cache)."""

    def __init__(self, index: dict[str, list[Path]], hashes: dict[Path, str] | None = None) -> None:
        self.index = index
        self.hashes: dict[Path, str] = {} if hashes is None else hashes

    @classmethod
    def scan(cls, layout: InstallRoot, hashes: dict[Path, str] | None = None) -> LocalContent:
        """Index the files of the installed versions and the finished downloads of ``layout``."""
        index: dict[str, list[Path]] = {}
        for version in layout.installed():
            manifest = layout.cached_manifest(version)
            if manifest is None:
                continue
            base = layout.version_dir(version)
            for entry in manifest["signed"]["files"]:
                if entry["type"] == "file":
                    index.setdefault(entry["blake3"], []).append(base / entry["path"])
        for path in layout.downloads.iterdir():
            if len(path.name) == 64:
                index.setdefault(path.name, []).append(path)
        return cls(index, hashes)

    def find(self, digest: str) -> Path | None:
        """A local file whose content really is ``digest``, or None."""
        for path in self.index.get(digest, []):
            if self._digest_of(path) == digest:
                return path
        return None

    def _digest_of(self, path: Path) -> str:
        if path not in self.hashes:
            try:
                self.hashes[path] = blake3_file(path) if path.is_file() and not path.is_symlink() else ""
            except OSError:
                self.hashes[path] = ""
        return self.hashes[path]
