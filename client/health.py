"""Health checks and the rollback chain.

The health command runs in ``ROOT/current`` with ``CAS_VERSION`` and ``CAS_ROOT`` set and
a timeout, in a process group of its own: on timeout the whole group is killed, so a
hung check leaves none of its processes behind (not only the shell).  After a failed check the chain tries ``previous`` (the version current before
the update), then ``factory``: each is re-hashed against its cached manifest first (a
damaged one is skipped), made current and checked.  When none passes, ``current`` goes
back to the version that was current before and ``NeedsIntervention`` is raised.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from .errors import NeedsIntervention
from .faults import crash_point
from .install import tree_problems
from .installroot import InstallRoot
from .log import Log


@dataclass(frozen=True)
class Health:
    """The outcome of one health check."""

    ok: bool
    detail: str


def check_health(layout: InstallRoot, version: str, command: str | None, timeout_s: float) -> Health:
    """Run ``command`` in ``current`` (which points at ``version``); no command counts as healthy."""
    if not command:
        return Health(True, "no health check configured")
    proc = subprocess.Popen(command, shell=True, cwd=layout.root / "current", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "CAS_VERSION": version, "CAS_ROOT": str(layout.root)})
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return Health(False, f"health check timed out after {timeout_s}s")
    except BaseException:
        kill_group(proc)
        raise
    output = (stdout + stderr).strip()[-500:]
    return Health(proc.returncode == 0, f"exit {proc.returncode}: {output}")


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process group of ``proc`` (its own session) and reap ``proc``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()   # a process that left the group may still hold the pipes
    proc.wait()


def is_intact(layout: InstallRoot, version: str, log: Log) -> bool:
    """True when ``versions/{version}`` matches its cached manifest (every file re-hashed)."""
    manifest = layout.cached_manifest(version)
    if manifest is None or not layout.version_dir(version).is_dir():
        return False
    problems = tree_problems(layout.version_dir(version), manifest["signed"]["files"])
    if problems:
        log(f"version {version} is damaged: {problems[0]} ({len(problems)} problems)")
    return not problems


def rollback_chain(layout: InstallRoot, failed: str, last_good: str | None, check: Callable[[str], Health],
                   steps: list[str], log: Log) -> str:
    """Roll back after ``failed`` failed its health check; returns the version now current.

    Each step taken is appended to ``steps``; ``check(version)`` runs the health check."""
    candidates: list[str] = []
    for version in (last_good, layout.link("factory")):
        if version and version != failed and version not in candidates:
            candidates.append(version)
    for version in candidates:
        if not is_intact(layout, version, log):
            steps.append(f"skipped {version}: damaged")
            continue
        layout.set_link("current", version)
        crash_point("mid_rollback")
        health = check(version)
        steps.append(f"rolled back to {version}: health {'ok' if health.ok else 'failed'} ({health.detail})")
        log(steps[-1])
        if health.ok:
            return version
    if last_good and layout.version_dir(last_good).is_dir():
        layout.set_link("current", last_good)
    raise NeedsIntervention(
        f"{failed} failed its health check and no rollback target passed; current is "
        f"{layout.link('current')}: manual intervention needed", detail=steps)
