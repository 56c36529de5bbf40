"""``cas checkout``: a read-only hardlink tree of a release out of the store.

An inode has one mode, so a file is hardlinked to the object itself when its
read-only mode is 0444; other modes (executables) are hardlinked to a
per-mode variant ``STORE/variants/{mode}/ab/cdef...`` made once per (object,
mode), so every checkout and rollback point still shares inodes.  Where links
cannot be made (another filesystem) files are copied.  The tree is built
beside DEST and renamed into place when complete.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from casformat.canonical import parse_json
from deltagen.output import fsync_dir

from .errors import Conflict
from .objectstore import OBJECT_MODE, link_or_copy
from .release_lookup import get_release
from .repo import Repo


@dataclass(frozen=True)
class CheckoutReport:
    files: int
    linked: int
    copied: int
    symlinks: int


def _variant(repo: Repo, digest: str, mode: int) -> Path:
    own = repo.objects.local_path(digest)  # None when objects live elsewhere (S3): cache a variant
    if mode == OBJECT_MODE and own is not None:
        return own
    target = Path(repo.config.store) / "variants" / f"{mode:o}" / digest[:2] / digest[2:]
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=repo.objects.tmp_dir, prefix="variant-")
    os.close(fd)
    try:
        with repo.objects.local_copy(digest) as source:
            shutil.copyfile(source, tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def checkout(repo: Repo, product: str, version: str, dest: Path) -> CheckoutReport:
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise Conflict(f"{dest} exists; checkout makes a new directory", code="dest_exists")
    release = get_release(repo, product, version)
    files = parse_json(release.manifest)["signed"]["files"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    os.chmod(staging, 0o755)
    linked = copied = links = 0
    try:
        for entry in files:
            path = staging / entry["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            if entry["type"] == "symlink":
                os.symlink(entry["target"], path)
                links += 1
                continue
            mode = (entry["mode"] & 0o555) or 0o444
            how = link_or_copy(_variant(repo, entry["blake3"], mode), path)
            if how == "copy":
                os.chmod(path, mode)
                copied += 1
            else:
                linked += 1
        for dirpath, _, _ in os.walk(staging):
            fsync_dir(Path(dirpath))
        os.rename(staging, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CheckoutReport(len(files) - links, linked, copied, links)
