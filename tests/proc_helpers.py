"""Helpers the fault tests share: processes seen through /proc, bounded waits, a small full disk."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate: Callable[[], object], seconds: float = 30.0, step: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``seconds`` pass (a safety net, not a timing)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``mnt`` (root only, as the suite runs in CI)."""
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    assert done.returncode == 0, (f"cannot mount a tmpfs ({done.stderr.strip()}): the disk-full test needs "
                                  "root, and the suite runs as root, as CI does")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave: int) -> Path:
    """Fill the file system at ``mnt`` until ``leave`` bytes are free; returns the filler."""
    filler = mnt / "filler"
    free = shutil.disk_usage(mnt).free
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler
