"""A fleet of real clients (``client.updater.Updater``, each with its own install root
and client id) against a real ``cas serve`` whose clock a file sets: a healthy staged
rollout reaches 100 %, a release whose health check fails halts at the first stage
with most of the fleet untouched, and an abort brings the cohort back."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import REPORT, Server, start_server

from cas.clock import FileClock
from casformat.trust import in_cohort
from client.updater import Updater
from fixtures import write_release

FLEET = 24
HOUR = 3600
# The whole fleet reports from one address (like a site behind NAT): allow its ids (D9).
CONFIG = ("rollout_tick_seconds = 0.2\ndelta_builder = false\nwebhook_poll_seconds = 0.5\n"
          "reports_gate_ids_per_source = 64\n")
IDS = [f"fleet-{i:02d}" for i in range(FLEET)]


@pytest.fixture
def fleet_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
                 ) -> Iterator[tuple[Server, FileClock]]:
    clock = FileClock(tmp_path / "clock")
    clock.set(time.time())
    monkeypatch.setenv("CAS_FAKE_CLOCK_FILE", str(clock.path))
    server = start_server(tmp_path / "store", config=CONFIG)
    key = str(server.store / "keys" / "release.pem")
    bad = getattr(request, "param", False)
    for i in range(2):
        tree = tmp_path / f"tree{i}"
        write_release(tree, i, health_ok=not (bad and i == 1))
        server.cas("publish", str(tree), "--product", "app", "--version", f"1.{i}.0", "--key", key,
                   "--status", "released", *(["--channel", "stable"] if i == 0 else []))
    yield server, clock
    server.stop()


def make_fleet(server: Server, tmp_path: Path) -> list[Updater]:
    root = (server.store / "root.json").read_bytes()
    return [Updater.init(tmp_path / "clients" / cid, [server.url], "app", "stable", root, client_id=cid,
                         health_cmd="bin/health", report_token=REPORT) for cid in IDS]


def update_all(fleet: list[Updater]) -> list[str]:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda u: u.update(), fleet))
    return [r.current for r in results]


def salt_for(percent: int, low: int, high: int) -> str:
    """A salt whose cohort at ``percent`` holds between low and high of the fleet."""
    for k in range(10_000):
        salt = f"{k:032x}"
        if low <= sum(in_cohort(salt, c, percent) for c in IDS) <= high:
            return salt
    raise AssertionError("no salt found")


def rollout(http: httpx.Client) -> dict:
    response = http.get("/v1/products/app/channels/stable/rollout")
    assert response.status_code == 200, response.text
    return response.json()


def tick(http: httpx.Client) -> list:
    return http.post("/v1/admin/rollouts/tick").json()["steps"]


def test_healthy_rollout_reaches_everyone(fleet_server, tmp_path: Path) -> None:
    server, clock = fleet_server
    fleet = make_fleet(server, tmp_path)
    assert update_all(fleet) == ["1.0.0"] * FLEET
    salt = salt_for(10, 2, 5)
    with server.client() as http:
        started = http.post("/v1/products/app/channels/stable/rollout", json={
            "release": "1.1.0", "stages": [10, 50, 100], "stage_duration": "1h", "max_failure_rate": "0.2",
            "min_reports": 2, "salt": salt})
        assert started.status_code == 201, started.text
        seen = [10]
        for _ in range(6):
            state = rollout(http)
            percent = state["percent"]
            current = update_all(fleet)
            if state["state"] == "finished":
                break
            expected = ["1.1.0" if in_cohort(salt, c, percent) else "1.0.0" for c in IDS]
            assert current == expected, (percent, current)
            assert rollout(http)["state"] == "running"   # every report was a success
            clock.advance(HOUR + 1)
            tick(http)
            seen.append(rollout(http)["percent"])
        state = rollout(http)
        assert state["state"] == "finished", state
        assert seen[:3] == [10, 50, 100]
        assert current == ["1.1.0"] * FLEET
        channel = http.get("/v1/products/app/channels/stable").json()["signed"]
        assert channel["release"] == "1.1.0" and channel["rollout"] is None
        assert [e["event"] for e in state["events"]] == ["started", "stage", "stage", "finished"]


@pytest.mark.parametrize("fleet_server", [True], indirect=True)
def test_failing_release_halts_at_first_stage_then_abort(fleet_server, tmp_path: Path) -> None:
    server, clock = fleet_server
    fleet = make_fleet(server, tmp_path)
    assert update_all(fleet) == ["1.0.0"] * FLEET
    salt = salt_for(10, 2, 5)
    cohort = [c for c in IDS if in_cohort(salt, c, 10)]
    with server.client() as http:
        assert http.post("/v1/products/app/channels/stable/rollout", json={
            "release": "1.1.0", "stages": [10, 50, 100], "stage_duration": "1h", "max_failure_rate": "0.05",
            "min_reports": 5, "salt": salt}).status_code == 201
        sequence = http.get("/v1/products/app/channels/stable").json()["signed"]["sequence"]
        current = update_all(fleet)
        assert current == ["1.0.0"] * FLEET          # the cohort rolled back by itself
        state = rollout(http)
        assert state["state"] == "halted" and state["percent"] == 10, state
        assert state["health"]["rolled_back"] >= 1
        # Time passes: a halted rollout does not advance.
        clock.advance(10 * HOUR)
        assert tick(http) == [] and rollout(http)["percent"] == 10
        untouched = [u for u in fleet if u.config.client_id not in cohort]
        assert len(untouched) >= FLEET - 5
        assert all("1.1.0" not in u.layout.installed() for u in untouched)
        aborted = http.post("/v1/products/app/channels/stable/rollout/abort", json={"reason": "health"})
        assert aborted.status_code == 200 and aborted.json()["state"] == "aborted"
        channel = http.get("/v1/products/app/channels/stable").json()["signed"]
        assert channel["sequence"] == sequence + 2 and channel["rollout"] is None   # halt, then abort
        assert update_all(fleet) == ["1.0.0"] * FLEET
        hooks = http.get("/v1/admin/webhooks").json()
        assert hooks["counts"] == {"pending": 0, "delivered": 0, "failed": 0}  # none configured


def test_abort_brings_the_cohort_back(fleet_server, tmp_path: Path) -> None:
    server, clock = fleet_server
    fleet = make_fleet(server, tmp_path)
    update_all(fleet)
    salt = salt_for(50, 8, 16)
    cohort = {c for c in IDS if in_cohort(salt, c, 50)}
    with server.client() as http:
        assert http.post("/v1/products/app/channels/stable/rollout", json={
            "release": "1.1.0", "stages": [50, 100], "min_reports": 100, "salt": salt}).status_code == 201
        current = update_all(fleet)
        assert {c for c, v in zip(IDS, current) if v == "1.1.0"} == cohort
        assert http.post("/v1/products/app/channels/stable/rollout/abort").status_code == 200
    assert update_all(fleet) == ["1.0.0"] * FLEET
    for updater in fleet:
        if updater.config.client_id in cohort:
            assert updater.layout.link("previous") == "1.1.0"
