"""zstd compression with ``ZSTD_CCtx_refPrefix``, exactly as ``zstd --patch-from`` does it.

python-zstandard has no refPrefix; loading the old file as a raw-content *dictionary*
instead makes zstd build a CDict whose tables cannot index a large old file and which
long-distance matching never sees (measured: a 100 MB pair gives a 59 MB "patch" that
way, 0.49 MB with the CLI).  So the compressor side calls the system libzstd
(``libzstd.so.1``, >= 1.4.5, the library the ``zstd`` CLI itself uses) through ctypes.
The frames are standard; decompression stays in python-zstandard.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from dataclasses import dataclass
from typing import BinaryIO, Protocol


class Readable(Protocol):
    """Anything with ``read(n) -> bytes`` (a file, or several files back to back)."""

    def read(self, n: int = -1, /) -> bytes: ...


CHUNK = 1 << 20

# zstd.h (stable API since 1.4.0)
_C_COMPRESSION_LEVEL = 100
_C_WINDOW_LOG = 101
_C_HASH_LOG = 102
_C_TARGET_LENGTH = 106
_C_ENABLE_LDM = 160
_C_CONTENT_SIZE_FLAG = 200
_C_CHECKSUM_FLAG = 201
_C_DICT_ID_FLAG = 202
_C_NB_WORKERS = 400
_E_CONTINUE = 0
_E_END = 2


class _CParams(ctypes.Structure):  # ZSTD_compressionParameters
    _fields_ = [("windowLog", ctypes.c_uint), ("chainLog", ctypes.c_uint), ("hashLog", ctypes.c_uint),
                ("searchLog", ctypes.c_uint), ("minMatch", ctypes.c_uint), ("targetLength", ctypes.c_uint),
                ("strategy", ctypes.c_int)]


class _InBuffer(ctypes.Structure):
    _fields_ = [("src", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


class _OutBuffer(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("zstd")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.ZSTD_createCCtx.restype = ctypes.c_void_p
        lib.ZSTD_freeCCtx.argtypes = [ctypes.c_void_p]
        lib.ZSTD_CCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.ZSTD_CCtx_setParameter.restype = ctypes.c_size_t
        lib.ZSTD_CCtx_setPledgedSrcSize.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong]
        lib.ZSTD_CCtx_setPledgedSrcSize.restype = ctypes.c_size_t
        lib.ZSTD_CCtx_refPrefix.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.ZSTD_CCtx_refPrefix.restype = ctypes.c_size_t
        lib.ZSTD_compressStream2.argtypes = [ctypes.c_void_p, ctypes.POINTER(_OutBuffer),
                                             ctypes.POINTER(_InBuffer), ctypes.c_int]
        lib.ZSTD_compressStream2.restype = ctypes.c_size_t
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        lib.ZSTD_isError.restype = ctypes.c_uint
        lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
        lib.ZSTD_getErrorName.restype = ctypes.c_char_p
        lib.ZSTD_versionNumber.restype = ctypes.c_uint
        lib.ZSTD_getCParams.argtypes = [ctypes.c_int, ctypes.c_ulonglong, ctypes.c_size_t]
        lib.ZSTD_getCParams.restype = _CParams
        if lib.ZSTD_versionNumber() < 10405:
            return None
        return lib
    except (OSError, AttributeError):
        return None


_LIB = _load()


def available() -> bool:
    return _LIB is not None


def _check(result: int) -> int:
    assert _LIB is not None
    if _LIB.ZSTD_isError(result):
        raise RuntimeError(f"libzstd: {_LIB.ZSTD_getErrorName(result).decode()}")
    return result


@dataclass(frozen=True)
class Tuning:
    """How the frame is searched.  The default is the zstd CLI's (``--patch-from``, one worker
    thread); :data:`SINGLE_THREADED` is the bundles' (docs/deltagen.md, "Builds side by side, and memory")."""

    workers: int = 1
    target_length: int | None = None   # ZSTD_c_targetLength; None: the level's
    hash_log_max: int | None = None    # ZSTD_c_hashLog at most this; None: the level's


#: No worker thread: libzstd's multi-threaded path turns the prefix into a dictionary with
#: match-finder tables of its own, then the worker builds its tables again: twice the
#: memory (react-dom's bundle, 8 MB over 8 MB of bases: 189 MiB above the process, 103
#: single-threaded).  Alone it loses a little (1,830 -> 1,855 B); the longest target length
#: (999: the optimal parser looks at every match up to that length before it settles) wins it
#: back (1,831 B; prettier 672 B, scikit-learn 40,153 -> 40,107, matplotlib 7,537 -> 7,449).
#: The hash table, the binary tree's entry points, at most 2^20 entries (level 19 has 2^22,
#: 16 MiB): the same bytes on every bundle measured, 12 MiB less.
SINGLE_THREADED = Tuning(workers=0, target_length=999, hash_log_max=20)


def compress_with_prefix(old_fd: int, old_size: int, src: Readable, src_size: int,
                         dst: BinaryIO, level: int, window_log: int, tuning: Tuning = Tuning()) -> None:
    """One frame of ``src`` with the old file (mapped from ``old_fd``) as prefix."""
    if _LIB is None:
        raise RuntimeError("libzstd is not available")
    lib = _LIB
    cctx = lib.ZSTD_createCCtx()
    if not cctx:
        raise MemoryError("ZSTD_createCCtx failed")
    # ACCESS_COPY gives a writable (copy-on-write, never written) mapping ctypes can address
    mapped = mmap.mmap(old_fd, old_size, access=mmap.ACCESS_COPY) if old_size else None
    prefix = ctypes.c_char.from_buffer(mapped) if mapped is not None else None
    out_buf = ctypes.create_string_buffer(CHUNK)
    try:
        for param, value in ((_C_COMPRESSION_LEVEL, level), (_C_WINDOW_LOG, window_log),
                             (_C_ENABLE_LDM, 1), (_C_CONTENT_SIZE_FLAG, 1),
                             (_C_CHECKSUM_FLAG, 1), (_C_DICT_ID_FLAG, 0)):
            _check(lib.ZSTD_CCtx_setParameter(cctx, param, value))
        # One worker thread, as the zstd CLI does by default (-T1): zstdmt runs the
        # long-distance matcher serially over prefix + input, which finds far more than
        # single-threaded mode at high levels (measured, 20 MB pair at -19: 104 KB vs
        # 134 KB; 100 MB pair: 0.49 MB vs 3.1 MB).  A libzstd built without threads
        # refuses the parameter: carry on single-threaded.
        lib.ZSTD_CCtx_setParameter(cctx, _C_NB_WORKERS, tuning.workers)
        if tuning.target_length is not None:
            _check(lib.ZSTD_CCtx_setParameter(cctx, _C_TARGET_LENGTH, tuning.target_length))
        if tuning.hash_log_max is not None:
            level_hash_log = lib.ZSTD_getCParams(level, src_size, old_size).hashLog
            if level_hash_log > tuning.hash_log_max:
                _check(lib.ZSTD_CCtx_setParameter(cctx, _C_HASH_LOG, tuning.hash_log_max))
        _check(lib.ZSTD_CCtx_setPledgedSrcSize(cctx, src_size))
        if prefix is not None:
            _check(lib.ZSTD_CCtx_refPrefix(cctx, ctypes.addressof(prefix), old_size))
        # addresses, not ctypes.cast: a cast puts its source into a reference cycle (the source
        # and the result share one _objects dict holding the source), so each 1 MiB buffer
        # lived until the cyclic GC ran: two threads of builds held 418 MiB of them
        out = _OutBuffer(ctypes.addressof(out_buf), CHUNK, 0)
        while True:
            data = src.read(CHUNK)
            mode = _E_CONTINUE if data else _E_END
            keep = ctypes.create_string_buffer(data, len(data)) if data else None
            inp = _InBuffer(ctypes.addressof(keep) if keep is not None else None,
                            len(data), 0)
            while True:
                out.pos = 0
                remaining = _check(lib.ZSTD_compressStream2(cctx, ctypes.byref(out),
                                                            ctypes.byref(inp), mode))
                if out.pos:
                    dst.write(out_buf.raw[:out.pos])
                if mode == _E_END:
                    if remaining == 0:
                        return
                elif inp.pos == inp.size:
                    break
    finally:
        lib.ZSTD_freeCCtx(cctx)
        del prefix
        if mapped is not None:
            mapped.close()
