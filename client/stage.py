"""Staging: build the new version tree from a plan, verified and made durable, in ``.cas/staging/{v}``.

The tree's directories are made first, each once (``make_directories``).  The first
choice of every file (each chosen bundle once) is downloaded in parallel;
bundles are rebuilt into ``.cas/downloads/<blake3>``; then every file is placed: a
local copy is hardlinked (copied when its mode differs), a patch is applied to its
local base, a compressed object is decompressed, a raw object linked.  A recipe that
fails (download, digest, patch) is dropped and the file's next recipe tried; when
none is left the stage fails.  Symlinks are made as in the manifest, the whole tree
is checked against the manifest and fsynced.  Nothing outside ``.cas/`` is written.
"""
from __future__ import annotations

import asyncio
import errno
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from deltagen import DeltaError, apply_bundle, apply_patch, decompress_file

from .chunks import build_chunked
from .errors import ClientError, DownloadError, InsufficientSpace
from .faults import crash_point
from .install import finish_file, fsync_tree, installed_mode, make_directories, place_file, remove_tree, tree_problems
from .installroot import InstallRoot
from .log import Log
from .plan import FilePlan, Plan

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class ObjectSource(Protocol):
    """What staging needs of ``client.fetcher.Fetcher``: verified objects in the downloads directory."""

    async def object(self, digest: str, size: int) -> Path: ...

    async def object_range(self, digest: str, start: int, end: int, part: Path, check: Any) -> Path: ...

    def final_path(self, digest: str) -> Path: ...


@dataclass(frozen=True)
class StagedTree:
    """A complete, verified, fsynced version tree waiting in ``.cas/staging/``."""

    version: str
    path: Path
    written: tuple[Path, ...]   # files written rather than hardlinked (each fsynced)
    files_local: int            # files placed from a local copy (present before, or rebuilt from a bundle)


def check_free_space(layout: InstallRoot, plan: Plan, free_space_factor: float) -> None:
    """Refuse to start when the disk cannot hold the downloads and the new files."""
    needed = plan.space_needed(free_space_factor)
    free = shutil.disk_usage(layout.root).free
    if free < needed:
        raise InsufficientSpace(f"{free:,} bytes free, {needed:,} needed "
                                f"(2x the {plan.download_bytes:,} to download plus {plan.new_bytes:,} of new files)")


async def stage_tree(layout: InstallRoot, fetcher: ObjectSource, signed: Mapping[str, Any], plan: Plan,
                     log: Log, chunk_candidates: Callable[[Mapping[str, Any]], list[Path]] | None = None
                     ) -> StagedTree:
    """Build ``signed``'s tree in ``.cas/staging/{version}`` following ``plan``; returns what it wrote."""
    staging = layout.staging / signed["version"]
    remove_tree(staging)
    staging.mkdir(parents=True)
    make_directories(staging, signed["files"])
    await _download_first_choices(fetcher, plan)
    crash_point("after_fetch")
    built = await _apply_bundles(fetcher, plan, layout.downloads, log)
    written: list[Path] = []
    files_local = 0
    for i, file_plan in enumerate(plan.files):
        dest = staging / file_plan.entry["path"]
        source = file_plan.local if file_plan.local is not None else _bundled(file_plan, built)
        if source is not None:
            files_local += 1
            place_file(source, dest, installed_mode(file_plan.entry), link=True, parents=False)
            if file_plan.local is None or not dest.stat().st_nlink > 1:
                written.append(dest)  # a bundle member, or copied (mode differs): needs its fsync
        elif "chunks" in file_plan.entry:
            candidates = chunk_candidates(file_plan.entry) if chunk_candidates else []
            await _build_chunked(fetcher, layout.downloads, file_plan, dest, candidates, log)
            written.append(dest)
        else:
            await _build_file(fetcher, file_plan, dest, log)
            written.append(dest)
        if i == len(plan.files) // 2:
            crash_point("mid_stage")
    for entry in signed["files"]:
        if entry["type"] == "symlink":
            os.symlink(entry["target"], staging / entry["path"])
    problems = tree_problems(staging, signed["files"], hashed=True)  # each file verified as placed
    if problems:
        raise ClientError("staged tree does not match the signed manifest", detail=problems[:20])
    fsync_tree(staging, written)
    return StagedTree(signed["version"], staging, tuple(written), files_local)


async def _download_first_choices(fetcher: ObjectSource, plan: Plan) -> None:
    """Fetch every first choice in parallel; a failed one is left to the file's fallbacks."""
    wanted = plan.downloads()
    results = await asyncio.gather(*(fetcher.object(d, s) for d, s in wanted.items()), return_exceptions=True)
    for result in results:
        if isinstance(result, OSError) and result.errno in DISK_FULL:
            raise InsufficientSpace(f"disk full while downloading: {result}")
        if isinstance(result, BaseException) and not isinstance(result, (DownloadError, OSError)):
            raise result


async def _apply_bundles(fetcher: ObjectSource, plan: Plan, downloads: Path, log: Log) -> dict[str, Path]:
    """Rebuild the members of every chosen bundle into ``downloads/<blake3>``, each verified;
    returns {blake3: path} of the members rebuilt.

    A member that does not verify (or a bundle that cannot be fetched or decoded)
    leaves its files to their per-file recipes; the members that verified are kept.
    """
    chosen = {p.bundle["object"]: p.bundle for p in plan.files if p.local is None and p.bundle is not None}
    built: dict[str, Path] = {}
    for digest, bundle in chosen.items():
        errors: dict[str, str] = {}
        try:
            obj = await fetcher.object(digest, int(bundle["size"]))
            members = apply_bundle([Path(b) for b in bundle["base_paths"]], obj, bundle["members"],
                                   downloads, errors=errors, durable=False)  # fsync_tree makes them durable
        except (DownloadError, DeltaError, OSError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                raise InsufficientSpace(f"disk full while applying a bundle: {exc}") from None
            log(f"bundle {digest[:12]}: {getattr(exc, 'message', None) or exc}; "
                "using per-file recipes for its files")
            if isinstance(exc, DeltaError):
                fetcher.final_path(digest).unlink(missing_ok=True)
            continue
        built.update(members)
        for member, reason in errors.items():
            log(f"bundle {digest[:12]}: member {member[:12]} failed ({reason}); using its per-file recipes")
    return built


def _bundled(file_plan: FilePlan, built: Mapping[str, Path]) -> Path | None:
    """The member a bundle rebuilt for this file, made ready to be linked like a raw object."""
    if file_plan.bundle is None:
        return None
    path = built.get(file_plan.entry["blake3"])
    if path is None or not path.is_file():
        return None
    os.chmod(path, installed_mode(file_plan.entry))
    return path


async def _build_chunked(fetcher: ObjectSource, downloads: Path, file_plan: FilePlan, dest: Path,
                         candidates: list[Path], log: Log) -> None:
    """A chunked file from local and fetched chunks (client/chunks.py); no other recipe."""
    entry = file_plan.entry
    try:
        pack = next((r for r in file_plan.recipes if r.get("kind") == "chunks"), None)
        await build_chunked(fetcher, downloads, entry, dest, candidates, log, pack)
    except OSError as exc:
        dest.unlink(missing_ok=True)
        if exc.errno in DISK_FULL:
            raise InsufficientSpace(f"disk full while staging {entry['path']}: {exc}") from None
        raise ClientError(f"{entry['path']}: {exc}") from None
    finish_file(dest, installed_mode(entry))


async def _build_file(fetcher: ObjectSource, file_plan: FilePlan, dest: Path, log: Log) -> None:
    """Write one file at ``dest`` from its recipes, trying each in turn (cheapest first)."""
    entry = file_plan.entry
    mode = installed_mode(entry)
    errors: list[str] = []
    for recipe in file_plan.recipes:
        try:
            obj = await fetcher.object(recipe["object"], int(recipe["size"]))
            dest.parent.mkdir(parents=True, exist_ok=True)
            if recipe["kind"] == "patch":
                # durable=False: fsync_tree makes the whole staged tree durable at once
                apply_patch(recipe["algorithm"], Path(recipe["base_path"]), obj, dest, entry["size"],
                            entry["blake3"], durable=False)
            elif recipe["kind"] == "compressed":
                decompress_file(obj, dest, entry["size"], entry["blake3"], durable=False)
            else:
                # fetcher.object() returns only downloads whose BLAKE3 it checked: link, don't copy.
                if recipe["object"] != entry["blake3"]:
                    raise DeltaError("a raw recipe must be the target object itself")
                os.chmod(obj, mode)
                place_file(obj, dest, mode, link=True)
            finish_file(dest, mode)
            return
        except (DownloadError, DeltaError, OSError, KeyError, ValueError) as exc:
            dest.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                raise InsufficientSpace(f"disk full while staging {entry['path']}: {exc}") from None
            errors.append(f"{recipe['kind']}: {exc.message if isinstance(exc, (ClientError, DeltaError)) else exc}")
            log(f"{entry['path']}: {recipe['kind']} recipe failed ({errors[-1]}); trying the next")
            if isinstance(exc, DeltaError):
                fetcher.final_path(recipe["object"]).unlink(missing_ok=True)
    raise ClientError(f"{entry['path']}: every recipe failed", detail=errors)
