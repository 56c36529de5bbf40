"""HDiffPatch patches (``HDIFF13``, LZMA inside), made with ``hdiffpatch`` and applied with bounds checks.

``hdiffpatch.diff(old, new, compression=...)`` writes HDiffPatch's *compressed diff* format,
the one ``hdiffz`` writes by default and ``hpatchz OLD DIFF NEW`` applies::

    "HDIFF13&" <compressor name> "\\0"
    varints: new size, old size, cover count,
             covers size,      covers stored size,
             rle ctrl size,    rle ctrl stored size,
             rle code size,    rle code stored size,
             new data size,    new data stored size
    the four streams, back to back, each stored compressed (stored size > 0) or raw

A varint is big-endian groups of 7 bits, the top bit of each byte set when another byte
follows (HDiffPatch's ``hpatch_unpackUIntWithTag`` with no tag bits).  The compressor
name is ``""`` (nothing compressed), ``"lzma"`` (a props-size byte, 5 LZMA props bytes,
raw LZMA1 data without an end mark) or ``"zstd"`` (one zstd frame with its content size).

``hdiffpatch.apply`` allocates whatever new size the header declares, and its LZMA
decoder allocates whatever dictionary the stream's props declare.  So deltagen never
hands it a patch it has not checked: :func:`apply_hdiff_patch` parses the header itself
(new size equal to the expected size and under the caps, old size equal to the real
old file's, every stream's size bounded by the new size, stored sizes tiling the file
exactly, compressor one of the three above), then decompresses each stream itself with
Python's ``lzma``/``zstandard`` (the streams side by side on up to ``DECODE_THREADS``
threads), never past the size the header declares (a stream with more in it is refused
as a bomb), and gives ``hdiffpatch.apply`` the same patch with the streams stored raw
(compressor ``""``).  HDiffPatch then only walks covers and copies
bytes, and checks every cover against the old and new sizes.
"""
from __future__ import annotations

import lzma
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Literal

import zstandard

if TYPE_CHECKING:
    import hdiffpatch

from . import zstd_frames
from .errors import CorruptPatch, DeltaError, SizeExceeded, SizeMismatch
from .limits import DeltaLimits
from .output import HashingSink, StrPath, atomic_output

MAGIC = b"HDIFF13&"
Compressor = Literal["lzma", "zstd"]
#: compressor names accepted on apply ("" = streams stored raw)
KNOWN_COMPRESSORS = ("", "lzma", "zstd")
_MAX_VARINT = 10                              # 64 bits in groups of 7
_TYPE_MAX = 259                               # HDiffPatch's hpatch_kMaxPluginTypeLength
HEADER_MAX = len(MAGIC) + _TYPE_MAX + 1 + 11 * _MAX_VARINT
STREAMS = ("covers", "rle ctrl", "rle code", "new data")
_STREAM_SLACK = 64        # a stream may exceed the new size by this much (tiny files)
_LZMA_PROPS = 5
_LZMA_DICT_MIN = 1 << 12  # LzmaDec treats smaller dictionaries as 4 KiB; LzmaEnc never writes less
_LZMA_TAIL_MAX = 2       # bytes of a stream the decoder may leave unread, plus one
_ZSTD_WINDOW_MIN = 1 << 10
_LZMA_WINDOW_LOG = 24     # build: 16 MiB dictionary at most (shrunk to the stream's size by the encoder)
_LZMA_LEVEL = 9
_ZSTD_LEVEL = 19
OUT_CHUNK = 1 << 20
#: apply: the compressed streams of one patch are decoded on this many threads at most
DECODE_THREADS = min(4, os.cpu_count() or 1)
PARALLEL_DECODE_MIN = 64 << 10   # below this many compressed bytes, one thread (no pool to start)


@dataclass(frozen=True)
class Stream:
    """One of the four streams: its decoded size and its stored size (0 when stored raw)."""

    name: str
    size: int
    compressed: int

    @property
    def stored(self) -> int:
        return self.compressed or self.size


@dataclass(frozen=True)
class HDiffHeader:
    compressor: str
    new_size: int
    old_size: int
    cover_count: int
    streams: tuple[Stream, ...]
    header_size: int


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(_MAX_VARINT):
        if pos + i >= len(buf):
            raise CorruptPatch("HDIFF13 header is truncated")
        byte = buf[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            if value >> 64:
                raise CorruptPatch("HDIFF13 header integer is above 64 bits")
            return value, pos + i + 1
    raise CorruptPatch("HDIFF13 header integer is longer than 10 bytes")


def encode_varint(value: int) -> bytes:
    """The inverse of the header's varint (used to rewrite the header with raw streams)."""
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(value & 0x7F)
        value >>= 7
    groups.reverse()
    return bytes(g | 0x80 for g in groups[:-1]) + bytes(groups[-1:])


def parse_header(head: bytes, patch_size: int) -> HDiffHeader:
    """Parse the header (the first ``HEADER_MAX`` bytes of the patch) against the file's size."""
    if not head.startswith(MAGIC):
        if head.startswith(b"HDIFF"):
            raise CorruptPatch(f"unsupported HDiffPatch format {head[:head.find(b'&')]!r} (only HDIFF13)")
        raise CorruptPatch("not an HDiffPatch HDIFF13 patch (bad magic)")
    end = head.find(b"\0", len(MAGIC), len(MAGIC) + _TYPE_MAX + 1)
    if end < 0:
        raise CorruptPatch("HDIFF13 compressor name is too long or truncated")
    try:
        compressor = head[len(MAGIC):end].decode("ascii")
    except UnicodeDecodeError:
        raise CorruptPatch("HDIFF13 compressor name is not ASCII") from None
    if compressor not in KNOWN_COMPRESSORS:
        raise CorruptPatch(f"HDIFF13 compressor {compressor!r} is not supported "
                           f"(known: {', '.join(repr(c) for c in KNOWN_COMPRESSORS)})")
    pos = end + 1
    values = []
    for _ in range(11):
        value, pos = _varint(head, pos)
        values.append(value)
    new_size, old_size, cover_count = values[:3]
    streams = tuple(Stream(name, values[3 + 2 * i], values[4 + 2 * i]) for i, name in enumerate(STREAMS))
    for stream in streams:
        if stream.compressed and not compressor:
            raise CorruptPatch(f"HDIFF13 {stream.name} stream is compressed but no compressor is named")
        if stream.compressed and not stream.size:
            raise CorruptPatch(f"HDIFF13 {stream.name} stream is empty but has compressed bytes")
        if stream.compressed > patch_size:
            raise CorruptPatch(f"HDIFF13 {stream.name} stream is larger than the patch")
    if pos + sum(s.stored for s in streams) != patch_size:
        raise CorruptPatch(f"HDIFF13 streams do not end at the end of the patch "
                           f"({pos + sum(s.stored for s in streams)} vs {patch_size} bytes)")
    return HDiffHeader(compressor, new_size, old_size, cover_count, streams, pos)


def check_header(header: HDiffHeader, expected_size: int, old_size: int, limits: DeltaLimits) -> None:
    """Sizes: the declared output, the old file, and every stream bounded by the new size."""
    if header.new_size > expected_size:
        raise SizeExceeded(f"HDIFF13 patch declares {header.new_size} bytes, expected {expected_size}")
    if header.new_size != expected_size:
        raise SizeMismatch(f"HDIFF13 patch declares {header.new_size} bytes, expected {expected_size}")
    for what, size in (("new", header.new_size), ("old", old_size)):
        if size > limits.hdiffpatch_max_bytes:
            raise SizeExceeded(f"{what} file of {size} bytes is above hdiffpatch_max_bytes "
                               f"({limits.hdiffpatch_max_bytes})")
    if header.old_size != old_size:
        raise SizeMismatch(f"HDIFF13 patch is for an old file of {header.old_size} bytes, "
                           f"this one has {old_size}")
    # What each stream holds, per byte of the new file: a cover's three integers (covers
    # are chosen only where they save more than they cost), one run control per run of
    # covered bytes, the differing covered bytes, the bytes no cover gives.
    bound = header.new_size + _STREAM_SLACK
    for stream in header.streams:
        if stream.size > bound:
            raise SizeExceeded(f"HDIFF13 {stream.name} stream declares {stream.size} bytes, "
                               f"more than the new file can need ({bound})")
        if stream.compressed and stream.compressed >= stream.size + _STREAM_SLACK:
            raise CorruptPatch(f"HDIFF13 {stream.name} stream is stored compressed but larger than raw")
    if header.cover_count * 3 > header.streams[0].size:
        raise CorruptPatch(f"HDIFF13 declares {header.cover_count} covers in "
                           f"{header.streams[0].size} bytes (3 bytes each at least)")


def _decode_lzma(data: bytes, size: int, name: str) -> bytes:
    if len(data) < 1 + _LZMA_PROPS or data[0] != _LZMA_PROPS:
        raise CorruptPatch(f"HDIFF13 {name} stream: LZMA props are missing or not 5 bytes")
    lclppb, dict_size = data[1], struct.unpack_from("<I", data, 2)[0]
    if lclppb >= 9 * 5 * 5:
        raise CorruptPatch(f"HDIFF13 {name} stream: bad LZMA props")
    pb, rest = divmod(lclppb, 45)
    lp, lc = divmod(rest, 9)
    if dict_size > max(_LZMA_DICT_MIN, 2 * size):
        # the encoder shrinks the dictionary to the next 2^n or 3 x 2^n at or above the
        # stream's size (LzmaEncProps_Normalize); a bigger one only costs memory
        raise SizeExceeded(f"HDIFF13 {name} stream: LZMA dictionary of {dict_size} bytes "
                           f"for {size} bytes of data")
    filters = [{"id": lzma.FILTER_LZMA1, "dict_size": max(dict_size, _LZMA_DICT_MIN),
                "lc": lc, "lp": lp, "pb": pb}]
    payload = memoryview(data)[1 + _LZMA_PROPS:]
    # Raw LZMA has no end mark: the decoder stops at the size the header declares.  The
    # encoder's range coder ends with a 5-byte flush, and the decoder, which reads 5
    # bytes ahead and normalizes lazily, has read all of it, or all but the last byte,
    # when the last symbol is out.  So the stream must not be complete two bytes short of
    # its end: if it is, there is more in it than the header says (a bomb, or junk).
    head, tail = payload[:-_LZMA_TAIL_MAX], payload[len(payload) - _LZMA_TAIL_MAX:]
    try:
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=filters)
        out = dec.decompress(head, max_length=size)
        if len(out) == size and size:
            raise CorruptPatch(f"HDIFF13 {name} stream has more in it than the {size} bytes "
                               "the header declares")
        out += dec.decompress(tail, max_length=size - len(out))
    except lzma.LZMAError as exc:
        raise CorruptPatch(f"HDIFF13 {name} stream: {exc}") from None
    if len(out) != size:
        raise CorruptPatch(f"HDIFF13 {name} stream decodes to {len(out)} bytes, header says {size}")
    return out


def _decode_zstd(data: bytes, size: int, name: str) -> bytes:
    window = max(_ZSTD_WINDOW_MIN, 2 * size)   # the encoder shrinks its window to the stream
    zstd_frames.check_frame_bytes(data, size, window, f"HDIFF13 {name} stream")
    try:
        out = zstandard.ZstdDecompressor(max_window_size=max(window, _ZSTD_WINDOW_MIN)).decompress(
            data, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise CorruptPatch(f"HDIFF13 {name} stream: {exc}") from None
    if len(out) != size:
        raise CorruptPatch(f"HDIFF13 {name} stream decodes to {len(out)} bytes, header says {size}")
    return out


def _decode_stream(compressor: str, data: bytes | memoryview, stream: Stream) -> bytes:
    decode = _decode_lzma if compressor == "lzma" else _decode_zstd
    return decode(bytes(data), stream.size, stream.name)


def raw_patch(header: HDiffHeader, patch: bytes) -> bytes:
    """The same patch with every stream decoded and stored raw (compressor ``""``).

    The compressed streams are decoded side by side on up to ``DECODE_THREADS`` threads
    (``lzma`` and ``zstandard`` release the GIL while they decode): in a rebuilt shared
    library the four streams hold comparable shares of the patch (pyarrow's largest:
    6 / 18 / 41 / 34 %), so two cores decode it in little more than half the time.  Each
    decode is bounded as before; the memory is the same (every stream is held decoded
    until they are joined either way)."""
    parts = [MAGIC, b"\0", encode_varint(header.new_size), encode_varint(header.old_size),
             encode_varint(header.cover_count)]
    view = memoryview(patch)
    slices = []
    pos = header.header_size
    for stream in header.streams:
        slices.append(view[pos:pos + stream.stored])
        pos += stream.stored
        parts += [encode_varint(stream.size), encode_varint(0)]
    bodies: list[bytes | memoryview] = list(slices)
    todo = [i for i, stream in enumerate(header.streams) if stream.compressed]
    threads = min(DECODE_THREADS, len(todo))
    if threads > 1 and sum(header.streams[i].compressed for i in todo) >= PARALLEL_DECODE_MIN:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hdiff-decode") as pool:
            # largest first, so that the threads finish together
            todo.sort(key=lambda i: -header.streams[i].compressed)
            futures = {i: pool.submit(_decode_stream, header.compressor, slices[i], header.streams[i]) for i in todo}
            for i in todo:
                bodies[i] = futures[i].result()   # the first stream refused raises here (the rest finish)
    else:
        for i in todo:
            bodies[i] = _decode_stream(header.compressor, slices[i], header.streams[i])
    return b"".join([*parts, *bodies])


def _hdiffpatch() -> ModuleType:
    """The ``hdiffpatch`` package, imported when a patch is made or applied: with ``attrs`` it
    is ~4 MiB of a process that never needs it (a builder of small text files builds zstd
    patches only: requests' builder 37 -> 33 MiB; docs/deltagen.md)."""
    import hdiffpatch as module
    return module


def build_config(compressor: Compressor) -> hdiffpatch.BaseConfig:
    module = _hdiffpatch()
    if compressor == "lzma":
        config: hdiffpatch.BaseConfig = module.LzmaConfig(level=_LZMA_LEVEL, window=_LZMA_WINDOW_LOG, threads=1)
        return config
    config = module.ZStdConfig(level=_ZSTD_LEVEL, threads=1)
    return config


def make_hdiff_patch(old_path: StrPath, new_path: StrPath, out_path: StrPath, limits: DeltaLimits) -> None:
    """Write an HDIFF13 patch with ``limits.hdiffpatch_compressor`` inside (atomically)."""
    old_size, new_size = os.path.getsize(old_path), os.path.getsize(new_path)
    if max(old_size, new_size) > limits.hdiffpatch_max_bytes:
        raise SizeExceeded(f"old or new ({max(old_size, new_size)} bytes) is above hdiffpatch_max_bytes "
                           f"({limits.hdiffpatch_max_bytes})")
    with open(old_path, "rb") as fh:
        old = fh.read()
    with open(new_path, "rb") as fh:
        new = fh.read()
    hdiffpatch = _hdiffpatch()
    try:
        # validate=False: the recipes flow applies every patch once through apply_hdiff_patch
        parts: list[bytes | memoryview]
        if limits.hdiffpatch_compressor == "lzma" and _tuned_available():
            parts = tuned_lzma_parts(old, new)
        else:
            parts = [hdiffpatch.diff(old, new, compression=build_config(limits.hdiffpatch_compressor),
                                     validate=False)]
    except hdiffpatch.HDiffPatchError as exc:
        raise CorruptPatch(f"hdiffpatch could not make a patch: {exc}") from None
    del old, new
    with atomic_output(out_path) as dst:
        for part in parts:
            dst.write(part)


def apply_hdiff_patch(old_path: StrPath, patch_path: StrPath, sink: HashingSink, expected_size: int,
                      limits: DeltaLimits) -> None:
    """Check the header, decode the streams (bounded), rebuild into ``sink``."""
    old_size = os.path.getsize(old_path)
    with open(patch_path, "rb") as fh:
        patch_size = os.fstat(fh.fileno()).st_size
        header = parse_header(fh.read(HEADER_MAX), patch_size)
        check_header(header, expected_size, old_size, limits)
        fh.seek(0)
        patch = fh.read(patch_size + 1)
    if len(patch) != patch_size:
        raise CorruptPatch("HDIFF13 patch changed size while being read")
    raw = raw_patch(header, patch)
    del patch
    with open(old_path, "rb") as fh:
        old = fh.read(old_size + 1)
    if len(old) != old_size:
        raise SizeMismatch("old file changed size while being read")
    hdiffpatch = _hdiffpatch()
    try:
        new = hdiffpatch.apply(old, raw)
    except hdiffpatch.HDiffPatchError as exc:
        raise CorruptPatch(f"hdiffpatch: {exc}") from None
    except MemoryError:   # the output buffer (sizes are capped; a small machine may still say no)
        raise DeltaError(f"not enough memory to apply an HDIFF13 patch of {expected_size} bytes") from None
    del old, raw
    if len(new) != expected_size:
        raise SizeMismatch(f"hdiffpatch produced {len(new)} bytes, expected {expected_size}")
    view = memoryview(new)
    for at in range(0, len(new), OUT_CHUNK):
        sink.write(view[at:at + OUT_CHUNK])


def declared_size(head: bytes, patch_size: int) -> int:
    """The new size an HDIFF13 header declares (the CLI's ``apply`` without ``--size``)."""
    return parse_header(head, patch_size).new_size


# --- LZMA props chosen per stream (make side) ------------------------------------------
#
# HDiffPatch's LZMA plugin codes every stream with lc3/lp0/pb2, the defaults for text.
# The streams of a machine-code diff are byte-granular, not text: on the changed
# executables of the issue-15 pairs (benchmarks/exec_bytes.py, a grid of 12 lc/lp/pb per
# stream) pb=0 and lp=0 won on most streams, with a best lc that differs per stream and
# per file (one fixed choice lost 1.9% to lc3/lp0/pb2 on one library).  So each stream
# gets the best of a few props, HDiffPatch's own among them, chosen on a sample of the
# stream when it is large.  Each stream carries its own props, so such a patch is still a
# plain HDIFF13 "lzma" patch that stock ``hpatchz`` applies (and deltagen's apply reads
# props from each stream, as before).
#: lc/lp/pb candidates per stream (covers, rle ctrl, rle code, new data)
STREAM_PROPS: tuple[tuple[tuple[int, int, int], ...], ...] = (
    ((3, 0, 2), (1, 0, 0), (4, 0, 0)),
    ((3, 0, 2), (4, 0, 0)),
    ((3, 0, 2), (0, 0, 0), (2, 0, 0)),
    ((3, 0, 2), (0, 0, 0), (3, 0, 0)),
)
#: streams larger than 2x this choose their props on this many bytes from their middle
PROPS_SAMPLE = 128 * 1024


def _tuned_available() -> bool:
    """liblzma can write LZMA1 without an end marker (>= 5.4), as HDiffPatch's streams are."""
    from . import lzma_prefix

    return lzma_prefix.exact_size_available()


def _lzma_dict_size(size: int) -> int:
    """The dictionary HDiffPatch's encoder would use: the next 2^n or 3 x 2^n at or above the
    stream's size, between 4 KiB and ``2 ** _LZMA_WINDOW_LOG``."""
    cap = 1 << _LZMA_WINDOW_LOG
    for n in range(12, _LZMA_WINDOW_LOG + 1):
        for d in (1 << n, 3 << (n - 1)):
            if d >= size:
                return min(d, cap)
    return cap


def _lzma_size(data: bytes, props: tuple[int, int, int]) -> int:
    from . import lzma_prefix

    out: list[bytes] = []
    lzma_prefix.compress(b"", data, out.append, dict_size=_lzma_dict_size(len(data)), lc=props[0], lp=props[1],
                         pb=props[2], preset=_LZMA_LEVEL, end_mark=False)
    return sum(map(len, out))


def _lzma_stream(data: bytes, props: tuple[tuple[int, int, int], ...], start: int = 0,
                 size: int | None = None) -> bytes | None:
    """The smallest HDIFF13 ``lzma`` encoding of one stream (``data[start:start + size]``, read
    in place) over ``props``, or None when storing it raw is as small (HDiffPatch's own rule)."""
    from . import lzma_prefix

    size = len(data) - start if size is None else size
    best: bytes | None = None
    dict_size = _lzma_dict_size(size)
    if len(props) > 1 and size > 2 * PROPS_SAMPLE:
        sample = data[start + size // 2:start + size // 2 + PROPS_SAMPLE]
        props = (min(props, key=lambda p: _lzma_size(sample, p)),)
    for lc, lp, pb in props:
        out: list[bytes] = []
        lzma_prefix.compress(b"", data, out.append, dict_size=dict_size, lc=lc, lp=lp, pb=pb,
                             preset=_LZMA_LEVEL, end_mark=False, start=start, length=size)
        body = (bytes([_LZMA_PROPS, (pb * 5 + lp) * 9 + lc]) + struct.pack("<I", dict_size) + b"".join(out))
        if best is None or len(body) < len(best):
            best = body
    return best if best is not None and len(best) < size else None


def tuned_lzma_patch(old: bytes, new: bytes,
                     props: tuple[tuple[tuple[int, int, int], ...], ...] = STREAM_PROPS) -> bytes:
    """An HDIFF13 ``lzma`` patch whose streams each use the best of ``props``."""
    return b"".join(tuned_lzma_parts(old, new, props))


def tuned_lzma_parts(old: bytes, new: bytes, props: tuple[tuple[tuple[int, int, int], ...], ...] = STREAM_PROPS,
                     ) -> list[bytes | memoryview]:
    """:func:`tuned_lzma_patch` as the pieces to write one after the other (streams stored raw
    are views of HDiffPatch's diff, not copies).

    HDiffPatch makes the diff with nothing compressed; each stream is then coded here with
    liblzma (raw LZMA1, no end marker, as HDiffPatch's plugin writes it).
    """
    raw = _hdiffpatch().diff(old, new, None, validate=False)
    header = parse_header(raw[:HEADER_MAX], len(raw))
    parts: list[bytes | memoryview] = [MAGIC, b"lzma\0", encode_varint(header.new_size),
                                       encode_varint(header.old_size), encode_varint(header.cover_count)]
    bodies: list[bytes | memoryview] = []
    view = memoryview(raw)
    pos = header.header_size
    for stream, choices in zip(header.streams, props, strict=True):
        packed = _lzma_stream(raw, choices, pos, stream.size) if stream.size else None
        parts += [encode_varint(stream.size), encode_varint(len(packed) if packed is not None else 0)]
        bodies.append(packed if packed is not None else view[pos:pos + stream.size])
        pos += stream.size
    return parts + bodies
