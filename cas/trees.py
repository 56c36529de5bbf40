"""Release trees on disk: scan a directory into manifest entries, build the manifest.

``scan_tree`` walks a release directory (never following symlinks), hashes
every regular file once (BLAKE3 and SHA-256 together, streaming) and refuses
anything a manifest cannot hold (devices, sockets, escaping symlinks, bad names).
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from casformat.errors import DocumentError
from casformat.manifests import check_manifest
from casformat.paths import check_path, resolve_symlink
from casformat.times import format_time, utc_now
from deltagen.digests import file_digest

from .chunked import ChunkedSource, ChunkSettings, chunk_local_file
from .errors import CasError


class TreeError(CasError):
    """A release tree holds something a manifest cannot (a device, an escaping symlink, a bad name)."""

    status, code = 422, "bad_tree"


def _shown(path: Path) -> str:
    """A path for a one-line message: quoted when it holds control characters."""
    text = str(path)
    return text if text.isprintable() else repr(text)


@dataclass(frozen=True)
class ScannedTree:
    entries: list[dict[str, Any]]
    sources: dict[str, Path]  # blake3 -> one local file with that content (stored whole)
    chunked: dict[str, ChunkedSource] = field(default_factory=dict)  # blake3 -> a file stored as chunks

    @property
    def logical_bytes(self) -> int:
        return sum(e["size"] for e in self.entries if e["type"] == "file")


def scan_tree(root: Path, progress: Callable[[int], None] | None = None,
              chunking: ChunkSettings | None = None) -> ScannedTree:
    """Scan ``root``; with ``chunking``, files it ``wants`` are chunked in the same pass
    (their entries name a chunk index, ``casformat/chunks.py``)."""
    root = Path(root)
    if not root.is_dir():
        raise TreeError(f"{root} is not a directory")
    entries: list[dict[str, Any]] = []
    sources: dict[str, Path] = {}
    chunked: dict[str, ChunkedSource] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        names = sorted(filenames + [d for d in dirnames if (base / d).is_symlink()])
        for name in names:
            full = base / name
            rel = full.relative_to(root).as_posix()
            try:
                check_path(rel)
            except DocumentError as exc:
                raise TreeError(f"cannot publish {_shown(full)}: {exc.message}") from None
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(full)
                try:
                    resolve_symlink(rel, target)
                except DocumentError as exc:
                    raise TreeError(f"cannot publish {_shown(full)}: {exc.message}") from None
                entries.append({"path": rel, "type": "symlink", "target": target})
            elif stat.S_ISREG(st.st_mode):
                entry: dict[str, Any]
                if chunking is not None and chunking.wants(st.st_size):
                    digest, source = chunk_local_file(full, chunking)
                    chunked.setdefault(digest.blake3, source)
                    entry = {"chunks": {"index": source.index_digest, "size": len(source.index_bytes)}}
                else:
                    digest = file_digest(full)
                    sources.setdefault(digest.blake3, full)
                    entry = {}
                entries.append({"path": rel, "type": "file", "mode": stat.S_IMODE(st.st_mode) & 0o1777,
                                "size": digest.size, "blake3": digest.blake3, "sha256": digest.sha256, **entry})
                if progress:
                    progress(digest.size)
            elif not stat.S_ISDIR(st.st_mode):
                raise TreeError(f"cannot publish {_shown(full)}: not a regular file, directory or symlink")
        dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
    entries.sort(key=lambda e: e["path"])
    return ScannedTree(entries, sources, chunked)


def manifest_signed(product: str, version: str, tree: ScannedTree) -> dict[str, Any]:
    signed = {"schema": 1, "product": product, "version": version,
              "created": format_time(utc_now()), "files": tree.entries}
    try:
        return check_manifest(signed)
    except DocumentError as exc:
        raise TreeError(f"{exc.message}: {exc.detail}") from None
