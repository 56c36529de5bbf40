"""``cas checkout``: a tree of a release out of the store.

By default every file gets its own inode: a reflink of the object where the file
system has them (FICLONE: the bytes are shared copy-on-write), else a copy, so a
write into a checkout can never change an object that clients are served.

``hardlink=True`` (``cas checkout --hardlink``) shares the store's files instead,
as before: a file is hardlinked to the object itself when its read-only mode is
0444; other modes (executables) are hardlinked to a per-mode variant
``STORE/variants/{mode}/ab/cdef...`` made once per (object, mode).  Such a
checkout is recorded in ``STORE/checkout-records/`` (destination, release, which file
links which object) so that ``cas fsck`` can name the checkouts that share the
inode of an object it found damaged (``damaged_checkouts``).  ``cas fsck`` re-hashes the
per-mode variants too (``fsck_variants``): a damaged variant is moved to
``STORE/quarantine/`` (a later checkout makes it again from the object) and the checkouts
sharing its inode are named the same way.  Where links cannot
be made (another filesystem) files are copied.  The tree is built beside DEST and
renamed into place when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from casformat.canonical import parse_json
from deltagen.digests import hash_stream, is_digest
from deltagen.output import fsync_dir, write_atomic

from .chunked import write_whole
from .errors import Conflict, NotFound
from .objectstore import OBJECT_MODE, FsckReport, clone_or_copy, link_or_copy
from .release_lookup import get_release
from .repo import Repo

HARDLINK_WARNING = ("warning: --hardlink shares the store's own object files with the checkout: a write "
                    "into it corrupts objects every client is served (cas fsck names the checkout then)")


@dataclass(frozen=True)
class CheckoutReport:
    files: int
    linked: int
    copied: int
    symlinks: int
    reflinked: int = 0


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


def variants_dir(repo: Repo) -> Path:
    return Path(repo.config.store) / "variants"


@dataclass(frozen=True)
class VariantReport:
    """What ``fsck_variants`` checked and found: ``corrupt`` lists {mode, digest, path} (the
    path it had), ``quarantined`` where each went."""
    checked: int
    bytes: int
    corrupt: list[dict[str, str]]
    quarantined: list[str]


def fsck_variants(repo: Repo, quarantine: bool = True) -> VariantReport:
    """Re-hash every per-mode variant of ``--hardlink`` checkouts (``STORE/variants/{mode}/``).

    A variant whose bytes no longer hash to its name (a write through a hardlink checkout)
    is moved to ``STORE/quarantine/variant-{mode}-{digest}.{time}``, keeping its inode so
    ``damaged_checkouts`` can name the checkouts that share it; the next checkout that needs
    it makes it again from the object.  A variant that lost its read-only mode gets it back."""
    root = variants_dir(repo)
    checked = total = 0
    corrupt: list[dict[str, str]] = []
    moved: list[str] = []
    modes = sorted(root.iterdir()) if root.is_dir() else []
    for mode_dir in modes:
        try:
            mode = int(mode_dir.name, 8)
        except ValueError:
            continue
        if not mode_dir.is_dir() or mode & ~0o555:
            continue
        for shard in sorted(mode_dir.iterdir()):
            if not shard.is_dir() or len(shard.name) != 2:
                continue
            for path in sorted(shard.iterdir()):
                digest = shard.name + path.name
                if not is_digest(digest) or not path.is_file():
                    continue
                with open(path, "rb") as fh:
                    h = hash_stream(fh)
                checked += 1
                total += h.size
                if h.blake3 != digest:
                    corrupt.append({"mode": f"{mode:o}", "digest": digest, "path": str(path)})
                    if quarantine:
                        target = Path(repo.config.store) / "quarantine" / f"variant-{mode:o}-{digest}.{int(time.time())}"
                        target.parent.mkdir(exist_ok=True)
                        os.replace(path, target)
                        fsync_dir(path.parent)
                        moved.append(str(target))
                elif os.stat(path).st_mode & 0o7777 != mode:
                    os.chmod(path, mode)
    return VariantReport(checked, total, corrupt, moved)


def records_dir(repo: Repo) -> Path:
    return Path(repo.config.store) / "checkout-records"


def checkout(repo: Repo, product: str, version: str, dest: Path, hardlink: bool = False) -> CheckoutReport:
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise Conflict(f"{dest} exists; checkout makes a new directory", code="dest_exists")
    release = get_release(repo, product, version)
    files = parse_json(release.manifest)["signed"]["files"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    os.chmod(staging, 0o755)
    linked = copied = reflinked = links = 0
    shared: list[list[Any]] = []  # [path, digest] of every file that shares a store inode
    try:
        for entry in files:
            path = staging / entry["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            if entry["type"] == "symlink":
                os.symlink(entry["target"], path)
                links += 1
                continue
            mode = (entry["mode"] & 0o555) or 0o444
            if "chunks" in entry:  # stored as chunks (cas/chunked.py): written whole, never linked
                index = repo.chunk_indexes.get(repo.objects, repo.meta, entry["blake3"])
                if index is None:
                    raise NotFound(f"chunk index of {entry['path']} not found", code="object_not_found")
                write_whole(repo.objects, index, path, entry["blake3"])
                how = "copy"
            elif hardlink:
                how = link_or_copy(_variant(repo, entry["blake3"], mode), path)
            else:
                with repo.objects.local_copy(entry["blake3"]) as source:
                    how = clone_or_copy(source, path)
            if how == "link":
                linked += 1
                shared.append([entry["path"], entry["blake3"]])
                continue
            os.chmod(path, mode)
            if how == "reflink":
                reflinked += 1
            else:
                copied += 1
        for dirpath, _, _ in os.walk(staging):
            fsync_dir(Path(dirpath))
        if shared:
            _record(repo, dest, product, version, shared)
        os.rename(staging, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CheckoutReport(len(files) - links, linked, copied, links, reflinked)


def _record(repo: Repo, dest: Path, product: str, version: str, shared: list[list[Any]]) -> None:
    record = {"dest": str(dest.resolve()), "product": product, "version": version, "created": time.time(),
              "files": shared}
    folder = records_dir(repo)
    folder.mkdir(exist_ok=True)
    write_atomic(folder / f"{uuid.uuid4().hex}.json", json.dumps(record).encode())


def _records(repo: Repo) -> list[dict[str, Any]]:
    out = []
    folder = records_dir(repo)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def damaged_checkouts(repo: Repo, report: FsckReport, variants: VariantReport | None = None
                      ) -> list[dict[str, Any]]:
    """For each object ``fsck`` found corrupt, and each corrupt per-mode variant
    (``fsck_variants``; its entries carry ``variant``: the mode), the recorded hardlink
    checkouts whose file still shares its inode (the likely way it was damaged)."""
    bad_variants = variants.corrupt if variants is not None else []
    if not report.corrupt and not bad_variants:
        return []
    inodes: dict[tuple[int, int], str] = {}
    variant_inodes: dict[tuple[int, int], dict[str, str]] = {}
    for i, bad in enumerate(bad_variants):
        assert variants is not None
        where = variants.quarantined[i] if len(variants.quarantined) == len(bad_variants) else bad["path"]
        try:
            held = os.stat(where)
        except OSError:
            continue
        variant_inodes[(held.st_dev, held.st_ino)] = bad
    files = report.quarantined if report.quarantined else []
    for digest in report.corrupt:
        moved = [Path(q) for q in files if Path(q).name.startswith(digest + ".")]
        own = moved[-1] if moved else repo.objects.local_path(digest)
        try:
            st = os.stat(own) if own is not None else None
        except OSError:
            st = None
        if st is not None:
            inodes[(st.st_dev, st.st_ino)] = digest
    found = []
    for record in _records(repo):
        for rel, _digest in record.get("files", []):
            try:
                st = os.lstat(Path(record["dest"]) / rel)
            except OSError:
                continue
            hit = inodes.get((st.st_dev, st.st_ino))
            if hit is not None:
                found.append({"digest": hit, "checkout": record["dest"], "product": record["product"],
                              "version": record["version"], "path": rel})
            variant = variant_inodes.get((st.st_dev, st.st_ino))
            if variant is not None:
                found.append({"digest": variant["digest"], "variant": variant["mode"], "checkout": record["dest"],
                              "product": record["product"], "version": record["version"], "path": rel})
    return found
