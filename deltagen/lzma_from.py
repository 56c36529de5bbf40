"""``lzma-from`` patches: the new file as raw LZMA1 with the old file as preset dictionary.

What ``zstd --patch-from`` does with zstd, done with LZMA (``deltagen/lzma_prefix.py``):
the encoder starts with the old file already in its dictionary, so the new file is coded
as matches into the old one and literals.  LZMA's repeat-distance matches and its
match-byte literals make "the same code as before, a few bytes changed" cheap, and on x86
machine code the x86 branch-call-jump filter (BCJ, ``pybcj``; the filter of xz and 7-Zip)
is run over old and new first, so calls whose target moved by the same amount become equal
bytes.  On rebuilt executables whose HDiffPatch patch is poor (over ~15% of the file:
recompiled with other code generation) it is 10-18% smaller than HDiffPatch
(docs/deltagen.md, "lzma-from").

Layout (little-endian; 32 bytes of header, then the LZMA data to the end of the file)::

    "DGLZFROM"     magic
    u8  flags      bit 0: x86 BCJ filter over old and new (the other bits are 0)
    u8  props      (pb * 5 + lp) * 9 + lc, lc + lp <= 4, pb <= 4
    u32 dict size  exactly max(4096, old size + new size)
    u64 old size
    u64 new size
    u16 reserved   0
    raw LZMA1 with an end-of-payload marker, ending exactly at the end of the file

Apply: the header is checked before anything is allocated (sizes against the expected size,
the real old file and ``lzma_from_max_bytes``; the dictionary exactly old + new, so the
decoder never allocates more than that), then the stream is decoded a piece at a time into
the caller's size-capped sink, never past the declared new size, and must end with its end
marker exactly at the end of the file.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from . import lzma_prefix
from .errors import CorruptPatch, DeltaError, SizeExceeded, SizeMismatch
from .limits import DeltaLimits
from .output import HashingSink, StrPath, atomic_output

MAGIC = b"DGLZFROM"
_HEADER = struct.Struct("<8sBBIQQH")
HEADER_SIZE = _HEADER.size
FLAG_X86 = 1
_DICT_MIN = 1 << 12
#: lc, lp, pb: lc 0 won on the corpus's executables (machine code bytes do not predict the next)
LC, LP, PB = 0, 0, 0
PRESET = 9
READ_CHUNK = 1 << 20
#: ELF e_machine / PE machine values of x86 and x86-64
_ELF_X86 = (3, 62)
_PE_X86 = (0x14C, 0x8664)


@dataclass(frozen=True)
class Header:
    flags: int
    lc: int
    lp: int
    pb: int
    dict_size: int
    old_size: int
    new_size: int


def dict_size_for(old_size: int, new_size: int) -> int:
    return max(_DICT_MIN, old_size + new_size)


def is_x86(head: bytes) -> bool:
    """Whether a file's first bytes say x86/x86-64 machine code (ELF or PE)."""
    if head.startswith(b"\x7fELF") and len(head) >= 20:
        little = head[5] == 1
        return struct.unpack_from("<H" if little else ">H", head, 18)[0] in _ELF_X86
    if head.startswith(b"MZ") and len(head) >= 0x40:
        pe = struct.unpack_from("<I", head, 0x3C)[0]
        if pe + 6 <= len(head) and head[pe:pe + 4] == b"PE\0\0":
            return struct.unpack_from("<H", head, pe + 4)[0] in _PE_X86
    return False


def _bcj_encode(data: bytes) -> bytes:
    import bcj
    encoder = bcj.BCJEncoder()
    return bytes(encoder.encode(data) + encoder.flush())


def parse_header(head: bytes, patch_size: int) -> Header:
    if len(head) < HEADER_SIZE or patch_size < HEADER_SIZE:
        if MAGIC.startswith(head[:8]) or head.startswith(MAGIC):
            raise CorruptPatch("lzma-from patch is truncated (no full header)")
        raise CorruptPatch("not an lzma-from patch (bad magic)")
    magic, flags, props, dict_size, old_size, new_size, reserved = _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise CorruptPatch("not an lzma-from patch (bad magic)")
    if flags & ~FLAG_X86 or reserved:
        raise CorruptPatch(f"lzma-from patch has unknown flags ({flags:#x}, {reserved:#x})")
    if props >= 9 * 5 * 5:
        raise CorruptPatch("lzma-from patch has bad LZMA props")
    pb, rest = divmod(props, 45)
    lp, lc = divmod(rest, 9)
    if lc + lp > 4:
        raise CorruptPatch("lzma-from patch has bad LZMA props (lc + lp > 4)")
    if dict_size != dict_size_for(old_size, new_size):
        raise CorruptPatch(f"lzma-from patch declares a {dict_size}-byte dictionary, "
                           f"not old + new ({dict_size_for(old_size, new_size)})")
    if patch_size == HEADER_SIZE:
        raise CorruptPatch("lzma-from patch is truncated (no LZMA data)")
    return Header(flags, lc, lp, pb, dict_size, old_size, new_size)


def check_header(header: Header, expected_size: int, old_size: int, limits: DeltaLimits) -> None:
    if header.new_size > expected_size:
        raise SizeExceeded(f"lzma-from patch declares {header.new_size} bytes, expected {expected_size}")
    if header.new_size != expected_size:
        raise SizeMismatch(f"lzma-from patch declares {header.new_size} bytes, expected {expected_size}")
    if old_size + header.new_size > limits.lzma_from_max_bytes:
        raise SizeExceeded(f"old + new ({old_size + header.new_size} bytes) is above lzma_from_max_bytes "
                           f"({limits.lzma_from_max_bytes})")
    if header.old_size != old_size:
        raise SizeMismatch(f"lzma-from patch is for an old file of {header.old_size} bytes, "
                           f"this one has {old_size}")


def declared_size(head: bytes, patch_size: int) -> int:
    return parse_header(head, patch_size).new_size


def _read_exact(path: StrPath, size: int, what: str) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(size + 1)
    if len(data) != size:
        raise SizeMismatch(f"{what} changed size while being read")
    return data


def make_lzma_from_patch(old_path: StrPath, new_path: StrPath, out_path: StrPath, limits: DeltaLimits) -> None:
    """Write an lzma-from patch (atomically); x86 machine code gets the BCJ filter."""
    old_size, new_size = os.path.getsize(old_path), os.path.getsize(new_path)
    if old_size + new_size > limits.lzma_from_max_bytes:
        raise SizeExceeded(f"old + new ({old_size + new_size} bytes) is above lzma_from_max_bytes "
                           f"({limits.lzma_from_max_bytes})")
    if not lzma_prefix.available():
        raise DeltaError("lzma-from needs the system liblzma (liblzma.so.5)")
    old, new = _read_exact(old_path, old_size, "old file"), _read_exact(new_path, new_size, "new file")
    flags = FLAG_X86 if is_x86(new[:4096]) else 0
    if flags & FLAG_X86:
        old, new = _bcj_encode(old), _bcj_encode(new)
    dict_size = dict_size_for(old_size, new_size)
    with atomic_output(out_path) as dst:
        dst.write(_HEADER.pack(MAGIC, flags, (PB * 5 + LP) * 9 + LC, dict_size, old_size, new_size, 0))
        try:
            # the encoder copies the old file into its dictionary: hand it the only reference, so
            # that this copy is freed once it has (pydantic-core's 4.6 MB library: 4.6 MB less)
            only = [old]
            del old
            lzma_prefix.compress(only.pop(), new, dst.write, dict_size=dict_size, lc=LC, lp=LP, pb=PB,
                                 preset=PRESET)
        except lzma_prefix.LzmaError as exc:
            raise DeltaError(f"lzma-from: {exc}") from None


def apply_lzma_from_patch(old_path: StrPath, patch_path: StrPath, sink: HashingSink, expected_size: int,
                          limits: DeltaLimits) -> None:
    """Check the header, then decode into ``sink`` (never past the declared size)."""
    old_size = os.path.getsize(old_path)
    with open(patch_path, "rb") as fh:
        patch_size = os.fstat(fh.fileno()).st_size
        header = parse_header(fh.read(HEADER_SIZE), patch_size)
        check_header(header, expected_size, old_size, limits)
        if not lzma_prefix.available():
            raise DeltaError("lzma-from needs the system liblzma (liblzma.so.5)")
        old = _read_exact(old_path, old_size, "old file")
        unfilter = None
        if header.flags & FLAG_X86:
            import bcj
            old = _bcj_encode(old)
            unfilter = bcj.BCJDecoder(header.new_size)
        pieces = iter(lambda: fh.read(READ_CHUNK), b"")
        try:
            for piece in lzma_prefix.decompress(old, pieces, dict_size=header.dict_size, lc=header.lc,
                                                lp=header.lp, pb=header.pb, max_output=header.new_size):
                sink.write(unfilter.decode(piece) if unfilter is not None else piece)
        except lzma_prefix.LzmaError as exc:
            raise CorruptPatch(f"lzma-from patch: {exc}") from None
        except MemoryError:
            raise DeltaError(f"not enough memory to apply an lzma-from patch of {expected_size} bytes") from None
