"""The client install root on disk: versions, the current/previous/factory
links, and the private state under ``.cas/``.

::

    ROOT/versions/{version}/...   installed trees, read-only, hardlinks between versions
    ROOT/current  -> versions/{v} swapped atomically (new symlink, rename, dir fsync)
    ROOT/previous -> versions/{v}
    ROOT/factory  -> versions/{v} never garbage-collected
    ROOT/.cas/  config.json root.json state.json journal.json lock
                manifests/{version}.json downloads/ staging/

The root, ``.cas/`` and its state files must belong to the user running the client and
must not be writable by group or others (``InstallRoot.check_safe``): another local user
who could write there could point ``.cas/lock`` at a file of ours (we would truncate it)
or replace ``root.json``.  State files are opened with ``O_NOFOLLOW``, so a symlink planted
in their place is refused, never followed.  The root's path is at most
``casformat.paths.MAX_ROOT_BYTES`` long, so every path of a release fits under it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
from pathlib import Path
from typing import IO, Any

from casformat.canonical import MAX_MANIFEST_BYTES, parse_json
from casformat.paths import MAX_ROOT_BYTES, check_name
from deltagen.output import fsync_dir, write_atomic

from .errors import ClientError, UnsafeRoot, UpdateInProgress

SAFE_LOCATION = "a directory of your own, e.g. ~/.local/share/<product> or /var/lib/<product> (as root)"
STATE_FILES = ("config.json", "root.json", "state.json", "journal.json", "lock")


def check_owned(path: Path, st: os.stat_result) -> None:
    """Refuse ``path`` (its ``stat``) unless it belongs to this user and only this user may write it."""
    uid = os.geteuid()
    if st.st_uid != uid:
        raise UnsafeRoot(f"{path} belongs to uid {st.st_uid}, not to this user (uid {uid}): another user "
                         f"could replace what the client trusts; use {SAFE_LOCATION}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeRoot(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}): "
                         f"another user could replace what the client trusts; use {SAFE_LOCATION} "
                         f"or chmod go-w it")


def open_state(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open a state file without following a symlink and check who owns it; returns the fd."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeRoot(f"{path} is a symlink: refusing to follow it (state files are never links)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeRoot(f"{path} is not a regular file")
        check_owned(path, st)
    except BaseException:
        os.close(fd)
        raise
    return fd

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
        """Make the root (or check the existing directory is safe) and ``.cas/`` (mode 0700)."""
        self.check_path_length()
        if self.root.exists():
            self.check_safe()
        for d in (self.root, self.cas, self.versions, self.manifests, self.downloads, self.staging):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.cas, 0o700)
        self.check_safe()

    def check_path_length(self) -> None:
        """Refuse a root whose path leaves too little room for a release's paths (ENAMETOOLONG)."""
        length = len(os.fsencode(self.root))
        if length > MAX_ROOT_BYTES:
            raise UnsafeRoot(f"the install root path is {length} bytes; at most {MAX_ROOT_BYTES} leave room "
                             f"for every path of a release")

    def check_safe(self) -> None:
        """Refuse a root, ``.cas/`` or state file not owned by this user or writable by others."""
        self.check_path_length()
        check_owned(self.root, os.stat(self.root))
        try:
            st = os.lstat(self.cas)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeRoot(f"{self.cas} is not a directory (a symlink?): refusing it")
        check_owned(self.cas, st)
        for name in STATE_FILES:
            try:
                st = os.lstat(self.cas / name)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeRoot(f"{self.cas / name} is a symlink: refusing to follow it "
                                 "(state files are never links)")
            check_owned(self.cas / name, st)

    @property
    def initialised(self) -> bool:
        return (self.cas / "config.json").exists()

    # -- JSON state files
    def read_json(self, name: str, default: Any = None) -> Any:
        """A state file's JSON (opened with ``O_NOFOLLOW``, owner checked), or ``default``."""
        try:
            fd = open_state(self.cas / name, os.O_RDONLY)
        except FileNotFoundError:
            return default
        with os.fdopen(fd, "rb") as fh:
            return json.loads(fh.read())

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
        """Take ``.cas/lock`` (after checking the root is safe), or raise ``UpdateInProgress``."""
        try:
            self.check_safe()
        except FileNotFoundError:
            raise ClientError(f"{self.root} is not initialised (run cas-client init)") from None
        if not self.initialised:
            raise ClientError(f"{self.root} is not initialised (run cas-client init)")
        fh = os.fdopen(open_state(self.cas / "lock", os.O_RDWR | os.O_CREAT), "r+")
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

    def remove_link(self, name: str) -> None:
        """Remove the link ``name`` (there is no such version any more), durably."""
        assert name in LINKS
        (self.root / name).unlink(missing_ok=True)
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
        # The cap every accepted manifest was held to (ClientConfig.max_manifest_bytes <= it).
        envelope: dict[str, Any] = parse_json(path.read_bytes(), max_bytes=MAX_MANIFEST_BYTES)
        return envelope

    def remove_version(self, version: str) -> None:
        path = self.version_dir(version)
        for dirpath, _dirnames, _ in os.walk(path):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(path)
        self.manifest_path(version).unlink(missing_ok=True)
