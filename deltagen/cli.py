"""``python -m deltagen``: diff, apply, best.  Exits non-zero with a one-line reason."""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .digests import is_digest
from .errors import DeltaError
from .limits import DEFAULT_LIMITS, DeltaLimits
from .patches import ALGORITHMS, apply_patch, make_patch
from .recipes import Attempt, best_recipes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deltagen",
                                     description="Build, apply and choose binary deltas.")
    sub = parser.add_subparsers(dest="command", required=True)

    diff = sub.add_parser("diff", help="make a patch from OLD to NEW")
    diff.add_argument("--algorithm", choices=ALGORITHMS, required=True)
    diff.add_argument("old")
    diff.add_argument("new")
    diff.add_argument("out")
    diff.add_argument("--level", type=int, default=DEFAULT_LIMITS.zstd_level,
                      help="zstd level (default %(default)s)")
    diff.add_argument("--compressor", choices=("lzma", "zstd"), default=DEFAULT_LIMITS.hdiffpatch_compressor,
                      help="hdiffpatch: compressor inside the patch (default %(default)s)")

    apply = sub.add_parser("apply", help="apply PATCH to OLD, writing OUT")
    apply.add_argument("--algorithm", choices=ALGORITHMS, required=True)
    apply.add_argument("old")
    apply.add_argument("patch")
    apply.add_argument("out")
    apply.add_argument("--size", type=int, help="expected output size (default: read from the patch)")
    apply.add_argument("--blake3", help="expected output BLAKE3 (hex)")

    best = sub.add_parser("best", help="build and verify the best recipes, print them as JSON")
    best.add_argument("old")
    best.add_argument("new")
    best.add_argument("outdir")
    best.add_argument("--time-budget", type=float, default=DEFAULT_LIMITS.time_budget_s)
    best.add_argument("--bsdiff-max-bytes", type=int, default=DEFAULT_LIMITS.bsdiff_max_bytes)
    best.add_argument("--algorithms", default=",".join(DEFAULT_LIMITS.patch_algorithms),
                      help="patch algorithms to build, in order (default %(default)s)")
    best.add_argument("--verbose", action="store_true", help="also print why candidates were dropped")
    return parser


def _declared_size(algorithm: str, patch_path: str) -> int:
    """The output size a patch declares (used only when --size is not given)."""
    from . import bsdiff_format, gzip_inner, hdiff_format, lzma_from, zstd_frames
    with open(patch_path, "rb") as fh:
        if algorithm == "bsdiff4":
            return bsdiff_format.parse_header(fh.read(bsdiff_format.HEADER_SIZE),
                                              os.fstat(fh.fileno()).st_size).new_size
        if algorithm == "hdiffpatch":
            return hdiff_format.declared_size(fh.read(hdiff_format.HEADER_MAX), os.fstat(fh.fileno()).st_size)
        if algorithm == "lzma-from":
            return lzma_from.declared_size(fh.read(lzma_from.HEADER_SIZE), os.fstat(fh.fileno()).st_size)
        if algorithm == "gzip-inner":
            return gzip_inner.declared_size(fh.read(gzip_inner.HEADER_SIZE), os.fstat(fh.fileno()).st_size)
        return zstd_frames.declared_size(fh)


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "diff":
        make_patch(args.algorithm, args.old, args.new, args.out,
                   DeltaLimits(zstd_level=args.level, hdiffpatch_compressor=args.compressor))
        print(f"{args.out}: {os.path.getsize(args.out)} bytes")
    elif args.command == "apply":
        if args.blake3 is not None and not is_digest(args.blake3):
            raise DeltaError("--blake3 must be 64 lowercase hex characters")
        size = args.size if args.size is not None else _declared_size(args.algorithm, args.patch)
        digest = apply_patch(args.algorithm, args.old, args.patch, args.out, size, args.blake3)
        print(f"{args.out}: {size} bytes blake3 {digest}")
    else:
        algorithms = tuple(a for a in args.algorithms.split(",") if a)
        limits = DeltaLimits(time_budget_s=args.time_budget, bsdiff_max_bytes=args.bsdiff_max_bytes,
                             patch_algorithms=algorithms)  # names checked by DeltaLimits
        attempts: list[Attempt] = []
        recipes = best_recipes(args.old, args.new, args.outdir, limits, attempts)
        doc: dict[str, object] = {"recipes": [dict(r.to_dict(), path=str(r.path)) for r in recipes]}
        if args.verbose:
            doc["attempts"] = [{"name": a.name, "outcome": a.outcome, "size": a.size} for a in attempts]
        print(json.dumps(doc, indent=2, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except DeltaError as exc:
        print(f"deltagen: {exc.code}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # an invalid limit (e.g. --level above 22)
        print(f"deltagen: invalid_argument: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"deltagen: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
