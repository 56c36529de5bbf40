"""Make, apply and verify patches and compressed forms, whatever the algorithm.

Every apply writes through a size-capped, hashing sink: output stops at
``expected_size`` and the BLAKE3 is checked before the file becomes visible.
"""
from __future__ import annotations

from . import bsdiff_format, gzip_inner, hdiff_format, lzma_from, zstd_frames
from .errors import DigestMismatch, SizeExceeded, SizeMismatch, UnknownAlgorithm
from .limits import ALGORITHMS, DEFAULT_LIMITS, Algorithm, DeltaLimits
from .output import HashingSink, StrPath, atomic_output

__all__ = ["ALGORITHMS", "Algorithm", "apply_patch", "compress_file", "decompress_file", "make_patch",
           "verify_compressed", "verify_patch"]


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise UnknownAlgorithm(f"unknown algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")


def _check_expected(expected_size: int, limits: DeltaLimits) -> None:
    if expected_size < 0:
        raise SizeMismatch("expected size must not be negative")
    if expected_size > limits.max_output_bytes:
        raise SizeExceeded(f"expected size {expected_size} is above max_output_bytes "
                           f"({limits.max_output_bytes})")


def _check_result(sink: HashingSink, expected_size: int, expected_blake3: str | None) -> str:
    if sink.size != expected_size:
        raise SizeMismatch(f"produced {sink.size} bytes, expected {expected_size}")
    if expected_blake3 is not None and sink.blake3 != expected_blake3:
        raise DigestMismatch(f"output blake3 {sink.blake3} is not {expected_blake3}")
    return sink.blake3


def make_patch(algorithm: Algorithm, old_path: StrPath, new_path: StrPath, out_path: StrPath,
               limits: DeltaLimits = DEFAULT_LIMITS) -> None:
    """Write a patch from old to new at out_path (atomically). Raises SizeExceeded over caps."""
    _check_algorithm(algorithm)
    if algorithm == "bsdiff4":
        bsdiff_format.make_bsdiff_patch(old_path, new_path, out_path, limits)
    elif algorithm == "hdiffpatch":
        hdiff_format.make_hdiff_patch(old_path, new_path, out_path, limits)
    elif algorithm == "lzma-from":
        lzma_from.make_lzma_from_patch(old_path, new_path, out_path, limits)
    elif algorithm == "gzip-inner":
        gzip_inner.make_gzip_inner_patch(old_path, new_path, out_path, limits)
    else:
        zstd_frames.make_zstd_patch(old_path, new_path, out_path, limits)


def _apply_into(algorithm: Algorithm, old_path: StrPath, patch_path: StrPath,
                sink: HashingSink, expected_size: int, limits: DeltaLimits) -> None:
    if algorithm == "bsdiff4":
        bsdiff_format.apply_bsdiff_patch(old_path, patch_path, sink, expected_size, limits)
    elif algorithm == "hdiffpatch":
        hdiff_format.apply_hdiff_patch(old_path, patch_path, sink, expected_size, limits)
    elif algorithm == "lzma-from":
        lzma_from.apply_lzma_from_patch(old_path, patch_path, sink, expected_size, limits)
    elif algorithm == "gzip-inner":
        gzip_inner.apply_gzip_inner_patch(old_path, patch_path, sink, expected_size, limits)
    else:
        zstd_frames.apply_zstd_patch(old_path, patch_path, sink, expected_size)


def apply_patch(algorithm: Algorithm, old_path: StrPath, patch_path: StrPath, out_path: StrPath,
                expected_size: int, expected_blake3: str | None = None,
                limits: DeltaLimits = DEFAULT_LIMITS, durable: bool = True) -> str:
    """Apply a patch; out_path appears only if size (and digest, when given) match.

    Returns the BLAKE3 of the output.  ``durable=False``: no fsync (see ``atomic_output``).
    """
    _check_algorithm(algorithm)
    _check_expected(expected_size, limits)
    with atomic_output(out_path, durable=durable) as fh:
        sink = HashingSink(expected_size, fh)
        _apply_into(algorithm, old_path, patch_path, sink, expected_size, limits)
        return _check_result(sink, expected_size, expected_blake3)


def verify_patch(algorithm: Algorithm, old_path: StrPath, patch_path: StrPath,
                 expected_size: int, expected_blake3: str,
                 limits: DeltaLimits = DEFAULT_LIMITS) -> None:
    """Apply a patch to nowhere and check the result's size and digest."""
    _check_algorithm(algorithm)
    _check_expected(expected_size, limits)
    sink = HashingSink(expected_size)
    _apply_into(algorithm, old_path, patch_path, sink, expected_size, limits)
    _check_result(sink, expected_size, expected_blake3)


def compress_file(src_path: StrPath, out_path: StrPath, level: int = DEFAULT_LIMITS.compress_level) -> None:
    """zstd-compress a whole file to out_path (atomically); the stock ``zstd -d`` reads it."""
    zstd_frames.compress_file(src_path, out_path, level)


def decompress_file(src_path: StrPath, out_path: StrPath, expected_size: int,
                    expected_blake3: str | None = None,
                    limits: DeltaLimits = DEFAULT_LIMITS, durable: bool = True) -> str:
    """Decompress a compressed object, never past expected_size; returns the BLAKE3.
    ``durable=False``: no fsync (see ``atomic_output``)."""
    _check_expected(expected_size, limits)
    with atomic_output(out_path, durable=durable) as fh:
        sink = HashingSink(expected_size, fh)
        zstd_frames.decompress_to(src_path, sink, expected_size)
        return _check_result(sink, expected_size, expected_blake3)


def verify_compressed(src_path: StrPath, expected_size: int, expected_blake3: str,
                      limits: DeltaLimits = DEFAULT_LIMITS) -> None:
    _check_expected(expected_size, limits)
    sink = HashingSink(expected_size)
    zstd_frames.decompress_to(src_path, sink, expected_size)
    _check_result(sink, expected_size, expected_blake3)
