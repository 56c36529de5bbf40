"""BSDIFF40 patches (bsdiff4 / Debian ``bspatch``), made and applied with bounds checks.

Layout: ``b"BSDIFF40"``, then three 8-byte sign-magnitude little-endian integers
(length of the bz2 control block, length of the bz2 diff block, size of the new
file), then the three bz2 streams.  The control block is a list of (x, y, z):
add x bytes of diff to old, copy y bytes of extra, seek old by z.

``bsdiff4.patch`` allocates whatever size the header declares and bz2-decompresses
each block without a bound, so :func:`read_patch` parses and validates the header and
the control block itself -- declared size equal to the expected size and under the
cap, every bz2 stream bounded, every control entry inside the old, new, diff and extra
buffers -- before handing the checked pieces to ``bsdiff4.core.patch``.
"""
from __future__ import annotations

import bz2
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import bsdiff4
import bsdiff4.core

from .errors import CorruptPatch, SizeExceeded, SizeMismatch
from .limits import DeltaLimits
from .output import HashingSink, StrPath, atomic_output

MAGIC = b"BSDIFF40"
HEADER_SIZE = 32
_CONTROL_ENTRY = 24
CHUNK = 1 << 20
_SIGN = 1 << 63


def decode_offset(raw: int) -> int:
    """bsdiff's ``offtin``: 63-bit magnitude, sign in the top bit."""
    return -(raw & ~_SIGN) if raw & _SIGN else raw


@dataclass(frozen=True)
class PatchHeader:
    control_len: int
    diff_len: int
    new_size: int


@dataclass(frozen=True)
class CheckedPatch:
    new_size: int
    control: bytes
    diff: bytes
    extra: bytes


def parse_header(header: bytes, patch_size: int) -> PatchHeader:
    """Validate the 32-byte header against the patch file's real size."""
    if len(header) < HEADER_SIZE or header[:8] != MAGIC:
        raise CorruptPatch("not a BSDIFF40 patch (bad magic or truncated header)")
    control_len, diff_len, new_size = (decode_offset(v) for v in struct.unpack("<3Q", header[8:32]))
    if control_len < 0 or diff_len < 0 or new_size < 0:
        raise CorruptPatch("negative length in BSDIFF40 header")
    if HEADER_SIZE + control_len + diff_len > patch_size:
        raise CorruptPatch("BSDIFF40 header declares blocks past the end of the patch")
    return PatchHeader(control_len, diff_len, new_size)


def _read_bz2_block(fh: BinaryIO, length: int, limit: int, what: str) -> bytes:
    """Decompress exactly one bz2 stream of ``length`` bytes, refusing > ``limit`` output."""
    dec = bz2.BZ2Decompressor()
    out = bytearray()
    remaining = length
    try:
        while remaining:
            data = fh.read(min(CHUNK, remaining))
            if not data:
                raise CorruptPatch(f"BSDIFF40 {what} block truncated")
            remaining -= len(data)
            while True:
                piece = dec.decompress(data, max_length=limit - len(out) + 1)
                data = b""
                out += piece
                if len(out) > limit:
                    raise CorruptPatch(f"BSDIFF40 {what} block decompresses past {limit} bytes")
                if dec.eof or dec.needs_input:
                    break
            if dec.eof:
                break
    except (OSError, EOFError, ValueError) as exc:
        raise CorruptPatch(f"BSDIFF40 {what} block: {exc}") from None
    if not dec.eof:
        raise CorruptPatch(f"BSDIFF40 {what} block is incomplete")
    if remaining or dec.unused_data:
        raise CorruptPatch(f"BSDIFF40 {what} block has trailing bytes")
    return bytes(out)


def check_control(control: bytes, old_size: int, new_size: int) -> tuple[int, int]:
    """Bounds-check every (x, y, z); return the diff and extra lengths they consume."""
    if len(control) % _CONTROL_ENTRY:
        raise CorruptPatch("BSDIFF40 control block is not a whole number of entries")
    newpos = oldpos = diff_total = extra_total = 0
    for raw_x, raw_y, raw_z in struct.iter_unpack("<3Q", control):
        x, y, z = decode_offset(raw_x), decode_offset(raw_y), decode_offset(raw_z)
        if x < 0 or y < 0:
            raise CorruptPatch("BSDIFF40 control entry with a negative length")
        if x > new_size - newpos or y > new_size - newpos - x:
            raise CorruptPatch("BSDIFF40 control entry writes past the new file")
        if x and (oldpos < 0 or oldpos + x > old_size):
            raise CorruptPatch("BSDIFF40 control entry reads outside the old file")
        newpos += x + y
        diff_total += x
        extra_total += y
        oldpos += x + z
    if newpos != new_size:
        raise CorruptPatch(f"BSDIFF40 control block builds {newpos} bytes, header says {new_size}")
    return diff_total, extra_total


def read_patch(fh: BinaryIO, patch_size: int, old_size: int, expected_size: int,
               limits: DeltaLimits) -> CheckedPatch:
    header = parse_header(fh.read(HEADER_SIZE), patch_size)
    if header.new_size > limits.max_output_bytes:
        raise SizeExceeded(f"patch declares {header.new_size} bytes, above max_output_bytes")
    if header.new_size > expected_size:
        raise SizeExceeded(f"patch declares {header.new_size} bytes, expected {expected_size}")
    if header.new_size != expected_size:
        raise SizeMismatch(f"patch declares {header.new_size} bytes, expected {expected_size}")
    new_size = header.new_size
    # one entry per copy/insert step: never more entries than output bytes (+1 for a seek)
    control = _read_bz2_block(fh, header.control_len, _CONTROL_ENTRY * (new_size + 1), "control")
    diff_len, extra_len = check_control(control, old_size, new_size)
    diff = _read_bz2_block(fh, header.diff_len, diff_len, "diff")
    extra_compressed = patch_size - HEADER_SIZE - header.control_len - header.diff_len
    extra = _read_bz2_block(fh, extra_compressed, extra_len, "extra")
    if len(diff) != diff_len or len(extra) != extra_len:
        raise CorruptPatch("BSDIFF40 diff/extra blocks do not match the control block")
    return CheckedPatch(new_size, control, diff, extra)


def make_bsdiff_patch(old_path: StrPath, new_path: StrPath, out_path: StrPath,
                      limits: DeltaLimits) -> None:
    for path in (old_path, new_path):
        size = os.path.getsize(path)
        if size > limits.bsdiff_max_bytes:
            raise SizeExceeded(f"{os.fspath(path)} is {size} bytes, above bsdiff_max_bytes "
                               f"({limits.bsdiff_max_bytes})")
    with open(old_path, "rb") as fh:
        old = fh.read()
    with open(new_path, "rb") as fh:
        new = fh.read()
    patch = bsdiff4.diff(old, new)
    del old, new
    with atomic_output(out_path) as out:
        out.write(patch)


def apply_bsdiff_patch(old_path: StrPath, patch_path: StrPath, sink: HashingSink,
                       expected_size: int, limits: DeltaLimits) -> None:
    old_size = os.path.getsize(old_path)
    with open(patch_path, "rb") as fh:
        checked = read_patch(fh, os.fstat(fh.fileno()).st_size, old_size, expected_size, limits)
    with open(old_path, "rb") as fh:
        old = fh.read()
    try:
        new = bsdiff4.core.patch(old, checked.new_size, checked.control, checked.diff, checked.extra)
    except ValueError as exc:  # already checked above; kept as a second line of defence
        raise CorruptPatch(f"bsdiff4: {exc}") from None
    del old
    view = memoryview(new)
    for start in range(0, len(view), CHUNK):
        sink.write(view[start:start + CHUNK])
