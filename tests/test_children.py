"""Issue 14, item 2: child processes die with their parent (deltagen/children.py).

A real parent process is started and killed with SIGKILL; its child must be gone soon after:
a plain child that called ``die_with_parent``, and a real delta build worker
(``python -m deltagen.budget``) in the middle of a long build.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from proc_helpers import process_alive, wait_until

ROOT = Path(__file__).resolve().parent.parent


def _wait_gone(pid: int, seconds: float = 15.0) -> bool:
    return wait_until(lambda: not process_alive(pid), seconds)


def _find(marker: str) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdecimal():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and b"-m\x00deltagen.budget\x00" in cmdline:
            return int(entry)
    return None


def _parent(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_child_dies_when_its_parent_is_killed() -> None:
    parent = _parent("""
        import subprocess, sys, time
        from deltagen.children import child_env
        child = subprocess.Popen([sys.executable, "-c",
            "from deltagen.children import die_with_parent; import time; die_with_parent(); time.sleep(120)"],
            env=child_env(), start_new_session=True)
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    time.sleep(1.0)                       # the child has armed its death signal
    assert process_alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    gone = _wait_gone(child)
    if not gone:
        os.kill(child, signal.SIGKILL)
    assert gone, "the child outlived its killed parent"


def test_a_child_started_by_hand_is_not_affected() -> None:
    proc = subprocess.run([sys.executable, "-c", "from deltagen.children import die_with_parent; "
                           "die_with_parent(); print('ok')"], cwd=ROOT, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "DELTACAS_PARENT_PID"})
    assert proc.stdout.strip() == "ok"


def test_a_build_worker_dies_with_the_killed_delta_worker(tmp_path: Path) -> None:
    """The orphaned `deltagen.budget` build of issue 14: kill -9 of the process that started
    it (the delta worker) no longer leaves the build running."""
    import random
    rng = random.Random(5)
    old = rng.randbytes(24 << 20)
    new = bytearray(old)
    for _ in range(2000):
        at = rng.randrange(len(new) - 64)
        new[at:at + 32] = rng.randbytes(32)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(bytes(new))
    out = tmp_path / "unique-marker-out.patch"
    parent = _parent(f"""
        from deltagen.budget import build_within
        from deltagen.limits import DeltaLimits
        build_within("bsdiff4", {str(tmp_path / 'old')!r}, {str(tmp_path / 'new')!r}, {str(out)!r},
                     DeltaLimits(), 600)
    """)
    worker = None
    end = time.monotonic() + 20
    while worker is None and time.monotonic() < end:
        worker = _find("unique-marker-out.patch")
        time.sleep(0.05)
    assert worker is not None, "the build worker did not start"
    time.sleep(0.5)
    assert process_alive(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    gone = _wait_gone(worker)
    if not gone:
        os.kill(worker, signal.SIGKILL)
    assert gone, "the build worker outlived the killed delta worker"
    assert not out.exists()
