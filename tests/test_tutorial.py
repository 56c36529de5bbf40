"""docs/tutorial.md, run as written: its ``sh`` blocks in order in one shell against the
real server the page starts (port 8080 replaced by a free one), then what the devices run
and what the audit logs say are checked."""
from __future__ import annotations

import os
from pathlib import Path

from conftest import free_port
from doc_runner import run_script, sh_blocks

from cas.metadata import SqliteMetadata

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"


def current(root: Path) -> str:
    return os.readlink(root / "current").split("/", 1)[1]


def test_tutorial_runs_as_written(tmp_path: Path) -> None:
    blocks = sh_blocks(TUTORIAL.read_text())
    assert len(blocks) == 7
    script = "\n".join(blocks).replace("8080", str(free_port()))
    done = run_script(script, tmp_path)
    log = (tmp_path / "server.log").read_text() if (tmp_path / "server.log").exists() else ""
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n--- server log ---\n{log[-4000:]}"

    # 4: the batches rollout of 1.1.0 reached every device; 5: 1.2.0 rolled itself back on node-1
    # and the rollout was aborted; 6: node-3 pinned back to 1.0.0, then released to 1.1.0.
    assert "node-1: update exit status 2" in done.stdout
    devices = tmp_path / "devices"
    assert [current(devices / f"node-{n}") for n in (1, 2, 3)] == ["1.1.0"] * 3
    assert (devices / "node-3" / "versions" / "1.0.0").is_dir()
    meta = SqliteMetadata(tmp_path / "cas-data" / "meta.db")
    try:
        r11 = meta.latest_rollout("app", "stable")
        assert r11 is not None and (r11["release"], r11["state"]) == ("1.2.0", "aborted")
        assert meta.get_channel("app", "stable").release == "1.1.0"
        actors = {e["actor"] for e in meta.release_history("app", "1.2.0")}
        assert actors == {"token:ci"}
        events = [(e["event"], e["client_id"], e["actor"]) for e in reversed(meta.pin_events("app", "stable"))]
        assert events == [("pin", "node-3", "token:ops"), ("unpin", "node-3", "token:ops")]
        reports = meta.reports("app", "1.2.0")
        assert [(r["client_id"], r["outcome"]) for r in reports] == [("node-1", "rolled_back")]
    finally:
        meta.close()
    assert 'cas_rollouts{state="aborted"} 1.0' in done.stdout
    assert 'cas_rollouts{state="finished"} 1.0' in done.stdout   # the 1.1.0 rollout
    assert "app/stable: batches rollout of 1.1.0 (from 1.0.0) finished" in done.stdout
