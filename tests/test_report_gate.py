"""D9: the rollout health gate against forged reports, end to end over HTTP against a real
``cas serve`` whose clock a file sets.  Anonymous reports are stored but never counted; one
reporter (token @ source address) counts for at most ``reports_gate_ids_per_source`` client
ids however many it invents; reports are also rate-limited per source address.  Different
sources are different loopback addresses (127.0.0.2, ...)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import REPORT, Server, start_server

from cas.clock import FileClock

CONFIG = ("delta_builder = false\nrollout_tick_seconds = 3600\nreports_per_address_per_minute = 70\n"
          "reports_gate_ids_per_source = 16\n")
ROLLOUT = "/v1/products/app/channels/stable/rollout"
HOUR = 3600


@pytest.fixture
def gated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, FileClock]]:
    clock = FileClock(tmp_path / "clock")
    clock.set(time.time())
    monkeypatch.setenv("CAS_FAKE_CLOCK_FILE", str(clock.path))
    server = start_server(tmp_path / "store", config=CONFIG)
    key = str(server.store / "keys" / "release.pem")
    for i in range(2):
        tree = tmp_path / f"t{i}"
        tree.mkdir()
        (tree / "app.txt").write_text(f"version {i}\n")
        server.cas("publish", str(tree), "--product", "app", "--version", f"1.{i}.0", "--key", key,
                   "--status", "released", *(["--channel", "stable"] if i == 0 else []))
    yield server, clock
    server.stop()


def from_address(server: Server, address: str, token: str | None) -> httpx.Client:
    return server.client(token, transport=httpx.HTTPTransport(local_address=address))


def report(http: httpx.Client, client_id: str, outcome: str) -> httpx.Response:
    return http.post("/v1/products/app/reports",
                     json={"client_id": client_id, "from": "1.0.0", "to": "1.1.0", "outcome": outcome})


def start(server: Server, auto_abort: bool) -> None:
    with server.client() as admin:
        started = admin.post(ROLLOUT, json={"release": "1.1.0", "stages": [1, 50, 100], "stage_duration": "1h",
                                            "max_failure_rate": "0.05", "min_reports": 20,
                                            "auto_abort": auto_abort})
        assert started.status_code == 201, started.text


def state(server: Server) -> dict:
    with server.client() as admin:
        return admin.get(ROLLOUT).json()


def test_anonymous_failures_do_not_abort_a_rollout(gated) -> None:
    """Two forged failures from anonymous senders used to abort a rollout (2 > 5 % of 20)."""
    server, clock = gated
    start(server, auto_abort=True)
    with from_address(server, "127.0.0.2", None) as anonymous:
        answers = [report(anonymous, cid, "failed") for cid in ("forged-1", "forged-2", "forged-3")]
    with server.client() as admin:
        admin.post("/v1/admin/rollouts/tick")
        stored = admin.get("/v1/products/app/reports", params={"to": "1.1.0"}).json()["reports"]
    now = state(server)
    assert now["state"] == "running" and now["health"]["reports"] == 0, now
    assert all(a.status_code == 202 and a.json()["counted"] is False for a in answers)
    assert {r["client_id"] for r in stored} == {"forged-1", "forged-2", "forged-3"}   # stored, shown
    assert not any(r["counted"] for r in stored)
    # The same failures from authenticated clients count, and the gate aborts.
    for n, address in enumerate(("127.0.0.3", "127.0.0.4")):
        with from_address(server, address, REPORT) as fleet:
            assert report(fleet, f"real-{n}", "failed").json()["counted"] is True
    assert state(server)["state"] == "aborted"


def test_one_reporter_inventing_ids_cannot_carry_failures(gated) -> None:
    """Sixty forged successes under invented ids (with a valid fleet token, from one address)
    used to dilute three real failures below 5 % and carry the rollout on to 50 %."""
    server, clock = gated
    start(server, auto_abort=False)
    answers = []
    with from_address(server, "127.0.0.2", REPORT) as forger:
        for i in range(80):
            answers.append(report(forger, f"invented-{i:03d}", "success"))
    real = []
    for n, address in enumerate(("127.0.0.3", "127.0.0.4", "127.0.0.5")):
        with from_address(server, address, REPORT) as fleet:
            real.append(report(fleet, f"real-{n}", "failed"))
    clock.advance(HOUR + 60)
    with server.client() as admin:
        admin.post("/v1/admin/rollouts/tick")
    after = state(server)
    assert after["percent"] == 1 and after["state"] == "halted", after
    assert after["health"]["reports"] == 16 + 3 and after["health"]["failed"] == 3
    assert all(r.status_code == 202 and r.json()["counted"] is True for r in real)
    codes = [a.status_code for a in answers]
    assert codes[:70] == [202] * 70 and set(codes[70:]) == {429}      # rate-limited by address
    assert sum(a.json()["counted"] for a in answers[:70]) == 16       # reports_gate_ids_per_source
    # Another address is answered at once: the limit is per address.
    with from_address(server, "127.0.0.9", REPORT) as other:
        assert report(other, "healthy-9", "success").status_code == 202
