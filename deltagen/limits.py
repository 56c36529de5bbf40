"""Limits are data: every cap deltagen enforces, with its default and what it implies."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

MiB = 1 << 20
GiB = 1 << 30

#: the patch algorithms deltagen knows (recipe ``algorithm`` of a patch)
Algorithm = Literal["hdiffpatch", "zstd", "bsdiff4", "lzma-from", "gzip-inner"]
ALGORITHMS: tuple[Algorithm, ...] = ("hdiffpatch", "zstd", "bsdiff4", "lzma-from", "gzip-inner")

#: zstd's largest window (``--long=31``): old + new must fit in it for patch-from.
ZSTD_WINDOW_LOG_MAX = 31


@dataclass(frozen=True)
class DeltaLimits:
    """Caps for building and applying deltas.

    bsdiff_max_bytes: neither old nor new may be larger for a bsdiff4 attempt.  The
        suffix sort needs ~17 bytes per old byte plus old + 3x new: 64 MiB -> ~1.3 GiB.
    zstd_patch_max_bytes: old + new may not be larger for a zstd patch-from attempt
        (window log <= 31, i.e. 2 GiB; the old file is held in memory, about
        2 x (old + new) + ~300 MiB of match-finder tables at level 19).
    time_budget_s: wall-clock budget for all builds of one file; each build runs in a
        worker subprocess that is killed when the remaining budget runs out.
    inprocess_max_bytes: builds with old + new at most this size run in the calling
        process instead (a worker costs ~0.1-0.3 s to start, the build far less).
    tiny_bytes: targets smaller than this get no patch (compressed or raw only).
    zstd_level: level for zstd patch-from (1..22);
        compress_level: level for the full compressed form.
    compress_large_bytes, compress_large_level: files of ``compress_large_bytes`` and
        more are compressed at ``compress_large_level`` when that is lower than
        ``compress_level`` (level 19 runs at ~2 MB/s, ~0.5 MB/s on JavaScript: a
        9 MB bundle takes 5-9 s; level 17 takes ~0.6x that for 2-4.6% more bytes).
    max_output_bytes: largest output apply/decompress will ever produce.
    bundle_max_bytes: a bundle (deltagen/bundles.py) is refused, on build and on apply,
        when its bases (the prefix) plus its targets are larger.  Build memory is about
        3x this plus ~300 MiB of level-19 tables; apply memory about 2x this.
    bundle_member_max_bytes: under the "auto" build policy, a changed file whose cheapest
        per-file offer is larger joins no bundle (deltagen.bundles.bundle_candidates).
    hdiffpatch_max_bytes: neither old nor new may be larger for an hdiffpatch attempt,
        on build and on apply.  Build: old + new in memory, a suffix array of ~4 bytes
        per old byte, and an LZMA encoder of at most ~190 MiB (16 MiB dictionary):
        measured 2.0-2.4 bytes per old + new byte above the inputs on similar files,
        4.5 when the new file is new data; 128 MiB -> ~1.1 GiB peak in the worker, like
        bsdiff4 at its cap.  Apply: old + patch + decoded streams + 2x new (the output
        and its copy), all bounded by this cap.
    lzma_from_max_bytes: old + new may not be larger for an lzma-from attempt, on build and
        on apply.  Build: liblzma's encoder with a dictionary of old + new takes ~11.5 bytes
        per dictionary byte (binary-tree match finder), plus old + new twice (the inputs and
        their x86-filtered copies): 64 MiB -> ~0.9 GiB.  Apply: the dictionary (old + new)
        plus old twice.
    gzip_inner_max_bytes: neither the old nor the new gzip file's uncompressed contents may
        be larger for a gzip-inner attempt, on build (decompression stops there: no patch
        of this kind, the other algorithms still run on the compressed bytes) and on apply
        (the declared sizes are checked before anything is decompressed).  Build and apply
        hold the uncompressed files on disk beside the patch, not in memory; the inner
        patch (zstd patch-from or HDiffPatch) costs what it costs at these sizes.
    hdiffpatch_compressor: what the streams inside an HDiffPatch patch are compressed
        with when built: "lzma" (smaller) or "zstd" (faster to apply).  Apply reads both.
    patch_algorithms: the patch algorithms ``best_recipes`` may build.  ("zstd",
        "bsdiff4") gives only recipes the stock ``zstd``/``bspatch`` read.
    build_policy: "auto" builds, per file, the algorithm its content class favours and
        the others only where they can still win (deltagen/policy.py); "exhaustive"
        builds every one of ``patch_algorithms`` for every file, in that order (each
        gets what is left of ``time_budget_s``).
    """

    bsdiff_max_bytes: int = 64 * MiB
    zstd_patch_max_bytes: int = 1 * GiB
    time_budget_s: float = 300.0
    inprocess_max_bytes: int = 1 * MiB
    tiny_bytes: int = 512
    zstd_level: int = 19
    compress_level: int = 19
    compress_large_bytes: int = 4 * MiB
    compress_large_level: int = 17
    max_output_bytes: int = 4 * GiB
    bundle_max_bytes: int = 256 * MiB
    bundle_member_max_bytes: int = 64 * 1024
    hdiffpatch_max_bytes: int = 128 * MiB
    hdiffpatch_compressor: Literal["lzma", "zstd"] = "lzma"
    lzma_from_max_bytes: int = 64 * MiB
    gzip_inner_max_bytes: int = 64 * MiB
    patch_algorithms: tuple[Algorithm, ...] = ("hdiffpatch", "zstd", "bsdiff4", "lzma-from", "gzip-inner")
    build_policy: Literal["auto", "exhaustive"] = "auto"

    def __post_init__(self) -> None:
        if self.zstd_patch_max_bytes > (1 << ZSTD_WINDOW_LOG_MAX):
            raise ValueError("zstd_patch_max_bytes cannot exceed 2 GiB (window log 31)")
        if self.bundle_max_bytes > (1 << ZSTD_WINDOW_LOG_MAX):
            raise ValueError("bundle_max_bytes cannot exceed 2 GiB (window log 31)")
        for name in ("zstd_level", "compress_level", "compress_large_level"):
            if not 1 <= getattr(self, name) <= 22:
                raise ValueError(f"{name} must be 1..22")
        if self.hdiffpatch_compressor not in ("lzma", "zstd"):
            raise ValueError("hdiffpatch_compressor must be 'lzma' or 'zstd'")
        if self.build_policy not in ("auto", "exhaustive"):
            raise ValueError("build_policy must be 'auto' or 'exhaustive'")
        unknown = [a for a in self.patch_algorithms if a not in ALGORITHMS]
        if unknown or len(set(self.patch_algorithms)) != len(self.patch_algorithms):
            raise ValueError(f"patch_algorithms must be distinct names from {ALGORITHMS} (got {unknown})")
        for field in dataclasses.fields(self):
            if isinstance(getattr(self, field.name), (int, float)) and getattr(self, field.name) < 0:
                raise ValueError(f"{field.name} must not be negative")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeltaLimits:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if "patch_algorithms" in values:  # a list after a JSON round trip
            values["patch_algorithms"] = tuple(values["patch_algorithms"])
        return cls(**values)


DEFAULT_LIMITS = DeltaLimits()
