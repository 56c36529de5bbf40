"""Opt-in memory diagnostics for a long-running ``cas serve`` (what grows, and where).

Off unless asked for.  ``CAS_MEMTRACE_DIR=DIR`` installs a ``SIGUSR2`` handler in ``cas serve``
(single process); ``CAS_TRACEMALLOC=N`` (N frames per allocation, 1-50) also starts
:mod:`tracemalloc` before the app is built.  Each ``SIGUSR2`` writes into DIR (default: the
current directory):

- ``snapshot-NNN.json``: RSS, the number of malloc arenas, the bytes SQLite holds (in
  malloc's "in use"), glibc's ``mallinfo2`` figures over all arenas (``arena`` +
  ``hblkhd``: bytes malloc holds from the kernel; ``uordblks``: in use; ``fordblks``: free
  but kept), and with tracing the bytes tracemalloc traces, so growth of the live heap can be
  told from memory glibc keeps after it was freed,
- ``snapshot-NNN.pickle`` (with tracing): the snapshot, for ``tracemalloc.Snapshot.load`` and
  ``diff_text``.

With ``CAS_MALLOC_TRIM=1`` each dump also calls glibc's ``malloc_trim(0)`` after the figures
are taken and records RSS again (``rss_after_trim_kib``): what trimming gives back is memory
glibc kept, not memory Python still uses.  Nothing here runs unless the variable is set.
``benchmarks/soak.py --tracemalloc`` drives it.  Diagnostics only: the dump runs in the
event loop's thread and takes a second or more with a large trace.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import signal
import tempfile
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any, Mapping

from ..errors import Invalid

log = logging.getLogger("cas.memtrace")


_MALLINFO2 = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
              "fordblks", "keepcost")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2]


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def mallinfo() -> dict[str, int] | None:
    """glibc's arena figures (all arenas) in bytes, or None off glibc / before 2.33."""
    libc = _libc()
    fn = getattr(libc, "mallinfo2", None) if libc is not None else None
    if fn is None:
        return None
    fn.restype = _Mallinfo2
    info = fn()
    return {name: int(getattr(info, name)) for name in _MALLINFO2}


M_ARENA_MAX = -8  # glibc's mallopt parameter number


def set_arena_max(arenas: int) -> bool:
    """Cap glibc's malloc arenas (``mallopt(M_ARENA_MAX)``); what ``MALLOC_ARENA_MAX`` does,
    set from the config before the server starts its threads.  False off glibc."""
    libc = _libc()
    fn = getattr(libc, "mallopt", None) if libc is not None else None
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(fn(M_ARENA_MAX, arenas))


def arena_count() -> int | None:
    """How many malloc arenas this process has (the ``<heap>`` elements of ``malloc_info``)."""
    libc = _libc()
    info = getattr(libc, "malloc_info", None) if libc is not None else None
    if info is None:
        return None
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    with tempfile.NamedTemporaryFile(prefix="cas-malloc-info-") as tmp:
        fh = libc.fopen(tmp.name.encode(), b"w")
        if not fh:
            return None
        try:
            info(0, fh)
        finally:
            libc.fclose(fh)
        return Path(tmp.name).read_text().count("<heap nr=")


def sqlite_memory() -> int | None:
    """Bytes SQLite holds in this process (page caches of every connection, schema, statements):
    ``sqlite3_memory_used`` of the library the ``sqlite3`` module uses; None where it is not found."""
    import _sqlite3
    try:
        lib = ctypes.CDLL(_sqlite3.__file__)  # resolves through to the linked libsqlite3
        fn = lib.sqlite3_memory_used
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int64
    return int(fn())


def malloc_trim() -> bool:
    libc = _libc()
    fn = getattr(libc, "malloc_trim", None) if libc is not None else None
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_size_t]
    return bool(fn(0))


def rss_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class MemTrace:
    def __init__(self, directory: Path, trim: bool, frames: int) -> None:
        self.directory = directory
        self.trim = trim
        self.frames = frames
        self.count = 0

    def dump(self) -> Path:
        """Write one dump (figures, and the snapshot when tracing); returns the JSON's path.

        The figures are taken (and the trim done) before a snapshot is built, and no snapshot
        stays in memory between dumps (they are compared offline, ``diff_text``), so a dump
        does not inflate the RSS it reports; building a snapshot does leave freed memory
        behind in glibc's arenas, so the RSS of a traced run is not the figure to quote."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.count += 1
        stem = self.directory / f"snapshot-{self.count:03d}"
        figures: dict[str, Any] = {"n": self.count, "rss_kib": rss_kib(), "mallinfo2": mallinfo(),
                                   "arenas": arena_count(), "sqlite_bytes": sqlite_memory()}
        if self.frames:
            figures["traced_bytes"], figures["traced_peak_bytes"] = tracemalloc.get_traced_memory()
        if self.trim:
            figures["malloc_trim_released"] = malloc_trim()
            figures["rss_after_trim_kib"] = rss_kib()
            figures["mallinfo2_after_trim"] = mallinfo()
        if self.frames:
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)])
            snapshot.dump(str(stem) + ".pickle")
            del snapshot
        Path(str(stem) + ".json").write_text(json.dumps(figures, indent=1) + "\n")
        return Path(str(stem) + ".json")


def diff_text(old: tracemalloc.Snapshot, new: tracemalloc.Snapshot, top: int = 40) -> str:
    """The allocation sites (file:line, then whole tracebacks) that grew most from old to new."""
    lines = ["# by line"]
    for stat in new.compare_to(old, "lineno")[:top]:
        lines.append(str(stat))
    lines.append("\n# by traceback (largest growth)")
    for stat in new.compare_to(old, "traceback")[:top // 4]:
        lines.append(f"{stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks "
                     f"(now {stat.size / 1024:.1f} KiB)")
        lines.extend("    " + line for line in stat.traceback.format(limit=12))
    return "\n".join(lines) + "\n"


def install_from_env(environ: Mapping[str, str] | None = None) -> MemTrace | None:
    """Install the SIGUSR2 dump when ``CAS_MEMTRACE_DIR`` or ``CAS_TRACEMALLOC`` asks for it
    (and start tracing for the latter); None, and nothing changed, otherwise.  Main thread only."""
    env = os.environ if environ is None else environ
    raw = env.get("CAS_TRACEMALLOC", "").strip() or "0"
    try:
        frames = int(raw)
    except ValueError:
        frames = -1
    if not 0 <= frames <= 50:
        raise Invalid(f"CAS_TRACEMALLOC must be a number of frames (0-50), not {raw!r}", code="bad_environment")
    directory = env.get("CAS_MEMTRACE_DIR", "").strip()
    if not frames and not directory:
        return None
    trace = MemTrace(Path(directory or "."), env.get("CAS_MALLOC_TRIM") == "1", frames)
    if frames:
        tracemalloc.start(frames)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        try:
            log.warning("memtrace: wrote %s", trace.dump())
        except Exception:  # a diagnostic must never take the server down
            log.exception("memtrace: dump failed")

    signal.signal(signal.SIGUSR2, on_signal)
    return trace
