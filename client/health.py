"""Health checks and the rollback chain.

The health command runs in ``ROOT/current`` with ``CAS_VERSION`` and ``CAS_ROOT`` set and
a timeout.  After a failed check the chain tries ``previous`` (the version current before
the update), then ``factory``: each is re-hashed against its cached manifest first (a
damaged one is skipped), made current and checked.  When none passes, ``current`` goes
back to the version that was current before and ``NeedsIntervention`` is raised.
"""
from __future__ import annotations

import os
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
    try:
        proc = subprocess.run(command, shell=True, cwd=layout.root / "current", capture_output=True,
                              text=True, timeout=timeout_s,
                              env={**os.environ, "CAS_VERSION": version, "CAS_ROOT": str(layout.root)})
    except subprocess.TimeoutExpired:
        return Health(False, f"health check timed out after {timeout_s}s")
    output = (proc.stdout + proc.stderr).strip()[-500:]
    return Health(proc.returncode == 0, f"exit {proc.returncode}: {output}")


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
