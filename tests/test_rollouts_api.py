"""Rollouts and reports over HTTP and through `cas` (remote and local): scopes, bad input
answered with a clear 4xx and nothing changed, reports for versions nobody was offered,
floods, the report token, and lifecycle --move-channel-to."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
from conftest import PUBLISH, READ, Server, run_cas, start_server, store_snapshot

ROLLOUT = "/v1/products/app/channels/{}/rollout"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("rollout-api")
    server = start_server(base / "store", config="delta_builder = false\nreports_per_client_per_minute = 5\n")
    key = str(server.store / "keys" / "release.pem")
    for i in range(4):
        tree = base / f"t{i}"
        tree.mkdir()
        (tree / "app.txt").write_text(f"version {i}\n")
        status = ["--status", "released"] if i < 3 else []
        server.cas("publish", str(tree), "--product", "app", "--version", f"1.{i}.0", "--key", key, *status)
    for channel in ("stable", "beta", "cli", "yank", "other"):
        server.cas("channel", "set", "app", channel, "1.0.0")
    yield server
    server.stop()


def error(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_rollout_endpoints_need_admin(srv: Server) -> None:
    with srv.client(PUBLISH) as http:
        assert error(http.post(ROLLOUT.format("stable"), json={"release": "1.1.0"})) == (403, "insufficient_scope")
        assert error(http.get(ROLLOUT.format("stable"))) == (403, "insufficient_scope")
    with srv.client(None) as http:
        assert error(http.post(ROLLOUT.format("stable") + "/abort")) == (401, "token_required")


@pytest.mark.parametrize("body,expected", [
    ({"release": "1.1.0", "stages": [50, 10]}, (422, "bad_stages")),
    ({"release": "1.1.0", "stages": [1, 150]}, (422, "bad_stages")),
    ({"release": "1.1.0", "stages": [-5, 10]}, (422, "bad_stages")),
    ({"release": "1.1.0", "max_failure_rate": "5"}, (422, "bad_rate")),
    ({"release": "1.1.0", "stage_duration": "soon"}, (422, "bad_duration")),
    ({"release": "1.1.0", "colour": "red"}, (422, "bad_rollout")),
    ({"release": "9.9.9"}, (404, "unknown_release")),
    ({"release": "1.3.0"}, (409, "status_too_low")),
    ({"stages": [1]}, (422, "bad_rollout")),
])
def test_bad_start_requests_change_nothing(srv: Server, body: dict, expected: tuple[int, str]) -> None:
    before = store_snapshot(srv.store)
    with srv.client() as http:
        assert error(http.post(ROLLOUT.format("beta"), json=body)) == expected
        assert error(http.get(ROLLOUT.format("beta"))) == (404, "no_rollout")
    assert store_snapshot(srv.store) == before


def test_second_rollout_and_unknown_action_are_refused(srv: Server) -> None:
    with srv.client() as http:
        assert http.post(ROLLOUT.format("other"), json={"release": "1.1.0"}).status_code == 201
        before = store_snapshot(srv.store)
        assert error(http.post(ROLLOUT.format("other"), json={"release": "1.2.0"})) == (409, "rollout_exists")
        assert error(http.post(ROLLOUT.format("other") + "/explode")) == (422, "bad_action")
        assert error(http.put("/v1/products/app/channels/other", json={"release": "1.2.0"})) == (
            409, "rollout_active")
        assert store_snapshot(srv.store) == before
        assert http.post(ROLLOUT.format("other") + "/abort", json={"reason": "test"}).json()["state"] == "aborted"


def test_reports_for_versions_nobody_was_offered(srv: Server) -> None:
    report = {"client_id": "r1", "from": "1.0.0", "to": "1.2.0", "outcome": "success"}
    with srv.client(None) as http:
        before = store_snapshot(srv.store)
        assert error(http.post("/v1/products/app/reports", json=report)) == (422, "not_offered")
        assert error(http.post("/v1/products/app/reports", json={**report, "to": "7.7.7"})) == (
            404, "unknown_release")
        assert store_snapshot(srv.store) == before
        assert http.post("/v1/products/app/reports", json={**report, "to": "1.0.0"}).status_code == 202


def test_report_flood_from_one_client_is_limited(srv: Server) -> None:
    report = {"client_id": "flooder", "from": None, "to": "1.0.0", "outcome": "failed"}
    with srv.client(None) as http:
        codes = [http.post("/v1/products/app/reports", json=report).status_code for _ in range(8)]
        assert codes[:5] == [202] * 5 and set(codes[5:]) == {429}
    with srv.client() as http:
        stored = http.get("/v1/products/app/reports", params={"to": "1.0.0"}).json()["reports"]
        assert sum(1 for r in stored if r["client_id"] == "flooder") == 5


def test_cli_remote_and_local(srv: Server, tmp_path: Path) -> None:
    out = srv.cas("rollout", "start", "app", "cli", "1.1.0", "--stages", "5,50,100", "--stage-duration", "1h",
                  "--max-failure-rate", "0.05", "--min-reports", "20", "--json")
    data = json.loads(out.stdout)
    assert data["percent"] == 5 and data["state"] == "running"
    assert "5%" in srv.cas("rollout", "status", "app", "cli").stdout
    bad = srv.cas("rollout", "start", "app", "cli", "1.2.0", check=False)
    assert bad.returncode == 1 and "already has" in bad.stderr
    assert srv.cas("rollout", "halt", "app", "cli", "--reason", "look").returncode == 0
    local = run_cas("rollout", "resume", "app", "cli", "--store", str(srv.store), "--json",
                    env={"CAS_SERVER": "", "CAS_TOKEN": ""})          # on the store, beside the server
    assert json.loads(local.stdout)["state"] == "running" and json.loads(local.stdout)["events"][-1]["actor"] == "local"
    assert json.loads(srv.cas("rollout", "promote", "app", "cli", "--json").stdout)["percent"] == 50
    assert "nothing to do" in srv.cas("rollout", "tick").stdout
    srv.cas("rollout", "abort", "app", "cli", "--reason", "done testing")
    status = json.loads(srv.cas("rollout", "status", "app", "cli", "--json").stdout)
    assert [e["event"] for e in status["events"]] == ["started", "halted", "resumed", "stage", "aborted"]
    assert status["events"][-1]["reason"] == "done testing"
    clients = tmp_path / "clients.txt"
    clients.write_text("# hosts\nh1\nh2\nh3\n")
    batches = json.loads(srv.cas("rollout", "start", "app", "cli", "1.1.0", "--strategy", "batches", "--clients",
                                 str(clients), "--batch-size", "2", "--interval", "10m", "--json").stdout)
    assert batches["batches"]["admitted"] == 2
    with srv.client(None) as http:
        assert http.get("/v1/products/app/channels/cli").json()["signed"]["rollout"]["clients"] == ["h1", "h2"]
    srv.cas("rollout", "abort", "app", "cli")


def test_deprecate_with_move_channel_to_over_http_and_cli(srv: Server) -> None:
    with srv.client() as http:
        http.put("/v1/products/app/channels/yank", json={"release": "1.1.0"})
        refused = http.post("/v1/products/app/releases/1.1.0/status", json={"status": "deprecated"})
        assert error(refused) == (409, "release_in_use")
    out = srv.cas("release", "status", "app", "1.1.0", "deprecated", "--move-channel-to", "1.2.0",
                  "--reason", "CVE-2026-1")
    assert "deprecated" in out.stdout
    with srv.client() as http:
        assert http.get("/v1/products/app/channels/yank").json()["signed"]["release"] == "1.2.0"
        history = http.get("/v1/products/app/releases/1.1.0/history").json()["history"]
        assert history[-1]["to"] == "deprecated" and history[-1]["reason"].startswith("CVE-2026-1")
        assert history[-1]["actor"] == "token:admin"


def test_reports_require_token(tmp_path: Path) -> None:
    server = start_server(tmp_path / "store", config="reports_require_token = true\ndelta_builder = false\n")
    try:
        tree = tmp_path / "t"
        tree.mkdir()
        (tree / "a").write_text("a")
        server.cas("publish", str(tree), "--product", "app", "--version", "1.0.0", "--key",
                   str(server.store / "keys" / "release.pem"), "--status", "released", "--channel", "stable")
        report = {"client_id": "c", "from": None, "to": "1.0.0", "outcome": "success"}
        with server.client(None) as http:
            assert error(http.post("/v1/products/app/reports", json=report)) == (401, "token_required")
            assert http.get("/v1/products/app/channels/stable").status_code == 200   # reads stay anonymous
        with server.client(READ) as http:
            assert http.post("/v1/products/app/reports", json=report).status_code == 202
    finally:
        server.stop()


def test_halt_stops_new_installs_and_resume_restores(srv: Server) -> None:
    """A halted rollout used to stay in the channel document, so every cohort client that had
    not tried it yet still installed it.  Halting signs a document without it; resume signs it
    back (same release, percent and salt); the all-at-once strategy flips to the previous
    release on halt and back on resume."""
    srv.cas("channel", "set", "app", "halting", "1.0.0")
    srv.cas("channel", "set", "app", "halting-aao", "1.0.0")
    with srv.client() as http, srv.client(None) as anonymous:
        def doc(channel: str) -> dict:
            return anonymous.get(f"/v1/products/app/channels/{channel}").json()["signed"]

        started = http.post(ROLLOUT.format("halting"), json={"release": "1.2.0", "stages": [10, 100]})
        assert started.status_code == 201, started.text
        offered = doc("halting")
        assert offered["release"] == "1.0.0" and offered["rollout"]["release"] == "1.2.0"
        assert offered["rollout"]["percent"] == 10
        assert http.post(ROLLOUT.format("halting") + "/halt", json={"reason": "look"}).json()["state"] == "halted"
        halted = doc("halting")
        assert halted["sequence"] > offered["sequence"]
        assert halted["release"] == "1.0.0" and halted["rollout"] is None
        assert http.post(ROLLOUT.format("halting") + "/resume").json()["state"] == "running"
        resumed = doc("halting")
        assert resumed["sequence"] > halted["sequence"] and resumed["rollout"] == offered["rollout"]
        assert resumed["release"] == "1.0.0"
        http.post(ROLLOUT.format("halting") + "/abort")

        started = http.post(ROLLOUT.format("halting-aao"), json={"release": "1.2.0", "strategy": "all-at-once"})
        assert started.status_code == 201, started.text
        assert doc("halting-aao")["release"] == "1.2.0"
        http.post(ROLLOUT.format("halting-aao") + "/halt")
        assert doc("halting-aao")["release"] == "1.0.0" and doc("halting-aao")["rollout"] is None
        http.post(ROLLOUT.format("halting-aao") + "/resume")
        assert doc("halting-aao")["release"] == "1.2.0"
        http.post(ROLLOUT.format("halting-aao") + "/halt")
        flipped = http.post(ROLLOUT.format("halting-aao") + "/flip-back")   # still possible while halted
        assert flipped.status_code == 200 and flipped.json()["state"] == "flipped_back"
        assert doc("halting-aao")["release"] == "1.0.0"
