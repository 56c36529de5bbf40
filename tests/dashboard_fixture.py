"""A real `cas serve` with published fixture releases for the dashboard tests.

Product ``app``: 1.0.0, 1.1.0 released (channel ``stable`` and ``beta`` on 1.0.0), 1.2.0
testing, 1.3.0 draft with a delta planned from 1.2.0 of which one build failed (the
error is injected through the metadata interface, the way a builder records one); every
other build is done.  Product ``tool`` (tiny text trees) is where the action tests act:
1.0.0 released on channel ``main``, 2.0.0 testing.  The server's clock is a file
(``CAS_FAKE_CLOCK_FILE``) so that reports can be spread over hours.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN, Server, run_cas, start_server

from cas.clock import FileClock
from cas.metadata import SqliteMetadata
from fixtures import write_release

CONFIG = "delta_builder = false\nreports_per_client_per_minute = 1000\n"
INJECTED_ERROR = "DeltaError: injected failure for the dashboard test"
ROLLOUT = "/v1/products/{}/channels/{}/rollout"


def local(store: Path, *args: str) -> str:
    """`cas` against the store directly (no server in the environment)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CAS_SERVER", "CAS_TOKEN")}
    env["CAS_STORE"] = str(store)
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "cas.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"cas {' '.join(args)} failed: {proc.stdout}\n{proc.stderr}")
    return proc.stdout


def make_server(base: Path) -> tuple[Server, FileClock]:
    clock = FileClock(base / "clock")
    clock.set(time.time())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAS_FAKE_CLOCK_FILE", str(clock.path))
        server = start_server(base / "store", config=CONFIG)
    key = str(server.store / "keys" / "release.pem")
    statuses = [["--status", "released", "--channel", "stable"], ["--status", "released"], ["--status", "testing"], []]
    for i, extra in enumerate(statuses):
        tree = base / f"app{i}"
        write_release(tree, i)
        server.cas("publish", str(tree), "--product", "app", "--version", f"1.{i}.0", "--key", key, *extra)
    server.cas("channel", "set", "app", "beta", "1.0.0")
    for version, extra in (("1.0.0", ["--status", "released", "--channel", "main"]), ("2.0.0", ["--status", "testing"])):
        tree = base / f"tool{version}"
        tree.mkdir()
        (tree / "tool.txt").write_text(f"tool {version}\n" * 50)
        (tree / "same.txt").write_text("unchanged\n" * 100)
        server.cas("publish", str(tree), "--product", "tool", "--version", version, "--key", key, *extra)
    # Build every queued delta, then plan 1.3.0 from 1.2.0, fail one of its builds, build the rest.
    local(server.store, "deltas", "build")
    local(server.store, "deltas", "build", "app", "1.3.0", "--from", "1.2.0", "--queue-only")
    meta = SqliteMetadata(server.store / "meta.db")
    try:
        job = meta.claim_job("dashboard-test:1", 60, 3)
        assert job is not None
        meta.finish_job(job[0], job[1], "dashboard-test:1", [], error=INJECTED_ERROR)
    finally:
        meta.close()
    local(server.store, "deltas", "build")
    return server, clock


def start_rollout_with_reports(server: Server, clock: FileClock) -> None:
    """A staged rollout of app 1.1.0 on stable (10, 50, 100 %) with reports 10 minutes in:
    3 successes, 1 failure, 1 rollback (the gate neither halts nor advances: min_reports 100)."""
    with server.client(ADMIN) as http:
        started = http.post(ROLLOUT.format("app", "stable"), json={
            "release": "1.1.0", "stages": [10, 50, 100], "stage_duration": "1h", "max_failure_rate": "0.5",
            "min_reports": 100, "salt": "00112233445566778899aabbccddeeff", "reason": "dashboard test"})
        assert started.status_code == 201, started.text
        clock.advance(600)
        report(http, [("c1", "success"), ("c2", "success"), ("c3", "success"), ("c4", "failed"),
                      ("c5", "rolled_back")])


def report(http: httpx.Client, outcomes: list[tuple[str, str]], to: str = "1.1.0") -> None:
    for client_id, outcome in outcomes:
        r = http.post("/v1/products/app/reports", json={"client_id": client_id, "from": "1.0.0", "to": to,
                                                         "outcome": outcome, "detail": ""})
        assert r.status_code == 202, r.text


__all__ = ["make_server", "start_rollout_with_reports", "report", "local", "run_cas", "INJECTED_ERROR", "ROLLOUT"]
