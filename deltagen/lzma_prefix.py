"""Raw LZMA1 with a preset dictionary, through the system liblzma (``liblzma.so.5``) via ctypes.

LZMA can start with its dictionary already full: liblzma's ``lzma_options_lzma.preset_dict``.
With the old file as that dictionary, the new file is coded as matches into the old one
and literals, with LZMA's repeat-distance matches and match-byte literals: a cover that
continues after a changed byte costs a few bits, which is what rebuilt machine code is
made of.  Python's ``lzma`` module does not expose ``preset_dict``, so both directions
call liblzma (the library Python's ``lzma`` module itself is built on) through ctypes.

Encoder and decoder take the dictionary from memory; the decoder's output is handed out a
piece at a time and never grows past the size the caller allows.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Iterator

CHUNK = 1 << 20

_FILTER_LZMA1 = 0x4000000000000001
_FILTER_LZMA1EXT = 0x4000000000000002  # liblzma >= 5.4: LZMA1 with a known size and no end marker
_VLI_UNKNOWN = (1 << 64) - 1
_PRESET_EXTREME = 1 << 31
_RUN, _FINISH = 0, 3
_OK, _STREAM_END = 0, 1
_ERRORS = {2: "no check", 3: "unsupported check", 4: "get check", 5: "out of memory",
           6: "memory limit reached", 7: "file format not recognized", 8: "invalid or unsupported options",
           9: "data is corrupt", 10: "no progress is possible (truncated input)", 11: "programming error"}


class _Stream(ctypes.Structure):
    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_size_t), ("total_in", ctypes.c_uint64),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_size_t), ("total_out", ctypes.c_uint64),
                ("allocator", ctypes.c_void_p), ("internal", ctypes.c_void_p),
                ("reserved_ptr", ctypes.c_void_p * 4), ("reserved_int1", ctypes.c_uint64),
                ("reserved_int2", ctypes.c_uint64), ("reserved_int3", ctypes.c_size_t),
                ("reserved_int4", ctypes.c_size_t), ("reserved_enum1", ctypes.c_int),
                ("reserved_enum2", ctypes.c_int)]


class _OptionsLzma(ctypes.Structure):
    _fields_ = [("dict_size", ctypes.c_uint32), ("preset_dict", ctypes.c_void_p),
                ("preset_dict_size", ctypes.c_uint32), ("lc", ctypes.c_uint32), ("lp", ctypes.c_uint32),
                ("pb", ctypes.c_uint32), ("mode", ctypes.c_int), ("nice_len", ctypes.c_uint32),
                ("mf", ctypes.c_int), ("depth", ctypes.c_uint32), ("reserved_int", ctypes.c_uint32 * 4),
                ("reserved_enum", ctypes.c_int * 4), ("reserved_ptr", ctypes.c_void_p * 2),
                ("_pad", ctypes.c_uint8 * 64)]  # room for older/newer layouts' reserved fields


class _Filter(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("options", ctypes.c_void_p)]


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("lzma")
    for candidate in ([name] if name else []) + ["liblzma.so.5"]:
        try:
            lib = ctypes.CDLL(candidate)
        except OSError:
            continue
        try:
            lib.lzma_lzma_preset.argtypes = [ctypes.POINTER(_OptionsLzma), ctypes.c_uint32]
            lib.lzma_lzma_preset.restype = ctypes.c_ubyte
            for fn in (lib.lzma_raw_encoder, lib.lzma_raw_decoder):
                fn.argtypes = [ctypes.POINTER(_Stream), ctypes.POINTER(_Filter)]
                fn.restype = ctypes.c_int
            lib.lzma_code.argtypes = [ctypes.POINTER(_Stream), ctypes.c_int]
            lib.lzma_code.restype = ctypes.c_int
            lib.lzma_end.argtypes = [ctypes.POINTER(_Stream)]
            lib.lzma_end.restype = None
            lib.lzma_version_number.restype = ctypes.c_uint32
            for fn in (lib.lzma_raw_encoder_memusage, lib.lzma_raw_decoder_memusage):
                fn.argtypes = [ctypes.POINTER(_Filter)]
                fn.restype = ctypes.c_uint64
        except AttributeError:
            continue
        return lib
    return None


_LIB = _load()


class LzmaError(Exception):
    """liblzma refused the input or the options (the message says which)."""


def available() -> bool:
    return _LIB is not None


def exact_size_available() -> bool:
    """Whether liblzma writes LZMA1 without an end marker (``LZMA_FILTER_LZMA1EXT``, >= 5.4.0)."""
    return _LIB is not None and _LIB.lzma_version_number() >= 50040002


def _lib() -> ctypes.CDLL:
    if _LIB is None:
        raise LzmaError("liblzma (liblzma.so.5) is not available")
    return _LIB


def _address(buffer: ctypes.c_char_p | ctypes.Array[ctypes.c_char] | None) -> int | None:
    """The address of a ctypes buffer, as a plain int.

    Never ``ctypes.cast`` a buffer: the cast puts its source into a reference cycle (source
    and result share one ``_objects`` dict holding the source), so every 1 MiB output buffer,
    and through the options structure every dictionary (the whole old file), lived until the
    cyclic garbage collector ran: +11 MiB per HDiffPatch build, +1-5 MiB per lzma-from build.
    The caller keeps ``buffer`` alive while liblzma uses the address."""
    if buffer is None:
        return None
    if isinstance(buffer, ctypes.c_char_p):  # a bytes object's own buffer
        return ctypes.c_void_p.from_buffer(buffer).value
    return ctypes.addressof(buffer)


def _filters(options: _OptionsLzma, filter_id: int = _FILTER_LZMA1) -> ctypes.Array[_Filter]:
    """The filter chain pointing at ``options`` (which the caller keeps alive)."""
    chain = (_Filter * 2)()
    chain[0].id, chain[0].options = filter_id, ctypes.addressof(options)
    chain[1].id, chain[1].options = _VLI_UNKNOWN, None
    return chain


def _options(dictionary: ctypes.c_char_p | None, dict_len: int, dict_size: int,
             lc: int, lp: int, pb: int, preset: int) -> _OptionsLzma:
    options = _OptionsLzma()
    if _lib().lzma_lzma_preset(ctypes.byref(options), preset):
        raise LzmaError(f"liblzma has no preset {preset:#x}")
    options.dict_size, options.lc, options.lp, options.pb = dict_size, lc, lp, pb
    if dictionary is not None and dict_len:
        options.preset_dict = _address(dictionary)  # an int: the structure keeps no reference
        options.preset_dict_size = dict_len
    return options


def _ret(code: int) -> None:
    if code not in (_OK, _STREAM_END):
        raise LzmaError(f"liblzma: {_ERRORS.get(code, f'error {code}')}")


def encoder_memusage(dict_size: int, preset: int = 9) -> int:
    """What liblzma's encoder allocates for this dictionary size (bytes)."""
    options = _options(None, 0, dict_size, 3, 0, 2, preset)
    return int(_lib().lzma_raw_encoder_memusage(_filters(options)))


def compress(dictionary: bytes, data: bytes, write: Callable[[bytes], object], *, dict_size: int,
             lc: int, lp: int, pb: int, preset: int = 9, extreme: bool = False, end_mark: bool = True,
             start: int = 0, length: int | None = None) -> None:
    """Raw LZMA1 of ``data[start:start + length]`` after ``dictionary``, written through ``write``
    (the range is read in place, not copied).

    ``end_mark=False``: no end-of-payload marker (the decoder must be told the size), as
    LZMA SDK encoders write it for a known size (``LZMA_FILTER_LZMA1EXT``, liblzma >= 5.4).
    """
    if length is None:
        length = len(data) - start
    if start < 0 or length < 0 or start + length > len(data):
        raise ValueError("start/length outside the data")
    lib = _lib()
    # liblzma only reads the dictionary and the input: point it at the bytes objects' own
    # buffers (c_char_p keeps a reference) instead of copying them
    dict_buf = ctypes.c_char_p(dictionary) if dictionary else None
    options = _options(dict_buf, len(dictionary), dict_size, lc, lp, pb,
                       preset | (_PRESET_EXTREME if extreme else 0))
    filter_id = _FILTER_LZMA1
    if not end_mark:
        filter_id = _FILTER_LZMA1EXT
        options.reserved_int[0] = 0                      # ext_flags: no end marker allowed
        options.reserved_int[1] = length & 0xFFFFFFFF  # ext_size_low
        options.reserved_int[2] = length >> 32         # ext_size_high
    stream = _Stream()
    _ret(lib.lzma_raw_encoder(ctypes.byref(stream), _filters(options, filter_id)))
    # the encoder has copied the dictionary into its own buffer: a caller that passed its only
    # reference (lzma_from: the old file) gets it freed here, not after the encoding
    del dict_buf, dictionary
    src = ctypes.c_char_p(data) if length else None
    out = ctypes.create_string_buffer(CHUNK)
    try:
        base = _address(src)
        stream.next_in, stream.avail_in = (base + start if base is not None else None), length
        out_at = ctypes.addressof(out)
        while True:
            stream.next_out, stream.avail_out = out_at, CHUNK
            code = lib.lzma_code(ctypes.byref(stream), _FINISH)
            _ret(code)
            if CHUNK - stream.avail_out:
                write(out.raw[:CHUNK - stream.avail_out])
            if code == _STREAM_END:
                return
    finally:
        lib.lzma_end(ctypes.byref(stream))


def decompress(dictionary: bytes, chunks: Iterator[bytes], *, dict_size: int, lc: int, lp: int, pb: int,
               max_output: int) -> Iterator[bytes]:
    """Decode raw LZMA1 (end marker required) after ``dictionary``; yields output pieces.

    Never produces more than ``max_output`` bytes: a stream that would is refused
    (:class:`LzmaError`) without decoding further.  The input must end exactly at the end
    marker: data after it, or input that ends before it, is refused too.
    """
    lib = _lib()
    dict_buf = ctypes.c_char_p(dictionary) if dictionary else None
    options = _options(dict_buf, len(dictionary), dict_size, lc, lp, pb, 0)
    stream = _Stream()
    _ret(lib.lzma_raw_decoder(ctypes.byref(stream), _filters(options)))
    del dict_buf  # the decoder has copied it into its own dictionary
    out = ctypes.create_string_buffer(CHUNK)
    produced = 0
    try:
        pending = b""
        ended = False
        feeding = iter(chunks)
        while not ended:
            if not pending:
                pending = next(feeding, b"")
                if not pending:
                    raise LzmaError("LZMA stream is truncated (no end marker)")
            src = ctypes.c_char_p(pending)
            stream.next_in, stream.avail_in = _address(src), len(pending)
            while True:
                room = min(CHUNK, max_output - produced + 1)
                stream.next_out, stream.avail_out = ctypes.addressof(out), room
                code = lib.lzma_code(ctypes.byref(stream), _RUN)
                _ret(code)
                got = room - stream.avail_out
                produced += got
                if produced > max_output:
                    raise LzmaError(f"LZMA stream decodes to more than {max_output} bytes")
                if got:
                    yield out.raw[:got]
                if code == _STREAM_END:
                    ended = True
                    break
                if stream.avail_in == 0 and got < room:
                    break
            pending = pending[len(pending) - stream.avail_in:] if stream.avail_in else b""
        if pending or next(feeding, b""):
            raise LzmaError("data after the end of the LZMA stream")
    finally:
        lib.lzma_end(ctypes.byref(stream))
