"""The health check as a process: a check that hangs is killed with every process it started."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from client.health import check_health
from client.installroot import InstallRoot


def layout_with_current(tmp_path: Path) -> InstallRoot:
    root = tmp_path / "app"
    (root / "versions" / "1.0.0").mkdir(parents=True)
    os.symlink("versions/1.0.0", root / "current")
    return InstallRoot(root)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped does not count)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def test_timed_out_health_check_leaves_no_processes(tmp_path: Path) -> None:
    layout = layout_with_current(tmp_path)
    pids = tmp_path / "pids"
    command = f"echo $$ > {pids}; sleep 300 & echo $! >> {pids}; sleep 300"
    started = time.monotonic()
    try:
        health = check_health(layout, "1.0.0", command, 1.0)
        assert not health.ok and "timed out" in health.detail
        assert time.monotonic() - started < 10
        shell, child = (int(line) for line in pids.read_text().split())
        deadline = time.monotonic() + 5
        while (alive(child) or group_members(shell)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the background child of the health check survived its timeout"
        assert group_members(shell) == []
    finally:
        for pid in (int(line) for line in pids.read_text().split()) if pids.exists() else ():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_health_output_and_exit_status(tmp_path: Path) -> None:
    layout = layout_with_current(tmp_path)
    ok = check_health(layout, "1.0.0", 'echo "fine $CAS_VERSION"', 5.0)
    assert ok.ok and "fine 1.0.0" in ok.detail
    bad = check_health(layout, "1.0.0", "echo broken >&2; exit 3", 5.0)
    assert not bad.ok and bad.detail.startswith("exit 3") and "broken" in bad.detail
