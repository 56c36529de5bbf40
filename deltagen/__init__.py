"""deltagen: build, verify and apply binary deltas between file versions.

Usable on its own (it imports neither ``cas`` nor ``client``).  Public surface:

- :func:`make_patch` / :func:`apply_patch` for ``"hdiffpatch"`` (HDiffPatch HDIFF13 with
  LZMA inside, stock ``hpatchz``), ``"bsdiff4"`` (BSDIFF40, stock ``bspatch``),
  ``"zstd"`` (patch-from, stock ``zstd -d --long=31 --patch-from``) and ``"lzma-from"``
  (LZMA with the old file as preset dictionary, :mod:`deltagen.lzma_from`; no stock tool);
- :func:`compress_file` / :func:`decompress_file` for the full compressed form;
- :func:`best_recipes` to pick the cheapest verified recipes for a target;
- :func:`build_bundle` / :func:`apply_bundle` / :func:`choose_cover` for bundles (one
  zstd frame rebuilding several targets; :mod:`deltagen.bundles`);
- :class:`DeltaLimits` (every cap), :class:`Recipe`, and the errors in
  :mod:`deltagen.errors`.
"""
from __future__ import annotations

from .bundles import (
                     BundleInfo,
                     BundleMember,
                     Candidate,
                     Cover,
                     apply_bundle,
                     build_bundle,
                     bundle_candidates,
                     choose_cover,
)
from .errors import (
                     BudgetExceeded,
                     CorruptPatch,
                     DeltaError,
                     DigestMismatch,
                     SizeExceeded,
                     SizeMismatch,
                     UnknownAlgorithm,
)
from .limits import DEFAULT_LIMITS, DeltaLimits
from .patches import (
                     ALGORITHMS,
                     Algorithm,
                     apply_patch,
                     compress_file,
                     decompress_file,
                     make_patch,
                     verify_compressed,
                     verify_patch,
)
from .recipes import Attempt, Recipe, best_recipes

__all__ = [
    "ALGORITHMS", "Algorithm", "Attempt", "BudgetExceeded", "BundleInfo", "BundleMember",
    "Candidate", "Cover", "apply_bundle", "build_bundle", "bundle_candidates", "choose_cover", "CorruptPatch", "DEFAULT_LIMITS",
    "DeltaError", "DeltaLimits", "DigestMismatch", "Recipe", "SizeExceeded", "SizeMismatch",
    "UnknownAlgorithm", "apply_patch", "best_recipes", "compress_file", "decompress_file",
    "make_patch", "verify_compressed", "verify_patch",
]
