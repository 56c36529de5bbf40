"""The fault-injection seam of the client's update, for tests.

``CAS_CLIENT_CRASH_AT=<name>`` makes the process SIGKILL itself when the update
reaches the point of that name (``after_journal``, ``after_fetch``, ``mid_stage``,
``after_manifest_cached``, ``after_stage_rename``, ``after_staged_journal``,
``after_previous_link``, ``after_current_swap``, ``before_health``, ``after_health``,
``mid_rollback``, ``after_rollback``; in ``cas-client rollback``: ``rollback_health``,
after ``current`` is swapped and before the health check); ``tests/test_client_crash.py``
kills the client at each of them and checks that the next run recovers.
"""
from __future__ import annotations

import os
import signal

CRASH_ENV = "CAS_CLIENT_CRASH_AT"


def crash_point(name: str) -> None:
    """SIGKILL this process here when ``CAS_CLIENT_CRASH_AT`` names this point."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
