"""Child processes die with their parent: the one place deltacas arranges it.

A build worker (``python -m deltagen.budget``) or the server's delta worker
(``cas deltas worker``) that outlives its parent runs on unsupervised: no deadline,
nobody to collect its output, its temp directory never removed.  A child calls
``die_with_parent()`` first thing: on Linux the kernel then sends it SIGKILL when
the parent exits (``prctl(PR_SET_PDEATHSIG)``); where that is not available, a
daemon thread polls ``getppid()`` once a second and kills the process when the
parent is gone.  Either way a parent that died before the call is noticed at once.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PARENT_ENV = "DELTACAS_PARENT_PID"   # how a parent names itself to a child it starts
_PR_SET_PDEATHSIG = 1


def _prctl_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent() -> None:
    """Make this process die (SIGKILL) when the parent named by ``PARENT_ENV`` exits.

    Does nothing when no parent is named (the process was started by hand)."""
    named = os.environ.get(PARENT_ENV, "")
    if not named.isdecimal():
        return
    parent = int(named)
    armed = _prctl_death_signal()
    if os.getppid() != parent:  # the parent is already gone (or we were re-parented)
        os.kill(os.getpid(), signal.SIGKILL)
    if not armed:
        threading.Thread(target=_watch, args=(parent,), daemon=True, name="die-with-parent").start()


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for a child that should die with this process."""
    env = dict(os.environ if base is None else base)
    env[PARENT_ENV] = str(os.getpid())
    return env
