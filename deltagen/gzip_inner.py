"""``gzip-inner`` patches: a gzip file patched by its uncompressed contents, then recompressed.

A gzip file whose text changed a little (a Debian ``changelog.Debian.gz`` with one entry
prepended, a man page) has compressed bytes that differ from the first change to the end:
no byte-level patch finds much in common.  Its uncompressed contents do have it in common.
When the target's DEFLATE stream is exactly what zlib produces from its uncompressed bytes
with a few parameters (level, memLevel, strategy, and the uncompressed offsets where the
original encoder ended its DEFLATE blocks: GNU gzip and zlib share the LZ77 matcher but end
blocks in different places), the patch is those parameters, the gzip header verbatim, and
an inner patch (zstd patch-from or HDiffPatch, whichever is smaller) from the old file's
uncompressed contents to the new one's.  Apply decompresses the old file, applies the
inner patch, recompresses with zlib at the recorded block ends and appends the CRC-32 and
size; the caller checks the result's BLAKE3 as for every recipe.  The builder verifies the
reproduction before it writes a patch: a target it cannot reproduce gets no gzip-inner
patch (the other algorithms still run).

Layout (little-endian; 44 bytes of header, then the parts it counts)::

    "DGGZINNR"        magic
    u8  inner         1: zstd patch-from, 2: HDiffPatch (the inner patch's algorithm)
    u8  level         zlib level 1..9
    u8  mem_level     zlib memLevel 1..9
    u8  strategy      zlib strategy 0..4 (Z_DEFAULT_STRATEGY .. Z_FIXED)
    u64 old size      the old file's uncompressed size
    u64 inner size    the new file's uncompressed size
    u64 new size      the new gzip file's size (the patch's output)
    u32 header size   10..65536: the new file's gzip header (name, mtime, OS ...), verbatim
    u32 block count   block ends recorded (each < inner size, strictly increasing; <= 2**20)
    gzip header bytes
    block count x u64 uncompressed offsets where a DEFLATE block ends (not the last one)
    the inner patch, to the end of the file

Apply checks the header before it allocates or decompresses anything: sizes against the
expected size and ``gzip_inner_max_bytes``, parameters in zlib's ranges, the gzip header
well formed, the block list inside the patch and ordered.  The old file is decompressed
as a stream into a temporary file beside the patch (or in the system's temporary
directory), never past its declared size; the
inner patch is applied through a sink capped at the declared inner size, and its output
is recompressed as it arrives into the caller's size-capped sink.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from . import hdiff_format, zstd_frames
from .errors import CorruptPatch, DeltaError, SizeExceeded, SizeMismatch
from .limits import Algorithm, DeltaLimits
from .output import HashingSink, StrPath, atomic_output

MAGIC = b"DGGZINNR"
_HEADER = struct.Struct("<8sBBBBQQQII")
HEADER_SIZE = _HEADER.size
GZIP_MAGIC = b"\x1f\x8b\x08"
#: longest gzip header (FEXTRA, FNAME, FCOMMENT) a patch may carry
GZIP_HEADER_MAX = 1 << 16
#: most block ends a patch may list (8 MiB of them; GNU gzip and zlib end a block every
#: 16-32 K symbols, so a 64 MiB file has a few thousand)
MAX_BLOCKS = 1 << 20
_GZIP_FLAGS_KNOWN = 0x1F  # FTEXT FHCRC FEXTRA FNAME FCOMMENT
INNER_ALGORITHMS: dict[int, Algorithm] = {1: "zstd", 2: "hdiffpatch"}
CHUNK = 1 << 20
#: DEFLATE codes at most 258 bytes in a length/distance pair of at least 2 bits: no stream
#: expands to more than ~1032 times its size, so a patch declaring more is refused at once
#: (the output is capped by the expected size anyway; this bounds the work before it)
DEFLATE_MAX_RATIO = 1032
#: (level, memLevel) pairs tried at build, most common first: GNU ``gzip -9`` (Debian's
#: changelogs and man pages) reproduces with 9/9 or 9/8 plus its block ends, Python's
#: ``gzip``/zlib default with 9/8, ``gzip -6``/zlib's default level with 6/8
BUILD_PARAMETERS = ((9, 9), (9, 8), (6, 8), (6, 9), (1, 8), (5, 8), (4, 8), (7, 8), (8, 8), (3, 8), (2, 8))


@dataclass(frozen=True)
class Header:
    inner: Algorithm
    level: int
    mem_level: int
    strategy: int
    old_size: int
    inner_size: int
    new_size: int
    gzip_header_size: int
    block_count: int

    @property
    def parts_size(self) -> int:
        """Bytes from the start of the patch to the inner patch."""
        return HEADER_SIZE + self.gzip_header_size + 8 * self.block_count


def is_gzip(path: StrPath) -> bool:
    """Whether a file starts with the gzip magic and DEFLATE method."""
    with open(path, "rb") as fh:
        return fh.read(3) == GZIP_MAGIC


def gzip_isize(path: StrPath) -> int:
    """The uncompressed size a gzip file's trailer states (modulo 2**32; a hint, not a promise)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() < 18:
            return 0
        fh.seek(-4, os.SEEK_END)
        return int(struct.unpack("<I", fh.read(4))[0])


def gzip_header_size(head: bytes) -> int:
    """The size of the gzip member header at the start of ``head`` (RFC 1952)."""
    if len(head) < 10 or not head.startswith(GZIP_MAGIC):
        raise CorruptPatch("not a gzip header")
    flags = head[3]
    if flags & ~_GZIP_FLAGS_KNOWN:
        raise CorruptPatch(f"gzip header has reserved flags set ({flags:#x})")
    at = 10
    if flags & 4:  # FEXTRA
        if len(head) < at + 2:
            raise CorruptPatch("gzip header is truncated (FEXTRA)")
        at += 2 + int(struct.unpack_from("<H", head, at)[0])
    for bit in (8, 16):  # FNAME, FCOMMENT: zero-terminated
        if flags & bit:
            end = head.find(b"\0", at)
            if end < 0:
                raise CorruptPatch("gzip header is truncated (name or comment)")
            at = end + 1
    if flags & 2:  # FHCRC
        at += 2
    if at > len(head):
        raise CorruptPatch("gzip header is truncated")
    return at


def parse_header(head: bytes, patch_size: int) -> Header:
    if len(head) < HEADER_SIZE or patch_size < HEADER_SIZE:
        if MAGIC.startswith(head[:8]) or head.startswith(MAGIC):
            raise CorruptPatch("gzip-inner patch is truncated (no full header)")
        raise CorruptPatch("not a gzip-inner patch (bad magic)")
    magic, inner, level, mem_level, strategy, old_size, inner_size, new_size, gz_size, count = \
        _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise CorruptPatch("not a gzip-inner patch (bad magic)")
    if inner not in INNER_ALGORITHMS:
        raise CorruptPatch(f"gzip-inner patch names an unknown inner algorithm ({inner})")
    if not 1 <= level <= 9 or not 1 <= mem_level <= 9 or not 0 <= strategy <= 4:
        raise CorruptPatch(f"gzip-inner patch has bad zlib parameters (level {level}, memLevel {mem_level}, "
                           f"strategy {strategy})")
    if not 10 <= gz_size <= GZIP_HEADER_MAX:
        raise CorruptPatch(f"gzip-inner patch declares a {gz_size}-byte gzip header")
    if count and (count >= inner_size or count > MAX_BLOCKS):
        raise CorruptPatch(f"gzip-inner patch declares {count} block ends in {inner_size} bytes "
                           f"(at most {MAX_BLOCKS})")
    header = Header(INNER_ALGORITHMS[inner], level, mem_level, strategy, old_size, inner_size, new_size,
                    gz_size, count)
    if header.parts_size >= patch_size:
        raise CorruptPatch("gzip-inner patch is truncated (its header counts more than the file holds)")
    return header


def declared_size(head: bytes, patch_size: int) -> int:
    return parse_header(head, patch_size).new_size


def check_header(header: Header, expected_size: int, limits: DeltaLimits) -> None:
    if header.new_size > expected_size:
        raise SizeExceeded(f"gzip-inner patch declares {header.new_size} bytes, expected {expected_size}")
    if header.new_size != expected_size:
        raise SizeMismatch(f"gzip-inner patch declares {header.new_size} bytes, expected {expected_size}")
    if header.inner_size > DEFLATE_MAX_RATIO * header.new_size:
        raise CorruptPatch(f"gzip-inner patch declares {header.inner_size} uncompressed bytes for a "
                           f"{header.new_size}-byte gzip file: more than DEFLATE can hold")
    for what, size in (("old", header.old_size), ("new", header.inner_size)):
        if size > limits.gzip_inner_max_bytes:
            raise SizeExceeded(f"gzip-inner patch declares {size} uncompressed {what} bytes, above "
                               f"gzip_inner_max_bytes ({limits.gzip_inner_max_bytes})")


def read_parts(fh: BinaryIO, header: Header) -> tuple[bytes, list[int]]:
    """The gzip header and block ends that follow the patch header (``fh`` just after it)."""
    gz = fh.read(header.gzip_header_size)
    if len(gz) != header.gzip_header_size:
        raise CorruptPatch("gzip-inner patch is truncated (gzip header)")
    if gzip_header_size(gz) != len(gz):
        raise CorruptPatch("gzip-inner patch's gzip header is inconsistent with its flags")
    raw = fh.read(8 * header.block_count)
    if len(raw) != 8 * header.block_count:
        raise CorruptPatch("gzip-inner patch is truncated (block ends)")
    ends = list(struct.unpack(f"<{header.block_count}Q", raw))
    previous = 0
    for end in ends:
        if not previous < end < header.inner_size:
            raise CorruptPatch(f"gzip-inner patch has a block end {end} out of order or past "
                               f"{header.inner_size} bytes")
        previous = end
    return gz, ends


class Deflater:
    """zlib raw DEFLATE with blocks ended at given uncompressed offsets; a file-like sink."""

    def __init__(self, level: int, mem_level: int, strategy: int, ends: list[int],
                 emit: Callable[[bytes], object]) -> None:
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, -15, mem_level, strategy)
        self._ends = ends
        self._next = 0
        self._emit = emit
        self.size = 0
        self.crc = 0

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        while len(view):
            room = self._ends[self._next] - self.size if self._next < len(self._ends) else len(view)
            piece = view[:min(room, CHUNK)]  # zlib's output for a piece is held in memory: at most ~1 MiB
            self.crc = zlib.crc32(piece, self.crc)
            self.size += len(piece)
            out = self._zlib.compress(piece)
            if out:
                self._emit(out)
            view = view[len(piece):]
            if self._next < len(self._ends) and self.size == self._ends[self._next]:
                self._emit(self._zlib.flush(zlib.Z_BLOCK))
                self._next += 1
        return len(data)

    def finish(self) -> None:
        """The final block and the gzip trailer (CRC-32 and size modulo 2**32)."""
        self._emit(self._zlib.flush(zlib.Z_FINISH))
        self._emit(struct.pack("<II", self.crc, self.size & 0xFFFFFFFF))


def _decompress_old(old_path: StrPath, out: BinaryIO, old_size: int) -> None:
    """Stream the old gzip file's contents into ``out``: exactly ``old_size`` bytes, one member."""
    inflater = zlib.decompressobj(31)
    total = 0
    with open(old_path, "rb") as src:
        if src.read(3) != GZIP_MAGIC:
            raise SizeMismatch("the old file is not a gzip file (this gzip-inner patch is for one)")
        src.seek(0)
        for chunk in iter(lambda: src.read(CHUNK), b""):
            if inflater.eof:
                raise SizeMismatch("the old file has data after its gzip member")
            pending = chunk
            while True:
                try:
                    piece = inflater.decompress(pending, CHUNK)
                except zlib.error as exc:
                    raise SizeMismatch(f"the old file is not valid gzip ({exc})") from None
                total += len(piece)
                if total > old_size:
                    raise SizeMismatch(f"the old file holds more than the {old_size} uncompressed bytes "
                                       f"this gzip-inner patch is for")
                out.write(piece)
                pending = inflater.unconsumed_tail
                if inflater.eof or (not pending and len(piece) < CHUNK):
                    break
            if inflater.eof and inflater.unused_data:
                raise SizeMismatch("the old file has data after its gzip member")
    if not inflater.eof:
        raise SizeMismatch("the old file is a truncated gzip file")
    if total != old_size:
        raise SizeMismatch(f"the old file holds {total} uncompressed bytes, this gzip-inner patch is "
                           f"for {old_size}")


@contextlib.contextmanager
def _scratch(near: StrPath) -> Iterator[Path]:
    """A temporary directory beside ``near`` (the patch: on the same disk as the download),
    or in the system's temporary directory when that one cannot be written."""
    try:
        scratch = tempfile.TemporaryDirectory(prefix=".gzip-inner-", dir=os.path.dirname(os.path.abspath(near)))
    except OSError:
        scratch = tempfile.TemporaryDirectory(prefix="gzip-inner-")
    with scratch as td:
        yield Path(td)


def apply_gzip_inner_patch(old_path: StrPath, patch_path: StrPath, sink: HashingSink, expected_size: int,
                           limits: DeltaLimits) -> None:
    """Check the header, rebuild the uncompressed target and recompress it into ``sink``."""
    with open(patch_path, "rb") as fh:
        patch_size = os.fstat(fh.fileno()).st_size
        header = parse_header(fh.read(HEADER_SIZE), patch_size)
        check_header(header, expected_size, limits)
        gz, ends = read_parts(fh, header)
        with _scratch(patch_path) as tmp:
            old_inner, inner_patch = tmp / "old", tmp / "patch"
            with open(inner_patch, "wb") as dst:
                shutil.copyfileobj(fh, dst, CHUNK)
            with open(old_inner, "wb") as dst:
                _decompress_old(old_path, dst, header.old_size)
            sink.write(gz)
            deflater = Deflater(header.level, header.mem_level, header.strategy, ends, sink.write)
            inner_sink = HashingSink(header.inner_size, cast(BinaryIO, deflater))
            try:
                if header.inner == "zstd":
                    zstd_frames.apply_zstd_patch(old_inner, inner_patch, inner_sink, header.inner_size)
                else:
                    hdiff_format.apply_hdiff_patch(old_inner, inner_patch, inner_sink, header.inner_size, limits)
            except DeltaError as exc:
                raise type(exc)(f"gzip-inner's inner {header.inner} patch: {exc.message}") from None
            if inner_sink.size != header.inner_size:
                raise SizeMismatch(f"gzip-inner's inner patch produced {inner_sink.size} bytes, "
                                   f"declared {header.inner_size}")
            deflater.finish()


# --- build -------------------------------------------------------------------------------------

class _ZStream(ctypes.Structure):
    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
                ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p), ("zalloc", ctypes.c_void_p),
                ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p), ("data_type", ctypes.c_int),
                ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong)]


_Z_OK, _Z_STREAM_END, _Z_BUF_ERROR, _Z_BLOCK = 0, 1, -5, 5


@functools.cache
def _libz() -> ctypes.CDLL:
    name = ctypes.util.find_library("z")
    for candidate in ([name] if name else []) + ["libz.so.1"]:
        try:
            lib = ctypes.CDLL(candidate)
        except OSError:
            continue
        lib.inflateInit2_.argtypes = [ctypes.POINTER(_ZStream), ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.inflateInit2_.restype = ctypes.c_int
        lib.inflate.argtypes = [ctypes.POINTER(_ZStream), ctypes.c_int]
        lib.inflate.restype = ctypes.c_int
        lib.inflateEnd.argtypes = [ctypes.POINTER(_ZStream)]
        lib.inflateEnd.restype = ctypes.c_int
        lib.zlibVersion.restype = ctypes.c_char_p
        return lib
    raise DeltaError("gzip-inner needs the system zlib (libz.so.1) to find DEFLATE block ends")


@dataclass(frozen=True)
class GzipLayout:
    """What the builder learned from a gzip file: its header, where its DEFLATE stream is,
    where its blocks end, and its uncompressed size."""

    header: bytes
    deflate_size: int
    ends: list[int]
    inner_size: int


def inflate_with_blocks(path: StrPath, out: BinaryIO, max_inner: int) -> GzipLayout:
    """Decompress a single-member gzip file into ``out`` (streamed) and record where each
    DEFLATE block ends (zlib's ``inflate(Z_BLOCK)`` stops at every block boundary).

    Raises DeltaError when the file is not one well-formed gzip member with a matching
    trailer and nothing after it, and SizeExceeded past ``max_inner`` bytes."""
    lib = _libz()
    with open(path, "rb") as src:
        head = src.read(GZIP_HEADER_MAX + 16)
        header = head[:gzip_header_size(head)]
        src.seek(len(header))
        stream = _ZStream()
        if lib.inflateInit2_(ctypes.byref(stream), -15, lib.zlibVersion(), ctypes.sizeof(_ZStream)) != _Z_OK:
            raise DeltaError("zlib inflateInit2 failed")
        outbuf = ctypes.create_string_buffer(CHUNK)
        ends: list[int] = []
        crc = 0
        try:
            done = False
            while not done:
                chunk = src.read(CHUNK)
                if not chunk:
                    raise CorruptPatch("the gzip file is truncated (no end of its DEFLATE stream)")
                inbuf = ctypes.create_string_buffer(chunk, len(chunk))
                stream.next_in, stream.avail_in = ctypes.addressof(inbuf), len(chunk)
                while True:
                    stream.next_out, stream.avail_out = ctypes.addressof(outbuf), CHUNK
                    rc = lib.inflate(ctypes.byref(stream), _Z_BLOCK)
                    produced = CHUNK - stream.avail_out
                    if produced:
                        piece = outbuf.raw[:produced]
                        crc = zlib.crc32(piece, crc)
                        out.write(piece)
                    if stream.total_out > max_inner:
                        raise SizeExceeded(f"the gzip file holds more than gzip_inner_max_bytes ({max_inner})")
                    if rc == _Z_STREAM_END:
                        done = True
                        break
                    if rc not in (_Z_OK, _Z_BUF_ERROR) or (rc == _Z_BUF_ERROR and stream.avail_in):
                        raise CorruptPatch(f"the gzip file's DEFLATE stream is corrupt (zlib {rc})")
                    if stream.data_type & 128 and stream.total_out and (not ends or ends[-1] != stream.total_out):
                        ends.append(stream.total_out)
                        if len(ends) > MAX_BLOCKS:
                            raise DeltaError(f"the gzip file has more than {MAX_BLOCKS} DEFLATE blocks")
                    if stream.avail_in == 0 and stream.avail_out != 0:
                        break
            deflate_size, inner_size = stream.total_in, stream.total_out
        finally:
            lib.inflateEnd(ctypes.byref(stream))
        src.seek(len(header) + deflate_size)
        trailer = src.read(9)
    if len(trailer) != 8:
        raise CorruptPatch("the gzip file has no trailer or data after it (not a single member)")
    if struct.unpack("<II", trailer) != (crc, inner_size & 0xFFFFFFFF):
        raise CorruptPatch("the gzip file's trailer does not match its contents")
    return GzipLayout(header, deflate_size, [e for e in ends if e < inner_size], inner_size)


class _Mismatch(Exception):
    pass


def _reproduces(inner_path: StrPath, gz_path: StrPath, layout: GzipLayout, level: int, mem_level: int) -> bool:
    """Whether recompressing ``inner_path`` gives the gzip file's DEFLATE stream byte for byte
    (stops at the first differing piece)."""
    with open(gz_path, "rb") as original:
        original.seek(len(layout.header))
        seen = 0

        def compare(out: bytes) -> None:
            nonlocal seen
            seen += len(out)
            if seen > layout.deflate_size + 8 or original.read(len(out)) != out:
                raise _Mismatch

        deflater = Deflater(level, mem_level, zlib.Z_DEFAULT_STRATEGY, layout.ends, compare)
        try:
            with open(inner_path, "rb") as src:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    deflater.write(chunk)
            deflater.finish()  # the trailer is compared too
        except _Mismatch:
            return False
        return seen == layout.deflate_size + 8


def make_gzip_inner_patch(old_path: StrPath, new_path: StrPath, out_path: StrPath, limits: DeltaLimits) -> None:
    """Write a gzip-inner patch (atomically), or raise DeltaError when the new file's DEFLATE
    stream cannot be reproduced (or either file is not a single-member gzip file)."""
    if not (is_gzip(old_path) and is_gzip(new_path)):
        raise DeltaError("gzip-inner needs gzip files (old and new)")
    with _scratch(out_path) as tmp:
        old_inner, new_inner = tmp / "old", tmp / "new"
        with open(new_inner, "wb") as dst:
            layout = inflate_with_blocks(new_path, dst, limits.gzip_inner_max_bytes)
        with open(old_inner, "wb") as dst:
            inflate_with_blocks(old_path, dst, limits.gzip_inner_max_bytes)
        params = next(((level, mem) for level, mem in BUILD_PARAMETERS
                       if _reproduces(new_inner, new_path, layout, level, mem)), None)
        if params is None:
            raise DeltaError("gzip-inner: zlib does not reproduce this gzip file's DEFLATE stream")
        best: tuple[int, Path] | None = None
        failures = []
        for code, name in INNER_ALGORITHMS.items():
            candidate = tmp / f"inner.{code}"
            try:
                if name == "zstd":
                    zstd_frames.make_zstd_patch(old_inner, new_inner, candidate, limits)
                else:
                    hdiff_format.make_hdiff_patch(old_inner, new_inner, candidate, limits)
            except DeltaError as exc:
                failures.append(f"{name}: {exc}")
                continue
            size = candidate.stat().st_size
            if best is None or size < best[0]:
                best = (size, candidate)
        if best is None:
            raise DeltaError(f"gzip-inner: no inner patch ({'; '.join(failures)})")
        with atomic_output(out_path) as dst:
            dst.write(_HEADER.pack(MAGIC, int(best[1].suffix[1:]), params[0], params[1], zlib.Z_DEFAULT_STRATEGY,
                                   os.path.getsize(old_inner), layout.inner_size, os.path.getsize(new_path),
                                   len(layout.header), len(layout.ends)))
            dst.write(layout.header)
            dst.write(struct.pack(f"<{len(layout.ends)}Q", *layout.ends))
            with open(best[1], "rb") as src:
                shutil.copyfileobj(src, dst, CHUNK)
