"""zstd: patch-from (old file as a raw-content prefix) and full compression.

A patch is one standard zstd frame that the stock CLI applies with
``zstd -d --long=31 --patch-from=OLD PATCH -o NEW``: the old file is loaded as a
raw-content dictionary (what ``ZSTD_CCtx_refPrefix`` does), the window covers
old + new, long-distance matching is on, and the frame carries its content size and
a checksum.  Decompression is always bounded by the size the caller expects.
"""
from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO, cast

import zstandard

from . import zstd_prefix
from .errors import CorruptPatch, DigestMismatch, SizeExceeded, SizeMismatch
from .limits import ZSTD_WINDOW_LOG_MAX, DeltaLimits
from .output import HashingSink, StrPath, atomic_output

CHUNK = 1 << 20
_WINDOW_LOG_MIN = 10
_MAX_WINDOW = 1 << ZSTD_WINDOW_LOG_MAX
_FRAME_HEADER_MAX = 18  # ZSTD_FRAMEHEADERSIZE_MAX


#: a zstd patch of old + new <= PATCH_HASH_CAP_MAX_BYTES has a hash table of at most
#: 2^PATCH_HASH_LOG_MAX entries (level 19: 2^22, 16 MiB): 12 MiB less, and no byte more over
#: the 27 changed files of 64 KiB-8 MiB of ten corpus pairs (555,661 -> 555,660 B).  Larger
#: pairs keep the level's: esbuild's 10 MB program lost 0.4% with it.
PATCH_HASH_LOG_MAX = 20
PATCH_HASH_CAP_MAX_BYTES = 8 << 20


def patch_window_log(old_size: int, new_size: int) -> int:
    """Smallest window log whose window covers old + new (as the CLI picks it)."""
    return max(_WINDOW_LOG_MIN, (old_size + new_size).bit_length())


@contextmanager
def _mapped(path: StrPath) -> Iterator[bytes | mmap.mmap]:
    """The file's bytes, mapped read-only (an empty file gives b'')."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            yield b""
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped


def _prefix_dict(old: bytes | mmap.mmap) -> zstandard.ZstdCompressionDict:
    # an mmap is a buffer like bytes (the stubs name only bytes, bytearray and memoryview)
    return zstandard.ZstdCompressionDict(cast(bytes, old), dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def make_zstd_patch(old_path: StrPath, new_path: StrPath, out_path: StrPath,
                    limits: DeltaLimits) -> None:
    old_size = os.path.getsize(old_path)
    new_size = os.path.getsize(new_path)
    if old_size + new_size > limits.zstd_patch_max_bytes:
        raise SizeExceeded(
            f"old + new = {old_size + new_size} bytes is above zstd_patch_max_bytes "
            f"({limits.zstd_patch_max_bytes})")
    window_log = patch_window_log(old_size, new_size)
    if zstd_prefix.available():
        tuning = (zstd_prefix.Tuning(hash_log_max=PATCH_HASH_LOG_MAX)
                  if old_size + new_size <= PATCH_HASH_CAP_MAX_BYTES else zstd_prefix.Tuning())
        with open(old_path, "rb") as old, open(new_path, "rb") as src, \
                atomic_output(out_path) as dst:
            zstd_prefix.compress_with_prefix(old.fileno(), old_size, src, new_size, dst,
                                             limits.zstd_level, window_log, tuning)
        return
    # fallback without libzstd: raw-content dictionary (weak on large files, see zstd_prefix)
    params = zstandard.ZstdCompressionParameters.from_level(
        limits.zstd_level, source_size=new_size, window_log=window_log, enable_ldm=True,
        write_content_size=True, write_checksum=True, write_dict_id=False)
    with _mapped(old_path) as old_bytes:
        cctx = zstandard.ZstdCompressor(
            dict_data=_prefix_dict(old_bytes) if old_size else None, compression_params=params)
        with open(new_path, "rb") as src, atomic_output(out_path) as dst:
            cctx.copy_stream(src, dst, size=new_size, read_size=CHUNK, write_size=CHUNK)


#: a compressed form's hash table has at most 2^COMPRESS_HASH_LOG_MAX entries (levels 17-19
#: have 2^22 above 256 KiB of input: 16 MiB): 12 MiB less per build, +0.01% bytes measured
#: (typescript.js at level 17: 1,184,237 -> 1,184,354 B; pyyaml's 2.6 MB library the same bytes)
COMPRESS_HASH_LOG_MAX = 20


def compress_file(src_path: StrPath, out_path: StrPath, level: int = 19) -> None:
    """zstd-compress a whole file (a plain frame, content size and checksum written).

    The level's parameters for the file's size (window and tables follow the input: a
    small file never gets level 19's full-size tables), the hash table capped."""
    size = os.path.getsize(src_path)
    hash_log = zstandard.ZstdCompressionParameters.from_level(level, source_size=size).hash_log
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=size, hash_log=min(hash_log, COMPRESS_HASH_LOG_MAX),
        write_content_size=True, write_checksum=True)
    cctx = zstandard.ZstdCompressor(compression_params=params)
    with open(src_path, "rb") as src, atomic_output(out_path) as dst:
        cctx.copy_stream(src, dst, size=size, read_size=CHUNK, write_size=CHUNK)


def _frame_end(read_at: Callable[[int, int], bytes], position: int, has_checksum: bool,
               size: int, what: str) -> int:
    """Walk the block headers from ``position`` (without decompressing); where the frame ends."""
    while True:
        block = read_at(position, 3)
        if len(block) != 3:
            raise CorruptPatch(f"{what} is truncated")
        value = int.from_bytes(block, "little")
        last, block_type, block_size = value & 1, (value >> 1) & 3, value >> 3
        if block_type == 3:
            raise CorruptPatch(f"{what} has a reserved block type")
        position += 3 + (1 if block_type == 1 else block_size)
        if position > size:
            raise CorruptPatch(f"{what} is truncated")
        if last:
            break
    position += 4 if has_checksum else 0
    if position > size:
        raise CorruptPatch(f"{what} is truncated")
    return position


def _check_params(header: bytes, expected_size: int, max_window: int,
                  what: str) -> tuple[zstandard.FrameParameters, int]:
    """The frame header must declare exactly ``expected_size`` bytes and a window <= ``max_window``."""
    try:
        params = zstandard.get_frame_parameters(header)
        position = zstandard.frame_header_size(header)
    except zstandard.ZstdError as exc:
        raise CorruptPatch(f"{what}: not a zstd frame: {exc}") from None
    declared = params.content_size
    if declared in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
        raise CorruptPatch(f"{what} does not declare its content size")
    if declared > expected_size:
        raise SizeExceeded(f"{what} declares {declared} bytes, expected {expected_size}")
    if declared != expected_size:
        raise SizeMismatch(f"{what} declares {declared} bytes, expected {expected_size}")
    if params.window_size > max_window:
        raise CorruptPatch(f"{what}: window {params.window_size} is above {max_window}")
    return params, position


def _check_frame(fh: BinaryIO, expected_size: int) -> None:
    """Refuse anything but exactly one complete frame declaring ``expected_size`` bytes.

    The block headers are walked (without decompressing) so that a truncated frame or
    trailing bytes are caught up front: zstd's stream reader would just stop early.
    """
    file_size = os.fstat(fh.fileno()).st_size
    params, position = _check_params(fh.read(_FRAME_HEADER_MAX), expected_size, _MAX_WINDOW, "zstd frame")

    def read_at(at: int, n: int) -> bytes:
        fh.seek(at)
        return fh.read(n)

    position = _frame_end(read_at, position, params.has_checksum, file_size, "zstd frame")
    if position != file_size:
        raise CorruptPatch(f"{file_size - position} bytes after the zstd frame")
    fh.seek(0)


def check_frame_bytes(data: bytes, expected_size: int, max_window: int, what: str) -> None:
    """:func:`_check_frame` for a frame in memory (a stream inside another format)."""
    params, position = _check_params(data[:_FRAME_HEADER_MAX], expected_size, max_window, what)
    position = _frame_end(lambda at, n: data[at:at + n], position, params.has_checksum, len(data), what)
    if position != len(data):
        raise CorruptPatch(f"{len(data) - position} bytes after the zstd frame in {what}")


def _decompress_bounded(dctx: zstandard.ZstdDecompressor, src: BinaryIO,
                        sink: HashingSink, expected_size: int) -> None:
    """Decompress the one frame of ``src`` into ``sink``, never past ``expected_size``."""
    _check_frame(src, expected_size)
    try:
        with dctx.stream_reader(src, read_size=CHUNK, read_across_frames=False,
                                closefd=False) as reader:
            while True:
                # read one byte more than allowed so that a bomb is seen, not truncated
                want = min(CHUNK, expected_size - sink.size + 1)
                chunk = reader.read(want)
                if not chunk:
                    break
                sink.write(chunk)
    except zstandard.ZstdError as exc:
        message = str(exc)
        if "checksum" in message.lower():
            raise DigestMismatch(f"zstd content checksum failed (wrong base?): {message}") from None
        raise CorruptPatch(f"zstd: {message}") from None
    if sink.size != expected_size:
        raise SizeMismatch(f"produced {sink.size} bytes, expected {expected_size}")


def apply_zstd_patch(old_path: StrPath, patch_path: StrPath, sink: HashingSink,
                     expected_size: int) -> None:
    with _mapped(old_path) as old, open(patch_path, "rb") as src:
        dctx = zstandard.ZstdDecompressor(
            dict_data=_prefix_dict(old) if len(old) else None, max_window_size=_MAX_WINDOW)
        _decompress_bounded(dctx, src, sink, expected_size)


def decompress_to(src_path: StrPath, sink: HashingSink, expected_size: int) -> None:
    with open(src_path, "rb") as src:
        dctx = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)
        _decompress_bounded(dctx, src, sink, expected_size)


def declared_size(fh: BinaryIO) -> int:
    """The content size a zstd frame declares in its header."""
    try:
        params = zstandard.get_frame_parameters(fh.read(_FRAME_HEADER_MAX))
    except zstandard.ZstdError as exc:
        raise CorruptPatch(f"not a zstd frame: {exc}") from None
    if params.content_size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
        raise CorruptPatch("zstd frame does not declare its content size")
    return int(params.content_size)
