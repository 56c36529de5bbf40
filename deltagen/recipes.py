"""Choose the cheapest verified ways to get a target file's bytes.

Rule (cheapest first; each kept only if it beats the next cheaper-to-serve form):

1. ``raw``: always; the object is the target itself.
2. ``compressed`` (zstd full file): kept if verified and smaller than raw.  Built unless
   the caller builds it elsewhere (``compressed=False``: the server's own compress job).
3. ``patch``: tried only when the target is at least ``tiny_bytes``.  Which algorithms,
   and in which order, is the build policy's (``deltagen.policy``): the one the file's
   content class favours first, the others only where they can still win; each within
   its cap: hdiffpatch when old and new are each <= ``hdiffpatch_max_bytes``, zstd
   patch-from when old + new <= ``zstd_patch_max_bytes``, bsdiff4 when old and new are
   each <= ``bsdiff_max_bytes``.  The smallest verified patch is kept if it is smaller
   than the compressed form (or raw when there is none).  A candidate is verified
   (applied once) only when it is smaller than everything kept so far.

Builds run under one per-file ``time_budget_s`` (compressed, then the patch algorithms
in order, each with what is left), in a killable worker process unless old + new is
at most ``inprocess_max_bytes``; a build over a cap, over the budget, or failing
verification is dropped and the next rule applies.  Every object kept has been decoded
once and matched against the target's BLAKE3.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import gzip_inner
from .budget import BuildStats, build_before, build_memory, memory_gate
from .digests import blake3_file, file_digest
from .errors import DeltaError
from .limits import DEFAULT_LIMITS, DeltaLimits
from .output import StrPath
from .patches import Algorithm, verify_compressed, verify_patch
from .policy import FileClass, classify, patch_order, worth_another

Kind = Literal["patch", "compressed", "raw"]


@dataclass(frozen=True)
class Recipe:
    """One way to get the target's bytes; ``path`` is the object file to serve."""

    kind: Kind
    algorithm: Algorithm | None  # None for raw
    object: str                  # BLAKE3 of the object file
    size: int                    # size of the object file
    path: Path
    base: str | None = None      # BLAKE3 of the old file, for patches
    build_s: float = 0.0
    peak_rss_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The manifest-delta form (DESIGN.md ``recipes``)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.base is not None:
            out["base"] = self.base
        if self.algorithm is not None:
            out["algorithm"] = self.algorithm
        out["object"] = self.object
        out["size"] = self.size
        return out


@dataclass(frozen=True)
class Attempt:
    """What happened to one candidate (for logs and benchmarks)."""

    name: str
    outcome: str  # "kept", "verified: ...", "dropped: <reason>", "skipped: <reason>"
    size: int | None = None


#: patch algorithms every released cas-client applies; a best patch of another (newer)
#: algorithm is offered together with the best of these, so a fleet not yet upgraded keeps
#: getting a patch instead of the compressed file
OLDER_CLIENT_ALGORITHMS = ("hdiffpatch", "zstd", "bsdiff4")

#: gzip-inner does not apply to the pair: it is left out of the candidates (and the log)
NOT_GZIP = "old and new are not both gzip files"


def _gzip_inner_skip(old_path: StrPath, new_path: StrPath, limits: DeltaLimits) -> str | None:
    """Why gzip-inner is not tried for this pair (None: try it): both must be gzip files, and
    their trailers' sizes (a hint; the build checks the real ones) within the cap."""
    if not (gzip_inner.is_gzip(old_path) and gzip_inner.is_gzip(new_path)):
        return NOT_GZIP
    if max(gzip_inner.gzip_isize(old_path), gzip_inner.gzip_isize(new_path)) > limits.gzip_inner_max_bytes:
        return f"uncompressed size above gzip_inner_max_bytes ({limits.gzip_inner_max_bytes})"
    return None


def _candidates(old_size: int, new_size: int, file_class: FileClass,
                limits: DeltaLimits, gzip_skip: str | None = NOT_GZIP) -> list[tuple[Algorithm, str | None]]:
    """Patch algorithms to consider (the policy's order), each with a reason it is
    skipped (None: try it); ``gzip_skip`` is :func:`_gzip_inner_skip`'s answer."""
    tiny = f"target below tiny_bytes ({limits.tiny_bytes})" if new_size < limits.tiny_bytes else None
    over = {
        "zstd": (f"old + new above zstd_patch_max_bytes ({limits.zstd_patch_max_bytes})"
                 if old_size + new_size > limits.zstd_patch_max_bytes else None),
        "bsdiff4": (f"old or new above bsdiff_max_bytes ({limits.bsdiff_max_bytes})"
                    if max(old_size, new_size) > limits.bsdiff_max_bytes else None),
        "hdiffpatch": (f"old or new above hdiffpatch_max_bytes ({limits.hdiffpatch_max_bytes})"
                       if max(old_size, new_size) > limits.hdiffpatch_max_bytes else None),
        "lzma-from": (f"old + new above lzma_from_max_bytes ({limits.lzma_from_max_bytes})"
                      if old_size + new_size > limits.lzma_from_max_bytes else None),
        "gzip-inner": gzip_skip,
    }
    return [(algorithm, tiny or over[algorithm]) for algorithm in patch_order(file_class, new_size, limits)
            if not (algorithm == "gzip-inner" and gzip_skip == NOT_GZIP)]


def best_recipes(old_path: StrPath, new_path: StrPath, workdir: StrPath,
                 limits: DeltaLimits = DEFAULT_LIMITS,
                 attempts: list[Attempt] | None = None, *, compressed: bool = True) -> list[Recipe]:
    """Build, verify and keep the recipes for ``new_path`` from ``old_path``.

    Objects are written into ``workdir`` named by their BLAKE3.  Returned cheapest
    first; the last one is always raw (pointing at ``new_path``).  Pass a list as
    ``attempts`` to learn why candidates were dropped or not built; ``compressed=False``
    builds no compressed form (patches are then kept when smaller than raw).
    """
    file_class = classify(new_path)
    old_size, new_size = os.path.getsize(old_path), os.path.getsize(new_path)
    gzip_skip = _gzip_inner_skip(old_path, new_path, limits) if "gzip-inner" in limits.patch_algorithms else NOT_GZIP
    jobs = [a for a, skip in _candidates(old_size, new_size, file_class, limits, gzip_skip) if skip is None]
    peak = max([build_memory(a, old_size, new_size) for a in jobs] + [build_memory("compressed", 0, new_size)])
    with memory_gate.reserve(peak):  # the builds run one after the other: the largest counts
        return _best_recipes(old_path, new_path, workdir, limits, attempts, compressed, file_class, gzip_skip)


def _best_recipes(old_path: StrPath, new_path: StrPath, workdir: StrPath, limits: DeltaLimits,
                  attempts: list[Attempt] | None, compressed: bool, file_class: FileClass,
                  gzip_skip: str | None) -> list[Recipe]:
    log = attempts if attempts is not None else []
    target = file_digest(new_path)
    old_size = os.path.getsize(old_path)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + limits.time_budget_s
    raw = Recipe("raw", None, target.blake3, target.size, Path(new_path))
    kept: list[Recipe] = []
    scratch = Path(tempfile.mkdtemp(prefix=".deltagen-", dir=workdir))
    try:
        packed = (_build_compressed(new_path, target.blake3, target.size, scratch, limits,
                                    file_class, deadline, log) if compressed else None)
        bar = packed.size if packed is not None else raw.size
        base: str | None = None
        best: Recipe | None = None
        #: the best patch a client from before lzma-from/gzip-inner can apply (kept beside such a best)
        older: Recipe | None = None
        tried = False
        for algorithm, skip in _candidates(old_size, target.size, file_class, limits, gzip_skip):
            if skip is not None:
                log.append(Attempt(algorithm, f"skipped: {skip}"))
                continue
            if tried and not worth_another(file_class, best.size if best is not None else None,
                                           target.size, limits, algorithm):
                log.append(Attempt(algorithm, f"not built: the {file_class} policy keeps "
                                              f"{best.algorithm if best else '-'} ({best.size if best else '-'} B)"))
                continue
            tried = True
            if base is None:
                base = blake3_file(old_path)
            out = scratch / f"patch.{algorithm}"
            try:
                stats = build_before(algorithm, old_path, new_path, out, limits, deadline)
                size = out.stat().st_size
                if size >= bar or (best is not None and size >= best.size):  # not worth verifying
                    log.append(Attempt(algorithm, "dropped: not smaller than the alternatives", size))
                    continue
                verify_patch(algorithm, old_path, out, target.size, target.blake3, limits)
            except DeltaError as exc:
                log.append(Attempt(algorithm, f"dropped: {type(exc).__name__}: {exc}"))
                continue
            log.append(Attempt(algorithm, "verified: smallest so far", size))
            if best is not None and best.algorithm in OLDER_CLIENT_ALGORITHMS:
                older = best
            best = Recipe("patch", algorithm, blake3_file(out), size, out, base,
                          stats.elapsed_s, stats.peak_rss_bytes)
        if best is not None:
            log.append(Attempt(best.algorithm or "patch", "kept", best.size))
            kept.append(_publish(best, workdir))
            if best.algorithm not in OLDER_CLIENT_ALGORITHMS and older is not None:
                # clients that predate the best's algorithm drop its recipe (unknown
                # algorithm) and would fall back to the compressed form or the raw file
                log.append(Attempt(older.algorithm or "patch", "kept for older clients", older.size))
                kept.append(_publish(older, workdir))
        if packed is not None:
            kept.append(_publish(packed, workdir))
        kept.append(raw)
        return kept
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def compress_level_for(file_class: FileClass, size: int, limits: DeltaLimits) -> int:
    """``compress_level``, except for data that is already compressed: level 3 finds what
    little there is to find (stored archive members) at ~100x the speed of level 19; and
    for files of ``compress_large_bytes`` and more, ``compress_large_level`` when lower."""
    if file_class == "compressed":
        return min(limits.compress_level, 3)
    if size >= limits.compress_large_bytes:
        return min(limits.compress_level, limits.compress_large_level)
    return limits.compress_level


def _build_compressed(new_path: StrPath, target_blake3: str, target_size: int, scratch: Path,
                      limits: DeltaLimits, file_class: FileClass, deadline: float,
                      log: list[Attempt]) -> Recipe | None:
    out = scratch / "compressed.zstd"
    level = compress_level_for(file_class, target_size, limits)
    try:
        stats: BuildStats = build_before("compressed", None, new_path, out,
                                         dataclasses.replace(limits, compress_level=level), deadline)
        verify_compressed(out, target_size, target_blake3, limits)
    except DeltaError as exc:
        log.append(Attempt("compressed", f"dropped: {type(exc).__name__}: {exc}"))
        return None
    size = out.stat().st_size
    if size >= target_size:
        log.append(Attempt("compressed", "dropped: not smaller than raw", size))
        return None
    log.append(Attempt("compressed", "kept", size))
    return Recipe("compressed", "zstd", blake3_file(out), size, out, None,
                  stats.elapsed_s, stats.peak_rss_bytes)


def _publish(recipe: Recipe, workdir: Path) -> Recipe:
    """Move a verified object from scratch to ``workdir/<blake3>``."""
    final = workdir / recipe.object
    os.replace(recipe.path, final)
    with contextlib.suppress(OSError):
        fd = os.open(workdir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return Recipe(recipe.kind, recipe.algorithm, recipe.object, recipe.size, final,
                  recipe.base, recipe.build_s, recipe.peak_rss_bytes)
