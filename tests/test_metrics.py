"""/metrics beyond request counts: the delta queue and build seconds by algorithm, rollouts
(stage, percent, reports by outcome), the webhook outbox, uploads in progress and store
bytes, read from a real server with each of those in a known state; and
docs/grafana-dashboard.json: valid JSON whose every expression names a metric the server
exposes."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import REPORT, Server, start_server, wait_for_builds
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"


def samples(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http.get("/metrics")
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with built deltas, a staged rollout with reports, a webhook that fails and an
    upload in progress."""
    base = tmp_path_factory.mktemp("metrics")
    server = start_server(base / "store", config=(
        'webhooks = [{url = "http://127.0.0.1:9/nothing", secret = "s"}]\n'
        "webhook_max_attempts = 1\nwebhook_poll_seconds = 0.2\nwebhook_timeout_seconds = 1.0\n"))
    key = str(server.store / "keys" / "release.pem")
    for i in range(2):
        tree = base / f"t{i}"
        tree.mkdir()
        (tree / "app.bin").write_bytes(bytes(range(256)) * 64 + f"version {i}\n".encode() * 100)
        server.cas("publish", str(tree), "--product", "app", "--version", f"1.{i}.0", "--key", key,
                   "--status", "released")
    server.cas("channel", "set", "app", "stable", "1.0.0")
    with server.client() as http:
        wait_for_builds(http)
        r = http.post("/v1/products/app/channels/stable/rollout",
                      json={"release": "1.1.0", "stages": [10, 50, 100], "stage_duration": "1h"})
        assert r.status_code in (200, 201), r.text
        with server.client(REPORT) as reporter:
            for i, outcome in enumerate(["success", "success", "failed"]):
                r = reporter.post("/v1/products/app/reports", json={
                    "client_id": f"c{i}", "from": "1.0.0", "to": "1.1.0", "outcome": outcome, "detail": ""})
                assert r.status_code == 202, r.text
        upload = http.post("/v1/uploads").headers["location"]
        assert http.patch(upload, content=b"x" * 1000, headers={"Content-Range": "0-999"}).status_code in (202, 204)
    yield server
    server.stop()


def test_state_gauges(busy: Server) -> None:
    with busy.client() as http:
        deadline = time.monotonic() + 30
        while True:
            found = samples(http)
            if value(found, "cas_webhook_deliveries", state="failed") >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        deltas = http.get("/v1/admin/deltas").json()
        rollout = http.get("/v1/products/app/channels/stable/rollout").json()

    assert value(found, "cas_state_scrape_ok") == 1
    for state in ("queued", "running", "failed", "done"):
        assert value(found, "cas_delta_jobs", state=state) == deltas["counts"][state]
    assert value(found, "cas_delta_jobs", state="done") > 0
    algorithms = {labels[0][1] for name, labels in found if name == "cas_delta_build_seconds_total"}
    assert algorithms and all(value(found, "cas_delta_recipes_built_total", algorithm=a) >= 1 for a in algorithms)
    assert all(value(found, "cas_delta_build_seconds_total", algorithm=a) >= 0 for a in algorithms)

    labels = {"product": "app", "channel": "stable", "strategy": "staged", "release": "1.1.0"}
    assert value(found, "cas_rollout_stage", **labels) == 0 == rollout["stage"]
    assert value(found, "cas_rollout_percent", **labels) == 10 == rollout["percent"]
    assert value(found, "cas_rollout_halted", **labels) == (1 if rollout["state"] == "halted" else 0)
    assert value(found, "cas_rollout_reports", **labels, outcome="success") == 2
    assert value(found, "cas_rollout_reports", **labels, outcome="failed") == 1
    assert value(found, "cas_rollout_reports", **labels, outcome="rolled_back") == 0
    assert value(found, "cas_rollouts", state=rollout["state"]) == 1

    assert value(found, "cas_webhook_deliveries", state="failed") >= 1   # port 9: refused, one attempt
    assert value(found, "cas_uploads_in_progress") == 1
    assert value(found, "cas_upload_bytes_in_progress") == 1000
    objects = [p for p in (busy.store / "objects").rglob("*") if p.is_file()]
    assert value(found, "cas_store_objects") == len(objects)
    assert value(found, "cas_store_bytes") == sum(p.stat().st_size for p in objects)


def test_grafana_dashboard_names_only_real_metrics(busy: Server) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    with busy.client() as http:
        http.get("/healthz")
        names = {name for name, _ in samples(http)}
    used = {m for e in exprs for m in re.findall(r"\b(cas_[a-z0-9_]+)", e)}
    for wanted in ("cas_delta_jobs", "cas_delta_build_seconds_total", "cas_rollout_percent", "cas_rollout_stage",
                   "cas_rollout_reports", "cas_webhook_deliveries", "cas_uploads_in_progress", "cas_store_bytes"):
        assert wanted in used, f"the dashboard does not chart {wanted}"
    missing = sorted(used - names)
    assert not missing, f"the dashboard names metrics the server does not expose: {missing}"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["title"]
        assert all(t["expr"].count("(") == t["expr"].count(")") for t in panel["targets"])
