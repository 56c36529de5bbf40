"""Writing outputs so that nothing is visible before it is complete.

``atomic_output`` writes to a temp name in the target's directory, fsyncs, then
``os.replace``s; on any exception the temp file is removed and no output is left.
``HashingSink`` counts and hashes what goes through it and refuses to pass a size.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .digests import StreamHasher
from .errors import SizeExceeded

StrPath = str | os.PathLike[str]


def fsync_dir(directory: StrPath) -> None:
    """Make a directory's entries durable (after a create, rename or unlink in it).

    The one place deltacas fsyncs a directory: the server's store, the client's
    install root and deltagen's outputs all call it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Best effort, for outputs that may sit on a filesystem without directory fsync."""
    try:
        fsync_dir(directory)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_output(path: StrPath, mode: int | None = None, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a file to write; it appears at ``path`` only if the block succeeds.

    ``mode``: the permission bits of the result (default: 0600, as ``mkstemp`` makes it).
    ``durable=False`` skips the file's and the directory's fsync: for a caller that makes
    a whole tree durable at once afterwards (the client's staging, ``sync_filesystem``)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(target.parent)


def sync_filesystem(path: StrPath) -> bool:
    """Flush everything written to the filesystem holding ``path`` (Linux ``syncfs``: one
    call instead of an fsync per file; it reports writeback errors since Linux 5.8).
    Returns False where ``syncfs`` is unavailable: the caller then fsyncs file by file."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}", os.fspath(path))
    finally:
        os.close(fd)
    return True


def write_atomic(path: StrPath, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably: the one atomic writer of small files
    (client state, mirror documents, the server's root file, fsck records, clocks)."""
    with atomic_output(path, mode) as fh:
        fh.write(data)


class HashingSink:
    """A write-only stream that hashes (BLAKE3), counts, and caps what it is given."""

    def __init__(self, limit: int, fh: BinaryIO | None = None) -> None:
        self._hasher = StreamHasher()
        self._fh = fh
        self.limit = limit

    @property
    def size(self) -> int:
        return self._hasher.size

    @property
    def blake3(self) -> str:
        return self._hasher.blake3

    def write(self, data: bytes | memoryview) -> int:
        if self._hasher.size + len(data) > self.limit:
            raise SizeExceeded(f"output passes {self.limit} bytes")
        self._hasher.update(data)
        if self._fh is not None:
            self._fh.write(data)
        return len(data)


def stdout_closed(exc: BaseException) -> bool:
    """True when ``exc`` is a write to a standard output whose reader went away (``cmd | head``);
    standard output is then pointed at /dev/null so that the exit flush is quiet too.

    The command-line tools (``cas``, ``cas-client``) end quietly on it instead of printing
    ``[Errno 32] Broken pipe`` as an error; a broken pipe elsewhere (a socket) is not this."""
    import errno
    import select
    import sys
    if not isinstance(exc, OSError) or exc.errno != errno.EPIPE:
        return False
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        closed = any(event & select.POLLERR for _, event in poller.poll(0))
    except (OSError, ValueError):
        return False
    if closed:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return closed
