"""kill -9 the client at every step of an update, then run it again.

Deterministic points come from the ``CAS_CLIENT_CRASH_AT`` fault-injection seam in
``client/faults.py`` (the process SIGKILLs itself there); a few more kills land at
wall-clock delays.  After every kill, ``current`` (and ``previous``/``factory``) must
resolve to a complete version tree that matches its cached manifest; the re-run must
finish the update (or its health rollback) and leave nothing behind.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import Server, start_server, wait_for_builds

from client.install import tree_problems
from client.updater import CRASH_ENV
from fixtures import write_release

REPO = Path(__file__).resolve().parent.parent
FAST = "delta_poll_seconds = 0.2\n"
BASE, TARGET, BAD = "1.0.0", "1.2.0", "1.3.0"

GOOD_POINTS = ["after_journal", "after_fetch", "mid_stage", "after_manifest_cached", "after_stage_rename",
               "after_staged_journal", "after_previous_link", "after_current_swap", "before_health",
               "after_health"]
BAD_POINTS = ["before_health", "mid_rollback", "after_rollback"]


def cli(*args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, release_trees: list[Path]) -> Iterator[tuple[Server, Path]]:
    """A server with 1.0.0, 1.2.0 and a failing 1.3.0; a client root with 1.0.0 installed."""
    base = tmp_path_factory.mktemp("client-crash")
    bad = base / "bad"
    write_release(bad, 3, health_ok=False)
    server = start_server(base / "store", config=FAST)
    key = str(server.store / "keys" / "release.pem")
    for version, tree in ((BASE, release_trees[0]), (TARGET, release_trees[2]), (BAD, bad)):
        server.cas("publish", str(tree), "--product", "app", "--version", version, "--key", key,
                   "--status", "released")
    with server.client() as http:
        wait_for_builds(http)
    server.cas("channel", "set", "app", "stable", TARGET)
    prepared = base / "prepared"
    proc = cli("init", prepared, "--server", server.url, "--product", "app", "--channel", "stable",
               "--root", server.store / "root.json", "--health-cmd", "bin/health")
    assert proc.returncode == 0, proc.stderr
    proc = cli("update", prepared, "--to", BASE)
    assert proc.returncode == 0, proc.stderr
    yield server, prepared
    server.stop()


def fresh_root(prepared: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", str(prepared), str(dest)], check=True)   # keeps hardlinks and modes
    return dest


def link(root: Path, name: str) -> str | None:
    try:
        target = os.readlink(root / name)
    except FileNotFoundError:
        return None
    assert target.startswith("versions/"), f"{name} -> {target}"
    return target.split("/", 1)[1]


def assert_sound(root: Path, when: str) -> None:
    """current (and the rollback links) resolve to complete trees matching their cached manifests."""
    assert link(root, "current") is not None, f"{when}: no current"
    for name in ("current", "previous", "factory"):
        version = link(root, name)
        if version is None:
            continue
        tree = root / "versions" / version
        assert tree.is_dir(), f"{when}: {name} -> missing {tree}"
        cached = root / ".cas" / "manifests" / f"{version}.json"
        assert cached.exists(), f"{when}: {name} -> {version} without a cached manifest"
        files = json.loads(cached.read_text())["signed"]["files"]
        assert tree_problems(tree, files) == [], f"{when}: {name} -> {version} is not intact"


def assert_finished(root: Path, current: str) -> None:
    assert link(root, "current") == current
    assert_sound(root, "after the re-run")
    assert not (root / ".cas" / "journal.json").exists()
    assert list((root / ".cas" / "staging").iterdir()) == []
    assert cli("verify", root).returncode == 0


def rerun(root: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    proc = cli("update", root, "--json", *extra)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize("point", GOOD_POINTS)
def test_kill_at_point_then_resume(world: tuple[Server, Path], tmp_path: Path, point: str) -> None:
    _, prepared = world
    root = fresh_root(prepared, tmp_path / "root")
    proc = cli("update", root, env={CRASH_ENV: point})
    assert proc.returncode == -signal.SIGKILL, f"{point} was never reached: {proc.returncode} {proc.stderr}"
    assert_sound(root, f"killed at {point}")
    if point in ("after_journal", "after_fetch", "mid_stage", "after_manifest_cached"):
        assert link(root, "current") == BASE     # nothing outside .cas/ before the tree is published
    code, data = rerun(root)
    assert code == 0, data
    assert data["outcome"] == "updated" and data["current"] == TARGET
    assert_finished(root, TARGET)
    assert (link(root, "previous"), link(root, "factory")) == (BASE, BASE)


@pytest.mark.parametrize("point", BAD_POINTS)
def test_kill_during_failed_health_then_resume(world: tuple[Server, Path], tmp_path: Path, point: str) -> None:
    """Killed while a failing release is checked or rolled back: the re-run ends rolled back."""
    _, prepared = world
    root = fresh_root(prepared, tmp_path / "root")
    proc = cli("update", root, "--to", BAD, env={CRASH_ENV: point})
    assert proc.returncode == -signal.SIGKILL, f"{point} was never reached: {proc.returncode} {proc.stderr}"
    assert_sound(root, f"killed at {point}")
    code, data = rerun(root, "--to", BAD)
    assert code == 2, data
    assert data["outcome"] == "rolled_back" and data["current"] == BASE
    assert_finished(root, BASE)
    assert link(root, "factory") == BASE


def test_kill_during_first_install(world: tuple[Server, Path], tmp_path: Path) -> None:
    server, _ = world
    root = tmp_path / "root"
    proc = cli("init", root, "--server", server.url, "--product", "app", "--channel", "stable",
               "--root", server.store / "root.json", "--health-cmd", "bin/health")
    assert proc.returncode == 0
    for point in ("mid_stage", "after_current_swap"):
        proc = cli("update", root, env={CRASH_ENV: point})
        assert proc.returncode == -signal.SIGKILL
        if link(root, "current") is not None:
            assert_sound(root, f"first install killed at {point}")
    code, data = rerun(root)
    assert code == 0, data
    assert_finished(root, TARGET)
    assert link(root, "factory") == TARGET


# Wall-clock kills, timed from the moment the update writes its journal (after the
# preflight; the process start-up time varies too much to aim from the start).  The
# deterministic points above are the real coverage; these catch steps between them.
DELAYS = [0.0, 0.01, 0.03, 0.06, 0.1, 0.2]


def _kill_after_journal(root: Path, delay: float) -> bool:
    """Run an update, SIGKILL it ``delay`` s after its journal appears; True if it was killed."""
    journal = root / ".cas" / "journal.json"
    child = subprocess.Popen([sys.executable, "-m", "client.cli", "update", str(root)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not journal.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    killed = child.poll() is None
    if killed:
        child.send_signal(signal.SIGKILL)
    child.wait(30)
    return killed


def test_kill_at_random_moments(world: tuple[Server, Path], tmp_path: Path) -> None:
    _, prepared = world
    killed = 0
    for i, delay in enumerate(DELAYS):
        root = fresh_root(prepared, tmp_path / f"root{i}")
        killed += _kill_after_journal(root, delay)
        assert_sound(root, f"killed {delay}s after the journal")
        # A second kill while resuming (the journal is already there: from the start).
        again = subprocess.Popen([sys.executable, "-m", "client.cli", "update", str(root)], cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3 + delay)
        if again.poll() is None:
            again.send_signal(signal.SIGKILL)
        again.wait(30)
        assert_sound(root, f"killed twice ({delay}s)")
        code, data = rerun(root)
        assert code == 0, data
        assert data["current"] == TARGET
        assert_finished(root, TARGET)
    assert killed >= len(DELAYS) // 2, f"only {killed} of {len(DELAYS)} runs were still running when killed"


# A manual rollback killed during the health check of the version it rolls back to
# (issue 14, item 6): the re-run finishes it and ends on a healthy version.
ROLLBACK_KILLS = {
    "crash_point": ({CRASH_ENV: "rollback_health"}, ()),
    # The health command itself kills the client (kill -9 of its parent, mid-check).
    "health_kills_client": ({}, ("--health-cmd", "kill -9 $PPID; sleep 5")),
}


@pytest.mark.parametrize("how", sorted(ROLLBACK_KILLS))
def test_kill_during_rollback_health_then_resume(world: tuple[Server, Path], tmp_path: Path, how: str) -> None:
    _, prepared = world
    root = fresh_root(prepared, tmp_path / "root")
    # previous = the failing 1.3.0 (installed under a health check that passes), current = 1.2.0.
    for version, health in ((BAD, "true"), (TARGET, "bin/health")):
        proc = cli("update", root, "--to", version, "--health-cmd", health)
        assert proc.returncode == 0, proc.stderr
    assert (link(root, "current"), link(root, "previous")) == (TARGET, BAD)
    env, extra = ROLLBACK_KILLS[how]
    proc = cli("rollback", root, *extra, env=env)
    assert proc.returncode == -signal.SIGKILL, f"never killed: {proc.returncode} {proc.stderr}"
    assert link(root, "current") == BAD            # killed while the unhealthy one is checked
    assert_sound(root, f"rollback killed ({how})")
    proc = cli("rollback", root)
    assert proc.returncode == 5, (proc.returncode, proc.stderr)
    assert "1.3.0 failed its health check" in proc.stderr
    assert_finished(root, TARGET)                   # back on the healthy version it started from
    # A later update or rollback has nothing left to finish.
    code, data = rerun(root, "--to", TARGET)
    assert code == 0 and data["outcome"] == "up_to_date", data


def test_update_finishes_an_interrupted_rollback_first(world: tuple[Server, Path], tmp_path: Path) -> None:
    _, prepared = world
    root = fresh_root(prepared, tmp_path / "root")
    for version, health in ((BAD, "true"), (TARGET, "bin/health")):
        assert cli("update", root, "--to", version, "--health-cmd", health).returncode == 0
    proc = cli("rollback", root, env={CRASH_ENV: "rollback_health"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    code, data = rerun(root, "--to", TARGET)
    assert code == 0 and data["current"] == TARGET, data
    assert_finished(root, TARGET)
