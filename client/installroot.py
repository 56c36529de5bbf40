"""The client install root on disk: versions, the current/previous/factory
links, and the private state under ``.cas/``.

::

    ROOT/versions/{version}/...   installed trees, read-only, hardlinks between versions
    ROOT/current  -> versions/{v} swapped atomically (new symlink, rename, dir fsync)
    ROOT/previous -> versions/{v}
    ROOT/factory  -> versions/{v} never garbage-collected
    ROOT/.cas/  config.json root.json state.json journal.json lock
                manifests/{version}.json downloads/ staging/
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any

from casformat.canonical import parse_json
from casformat.paths import check_name
from deltagen.output import fsync_dir, write_atomic

from .errors import UpdateInProgress

LINKS = ("current", "previous", "factory")


class InstallRoot:
    """Paths, links, the lock and the small JSON state files of one install root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.cas = self.root / ".cas"
        self.versions = self.root / "versions"
        self.manifests = self.cas / "manifests"
        self.downloads = self.cas / "downloads"
        self.staging = self.cas / "staging"
        self._lock_fh: IO[str] | None = None

    def create(self) -> None:
        for d in (self.root, self.cas, self.versions, self.manifests, self.downloads, self.staging):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.cas, 0o700)

    @property
    def initialised(self) -> bool:
        return (self.cas / "config.json").exists()

    # -- JSON state files
    def read_json(self, name: str, default: Any = None) -> Any:
        try:
            return json.loads((self.cas / name).read_text())
        except FileNotFoundError:
            return default

    def write_json(self, name: str, value: Any) -> None:
        write_atomic(self.cas / name, json.dumps(value, sort_keys=True, indent=1).encode())

    def remove_json(self, name: str) -> None:
        (self.cas / name).unlink(missing_ok=True)
        fsync_dir(self.cas)

    def state(self) -> dict[str, Any]:
        """``state.json``: root version, highest channel sequence accepted, installed versions."""
        state: dict[str, Any] = self.read_json("state.json", {})
        return state

    def save_state(self, **changes: Any) -> None:
        """Merge ``changes`` into ``state.json`` (only under the update lock: one writer)."""
        self.write_json("state.json", {**self.state(), **changes})

    # -- lock
    def lock(self) -> None:
        fh = open(self.cas / "lock", "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise UpdateInProgress(f"another update of {self.root} is already in progress") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def unlock(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    # -- versions and links
    def version_dir(self, version: str) -> Path:
        return self.versions / check_name("version", version)

    def link(self, name: str) -> str | None:
        """The version a link points at, or None."""
        try:
            target = os.readlink(self.root / name)
        except (FileNotFoundError, OSError):
            return None
        return Path(target).name

    def set_link(self, name: str, version: str) -> None:
        """Point ``name`` at ``versions/{version}`` atomically: new symlink, rename, dir fsync."""
        assert name in LINKS
        tmp = self.root / f".{name}.new"
        tmp.unlink(missing_ok=True)
        os.symlink(f"versions/{version}", tmp)
        os.replace(tmp, self.root / name)
        fsync_dir(self.root)

    def installed(self) -> list[str]:
        return sorted(p.name for p in self.versions.iterdir() if p.is_dir() and not p.name.startswith("."))

    def manifest_path(self, version: str) -> Path:
        return self.manifests / f"{check_name('version', version)}.json"

    def cached_manifest(self, version: str) -> dict[str, Any] | None:
        """The verified manifest envelope cached for ``version``, or None."""
        path = self.manifest_path(version)
        if not path.exists():
            return None
        envelope: dict[str, Any] = parse_json(path.read_bytes())
        return envelope

    def remove_version(self, version: str) -> None:
        path = self.version_dir(version)
        for dirpath, _dirnames, _ in os.walk(path):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(path)
        self.manifest_path(version).unlink(missing_ok=True)
