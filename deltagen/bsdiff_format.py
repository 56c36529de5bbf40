"""BSDIFF40 patches (bsdiff4 / Debian ``bspatch``), made and applied with bounds checks.

Layout: ``b"BSDIFF40"``, then three 8-byte sign-magnitude little-endian integers
(length of the bz2 control block, length of the bz2 diff block, size of the new
file), then the three bz2 streams.  The control block is a list of (x, y, z):
add x bytes of diff to old, copy y bytes of extra, seek old by z.

``bsdiff4.patch`` allocates whatever size the header declares and bz2-decompresses
each block without a bound, so :func:`apply_bsdiff_patch` parses and validates the
header itself (declared size equal to the expected size and under the cap) and then
streams: the three bz2 blocks are decompressed side by side, a piece at a time, every
control entry is checked as it is read (inside the old, new, diff and extra buffers),
and ``bsdiff4.core.patch`` rebuilds the output one batch of at most ``BATCH`` bytes at
a time against the old file (at most ``bsdiff_max_bytes``, as when built).  Memory stays
at the old file plus a few batches whatever the patch claims: a control block of bz2-compressed zeros 24x the target size is read, and
refused, a piece at a time (issue 13, D7).
"""
from __future__ import annotations

import bz2
import os
import struct
from collections.abc import Iterator
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


class _Bz2Block:
    """One bz2 stream of a patch, decompressed on demand: never more than asked at a time,
    never more than ``limit`` bytes in all, and exactly one stream of ``length`` bytes."""

    def __init__(self, fh: BinaryIO, offset: int, length: int, limit: int, what: str) -> None:
        self._fh = fh
        self._pos = offset
        self._remaining = length
        self._limit = limit
        self._what = what
        self._dec = bz2.BZ2Decompressor()
        self._buffer = bytearray()
        self.produced = 0

    def _more(self, want: int) -> bool:
        """Decompress until ``want`` bytes are buffered or the stream ends; False at its end."""
        try:
            while len(self._buffer) < want:
                if self._dec.eof:
                    return False
                data = b""
                if self._dec.needs_input:
                    if not self._remaining:
                        raise CorruptPatch(f"BSDIFF40 {self._what} block is incomplete")
                    self._fh.seek(self._pos)
                    data = self._fh.read(min(CHUNK, self._remaining))
                    if not data:
                        raise CorruptPatch(f"BSDIFF40 {self._what} block truncated")
                    self._pos += len(data)
                    self._remaining -= len(data)
                room = self._limit - self.produced + 1
                piece = self._dec.decompress(data, max_length=min(room, CHUNK))
                self.produced += len(piece)
                if self.produced > self._limit:
                    raise CorruptPatch(f"BSDIFF40 {self._what} block decompresses past {self._limit} bytes")
                self._buffer += piece
        except (OSError, EOFError, ValueError) as exc:
            raise CorruptPatch(f"BSDIFF40 {self._what} block: {exc}") from None
        return True

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the stream)."""
        self._more(n)
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def read_exact(self, n: int) -> bytes:
        out = self.read(n)
        if len(out) != n:
            raise CorruptPatch(f"BSDIFF40 {self._what} block is shorter than the control block says")
        return out

    def finish(self) -> None:
        """The stream must end here: no more output, no trailing compressed bytes."""
        if self._buffer or self._more(1):
            raise CorruptPatch(f"BSDIFF40 {self._what} block is longer than the control block says")
        if self._remaining or self._dec.unused_data:
            raise CorruptPatch(f"BSDIFF40 {self._what} block has trailing bytes")


def _control_entries(block: _Bz2Block) -> Iterator[tuple[int, int, int]]:
    while True:
        data = block.read(_CONTROL_ENTRY * 4096)
        if not data:
            return
        if len(data) % _CONTROL_ENTRY:
            raise CorruptPatch("BSDIFF40 control block is not a whole number of entries")
        for raw_x, raw_y, raw_z in struct.iter_unpack("<3Q", data):
            yield decode_offset(raw_x), decode_offset(raw_y), decode_offset(raw_z)


def _encode(x: int, y: int, z: int) -> bytes:
    return struct.pack("<3Q", *((v if v >= 0 else (-v) | _SIGN) for v in (x, y, z)))


BATCH = 4 << 20   # output bytes rebuilt per call of bsdiff4.core.patch
BATCH_CONTROL_BYTES = 1 << 20   # and control bytes handed to one call


class _Batch:
    """Control entries for one ``bsdiff4.core.patch`` call, starting at old offset ``start``."""

    def __init__(self, start: int) -> None:
        self.control = bytearray(_encode(0, 0, start))   # core.patch starts at old offset 0: seek first
        self.diff = 0
        self.extra = 0

    @property
    def size(self) -> int:
        return self.diff + self.extra


# An entry that builds nothing (x = y = 0) only seeks: bsdiff4 emits them mid-patch too
# (89 of 7,732 entries in lxml 5.3.0 -> 5.3.1 objectify.so), but a block of them costs work
# and builds nothing, so each one must follow an entry that builds something (plus a few).
MAX_EMPTY_ENTRIES = 64


class _ControlWalk:
    """Where the control entries lead, checked one entry at a time."""

    def __init__(self, old_size: int, new_size: int) -> None:
        self.old_size, self.new_size = old_size, new_size
        self.newpos = self.oldpos = self.diff_total = self.extra_total = self.empty = self.building = 0

    def step(self, x: int, y: int, z: int) -> None:
        if x < 0 or y < 0:
            raise CorruptPatch("BSDIFF40 control entry with a negative length")
        if not x and not y:
            self.empty += 1
            if self.empty > self.building + MAX_EMPTY_ENTRIES:
                raise CorruptPatch(f"BSDIFF40 control block has {self.empty} entries that build nothing "
                                   f"for {self.building} that do")
        else:
            self.building += 1
        if x > self.new_size - self.newpos or y > self.new_size - self.newpos - x:
            raise CorruptPatch("BSDIFF40 control entry writes past the new file")
        if x and (self.oldpos < 0 or self.oldpos + x > self.old_size):
            raise CorruptPatch("BSDIFF40 control entry reads outside the old file")
        if abs(z) > self.old_size + self.new_size:
            raise CorruptPatch("BSDIFF40 control entry seeks far outside the old file")
        self.newpos += x + y
        self.diff_total += x
        self.extra_total += y
        self.oldpos += x + z

    def done(self) -> None:
        if self.newpos != self.new_size:
            raise CorruptPatch(f"BSDIFF40 control block builds {self.newpos} bytes, header says {self.new_size}")


def _check_header(fh: BinaryIO, patch_size: int, expected_size: int, limits: DeltaLimits) -> PatchHeader:
    header = parse_header(fh.read(HEADER_SIZE), patch_size)
    if header.new_size > limits.max_output_bytes:
        raise SizeExceeded(f"patch declares {header.new_size} bytes, above max_output_bytes")
    if header.new_size > limits.bsdiff_max_bytes:  # never built above the cap (make_bsdiff_patch)
        raise SizeExceeded(f"patch declares {header.new_size} bytes, above bsdiff_max_bytes "
                           f"({limits.bsdiff_max_bytes})")
    if header.new_size > expected_size:
        raise SizeExceeded(f"patch declares {header.new_size} bytes, expected {expected_size}")
    if header.new_size != expected_size:
        raise SizeMismatch(f"patch declares {header.new_size} bytes, expected {expected_size}")
    return header


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
    """Rebuild the new file into ``sink``, streaming (see the module docstring)."""
    old_size = os.path.getsize(old_path)
    if old_size > limits.bsdiff_max_bytes:  # never built above the cap: refuse rather than load it
        raise SizeExceeded(f"old file of {old_size} bytes is above bsdiff_max_bytes ({limits.bsdiff_max_bytes})")
    with open(patch_path, "rb") as fh:
        patch_size = os.fstat(fh.fileno()).st_size
        header = _check_header(fh, patch_size, expected_size, limits)
        new_size = header.new_size
        # each entry that builds something builds a byte at least, and each seek-only entry
        # follows one that builds (plus a few): never more entries than twice the output + a few
        control = _Bz2Block(fh, HEADER_SIZE, header.control_len,
                            _CONTROL_ENTRY * (2 * new_size + MAX_EMPTY_ENTRIES + 1), "control")
        diff = _Bz2Block(fh, HEADER_SIZE + header.control_len, header.diff_len, new_size, "diff")
        extra_at = HEADER_SIZE + header.control_len + header.diff_len
        extra = _Bz2Block(fh, extra_at, patch_size - extra_at, new_size, "extra")
        with open(old_path, "rb") as old_fh:   # bsdiff4.core.patch wants bytes (at most the cap)
            old = old_fh.read(old_size + 1)
        if len(old) != old_size:
            raise SizeMismatch(f"old file changed size while read ({len(old)} bytes, expected {old_size})")
        walk = _ControlWalk(old_size, new_size)
        batch = _Batch(0)

        def flush(start: int) -> None:
            """Rebuild the batch's bytes into the sink; the next batch starts at old offset ``start``."""
            nonlocal batch
            if batch.size:
                try:
                    out = bsdiff4.core.patch(old, batch.size, bytes(batch.control),
                                             diff.read_exact(batch.diff), extra.read_exact(batch.extra))
                except ValueError as exc:  # already checked; kept as a second line of defence
                    raise CorruptPatch(f"bsdiff4: {exc}") from None
                sink.write(out)
            batch = _Batch(start)

        for x, y, z in _control_entries(control):
            if len(batch.control) >= BATCH_CONTROL_BYTES:  # many tiny entries: bound the control too
                flush(walk.oldpos)
            pos = walk.oldpos
            walk.step(x, y, z)
            if not x and not y:  # a pure seek
                if batch.size:
                    batch.control += _encode(0, 0, z)
                else:
                    batch = _Batch(walk.oldpos)
                continue
            # split the entry so that no batch passes BATCH bytes: (x1,0,0)..(xk,y1,0)..(0,yn,z)
            while x or y:
                if batch.size >= BATCH:
                    flush(pos)
                room = BATCH - batch.size
                take_x = min(x, room)
                take_y = min(y, room - take_x) if take_x == x else 0
                x -= take_x
                y -= take_y
                seek = z if not x and not y else 0
                batch.control += _encode(take_x, take_y, seek)
                batch.diff += take_x
                batch.extra += take_y
                pos += take_x + seek
        walk.done()
        flush(walk.oldpos)
        for block in (control, diff, extra):
            block.finish()
