"""Run one build (a patch or a compressed form) in a worker process under a deadline.

The worker is a fresh ``python -m deltagen.budget`` in its own session that dies with
its parent (``deltagen.children``): when the deadline passes it is killed with SIGKILL,
so a slow suffix sort or a level-19 pass over a huge file never holds the caller past
its budget, and a killed caller leaves no build running.  The worker writes through
``atomic_output``; a killed worker can leave only a temp file, so callers give it a
private directory and remove that directory afterwards.

``memory_gate`` bounds what concurrent builds of one process may use together: each
build reserves an estimate of its peak (``build_memory``) before it starts and waits while
the reservations of the others would pass the budget (one build always runs, however
large).  The server's delta builder sets the budget from ``delta_memory_bytes``.

``cancel_builds`` kills every worker this process is waiting for: a caller that is
being stopped (the delta worker on SIGTERM) uses it so that its builds end now, with
a ``BuildCancelled``, and their ``finally`` blocks remove their temp directories.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import errors
from .children import child_env, die_with_parent
from .limits import Algorithm, DeltaLimits, MiB
from .output import StrPath
from .patches import compress_file, make_patch

Job = Algorithm | Literal["compressed"]
_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)

# The build workers this process is waiting for, and whether it is being stopped.
_running: set[subprocess.Popen[str]] = set()
_running_lock = threading.Lock()
_cancelled = threading.Event()


def builds_cancelled() -> bool:
    """Whether ``cancel_builds`` ran in this process (whatever a build returned since is suspect)."""
    return _cancelled.is_set()


def cancel_builds() -> int:
    """Kill every build worker of this process and refuse new ones; returns how many were killed."""
    _cancelled.set()
    with _running_lock:
        procs = list(_running)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(procs)


def build_memory(job: Job | Literal["bundle"], old_size: int, new_size: int) -> int:
    """A generous estimate of a build's peak memory (bytes), measured on this corpus's
    files (docs/deltagen.md, "Builds side by side, and memory"): suffix arrays for hdiffpatch/bsdiff4, window +
    level-19 match-finder tables for zstd."""
    if job == "hdiffpatch":
        return 6 * (old_size + new_size) + 200 * MiB
    if job == "bsdiff4":
        return 18 * old_size + 3 * new_size + 64 * MiB
    if job == "lzma-from":  # liblzma bt4 ~11.5 B per dictionary byte (old + new), inputs twice
        return 14 * (old_size + new_size) + 64 * MiB
    if job == "gzip-inner":  # an inner zstd/HDiffPatch build over the uncompressed contents:
        # assume up to 8x expansion (text), at most gzip_inner_max_bytes' default each
        inner = min(8 * (old_size + new_size), 128 * MiB)
        return 6 * inner + 320 * MiB
    if job in ("zstd", "bundle"):
        return 3 * (old_size + new_size) + 320 * MiB
    return 256 * MiB  # compressed: a streamed level-19 pass, window <= 8 MiB


#: glibc's mallopt(M_MMAP_THRESHOLD): allocations of this size and more are mmapped, and
#: given back to the system when freed
MMAP_THRESHOLD = 256 * 1024
_M_MMAP_THRESHOLD = -3


def return_freed_memory() -> bool:
    """Make this process give large freed blocks back to the system at once (glibc only;
    returns whether it could).

    glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB):
    from then on, blocks of that size come from the heap, and a freed one stays in the
    process for reuse, per thread arena.  A builder that runs level-19 compressors, LZMA
    encoders and 1 MiB read buffers on two threads kept what the largest of them had
    needed: react-dom's builder stood at 71 MiB after its per-file builds, 30 MiB with a
    fixed threshold (which also turns the adjustment off).  Called by the server's delta
    builder, by every build worker and by the benchmark (benchmarks/peers.py)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to set
        return False


class MemoryGate:
    """Reservations against one budget in bytes (0: no budget)."""

    def __init__(self, total: int = 0) -> None:
        self.total = total
        self.used = 0
        self._cond = threading.Condition()

    def set_total(self, total: int) -> None:
        with self._cond:
            self.total = total
            self._cond.notify_all()

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget; waits while others hold too much of it."""
        with self._cond:
            while self.total and self.used and self.used + nbytes > self.total:
                self._cond.wait()
            self.used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


#: the memory budget of this process's builds (set by the server's delta builder)
memory_gate = MemoryGate()


@dataclass(frozen=True)
class BuildStats:
    elapsed_s: float
    peak_rss_bytes: int


def _error_from_worker(stderr: str, returncode: int) -> errors.DeltaError:
    line = stderr.strip().splitlines()[-1] if stderr.strip() else f"worker exited {returncode}"
    name, _, message = line.partition(": ")
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.DeltaError):
        return cls(message)
    return errors.DeltaError(f"build worker failed: {line}")


def build_within(job: Job, old_path: StrPath | None, new_path: StrPath, out_path: StrPath,
                 limits: DeltaLimits, timeout_s: float) -> BuildStats:
    """Build ``out_path`` in a worker; BudgetExceeded if it is not done in ``timeout_s``."""
    if timeout_s <= 0:
        raise errors.BudgetExceeded("no time left in the budget")
    if _cancelled.is_set():
        raise errors.BuildCancelled("builds are being cancelled")
    spec = {"job": job, "old": os.fspath(old_path) if old_path is not None else None,
            "new": os.fspath(new_path), "out": os.fspath(out_path), "limits": limits.to_dict()}
    env = child_env()   # the worker dies with this process (deltagen.children)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "deltagen.budget", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    with _running_lock:
        _running.add(proc)
    if _cancelled.is_set():  # cancel_builds ran between the check above and the add
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise errors.BudgetExceeded(f"{job} build killed after {timeout_s:.1f} s") from None
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    finally:
        with _running_lock:
            _running.discard(proc)
    if _cancelled.is_set():
        raise errors.BuildCancelled(f"{job} build cancelled")
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise _error_from_worker(stderr, proc.returncode)
    report = json.loads(stdout.strip().splitlines()[-1])
    return BuildStats(elapsed, int(report["peak_rss_bytes"]))


def _run_job(job: Job, old_path: StrPath | None, new_path: StrPath, out_path: StrPath,
             limits: DeltaLimits) -> None:
    if job == "compressed":
        compress_file(new_path, out_path, limits.compress_level)
    else:
        assert old_path is not None
        make_patch(job, old_path, new_path, out_path, limits)


def build_before(job: Job, old_path: StrPath | None, new_path: StrPath, out_path: StrPath,
                 limits: DeltaLimits, deadline: float) -> BuildStats:
    """Build by ``deadline`` (a ``time.monotonic()`` value).

    Small inputs (old + new <= ``limits.inprocess_max_bytes``) are built in this process:
    they finish in well under a second, and a worker would cost more than the build.
    Everything else goes to a killable worker (:func:`build_within`).
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise errors.BudgetExceeded("no time left in the budget")
    total = os.path.getsize(new_path) + (os.path.getsize(old_path) if old_path is not None else 0)
    if total > limits.inprocess_max_bytes:
        return build_within(job, old_path, new_path, out_path, limits, remaining)
    started = time.monotonic()
    _run_job(job, old_path, new_path, out_path, limits)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return BuildStats(time.monotonic() - started, peak)


def own_peak_rss() -> int:
    """This process's peak resident memory since its exec (``VmHWM``), in bytes.

    Not ``ru_maxrss``: a process started by fork/vfork + exec from a large parent (a build
    worker from the server) inherits the parent's high-water mark in it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: the best there is


def _worker(argv: list[str]) -> int:
    die_with_parent()
    return_freed_memory()
    spec = json.loads(argv[0])
    limits = DeltaLimits.from_dict(spec["limits"])
    try:
        _run_job(spec["job"], spec["old"], spec["new"], spec["out"], limits)
    except errors.DeltaError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as exc:
        print(f"DeltaError: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    peak = own_peak_rss()
    print(json.dumps({"peak_rss_bytes": peak}))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
