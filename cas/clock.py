"""Time as an object: every rollout, report and webhook decision asks a clock.

``SystemClock`` is the real one.  ``FileClock`` reads the time (seconds since
the epoch, a decimal number) from a file at each call, so that a test can move
a running server's time forward by rewriting the file; while the file is
missing or unreadable it answers the real time.  ``clock_from_env`` picks the
file clock when ``CAS_FAKE_CLOCK_FILE`` names a file: a test hook, never set in
production (it only changes *when* rollout steps happen, not who may do them).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Mapping, Protocol

from deltagen.output import write_atomic

FAKE_CLOCK_ENV = "CAS_FAKE_CLOCK_FILE"


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""


class SystemClock:
    def now(self) -> float:
        return time.time()


class FileClock:
    """The time written in a file (tests move it forward); the real time without one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def now(self) -> float:
        try:
            return float(self.path.read_text().strip())
        except (OSError, ValueError):
            return time.time()

    def set(self, moment: float) -> None:
        write_atomic(self.path, repr(float(moment)).encode())

    def advance(self, seconds: float) -> float:
        moment = self.now() + seconds
        self.set(moment)
        return moment


def clock_from_env(env: Mapping[str, str] | None = None) -> Clock:
    env = os.environ if env is None else env
    path = env.get(FAKE_CLOCK_ENV)
    return FileClock(path) if path else SystemClock()
