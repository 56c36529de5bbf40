"""The dashboard's JSON views against a real server with published fixture releases:
their shape and figures (checked against the manifests, the delta documents clients get,
`cas stats` and `cas fsck`), and who may see and act: every view needs a token of any
scope; the actions the page offers are the existing endpoints, which refuse a read token."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import ADMIN, PUBLISH, READ, Server
from dashboard_fixture import INJECTED_ERROR, ROLLOUT, local, make_server, report, start_rollout_with_reports

from casformat.canonical import parse_json

VIEWS = ["overview", "deltas", "channels", "health"]


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, object]]:
    server, clock = make_server(tmp_path_factory.mktemp("dashboard-api"))
    start_rollout_with_reports(server, clock)
    yield server, clock
    server.stop()


def get(server: Server, view: str, token: str | None = READ) -> dict:
    with server.client(token) as http:
        r = http.get(f"/v1/admin/dashboard/{view}")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    return r.json()


def manifests(server: Server, product: str) -> dict[str, dict]:
    with server.client(READ) as http:
        versions = [r["version"] for r in http.get(f"/v1/products/{product}/releases").json()["releases"]]
        return {v: parse_json(http.get(f"/v1/products/{product}/releases/{v}/manifest").content) for v in versions}


# --------------------------------------------------------------------------- authorization

@pytest.mark.parametrize("view", VIEWS)
def test_views_need_a_token_of_any_scope(dash, view: str) -> None:
    server, _ = dash
    with server.client(None) as http:   # anonymous reads are on for the public API, not here
        r = http.get(f"/v1/admin/dashboard/{view}")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "token_required")
        assert http.get("/v1/products").status_code == 200
    with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer not-a-token"}) as http:
        r = http.get(f"/v1/admin/dashboard/{view}")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "bad_token")
    for token, scope in ((READ, "read"), (PUBLISH, "publish"), (ADMIN, "admin")):
        assert get(server, view, token)["scope"] == scope


def test_unknown_product_filter(dash) -> None:
    server, _ = dash
    with server.client(READ) as http:
        r = http.get("/v1/admin/dashboard/deltas?product=nope")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_product")
        assert [p["name"] for p in http.get("/v1/admin/dashboard/channels?product=tool").json()["products"]] == ["tool"]


def channel_seq(http: httpx.Client, product: str, channel: str) -> int:
    return http.get(f"/v1/products/{product}/channels/{channel}").json()["signed"]["sequence"]


def test_action_authorization_matrix(dash) -> None:
    """Each action the page offers: anonymous 401, read 403 (and nothing changes), the
    needed scope acts.  Release status needs publish; channels and rollouts need admin."""
    server, _ = dash
    status = "/v1/products/tool/releases/2.0.0/status"
    channel = "/v1/products/tool/channels/main"
    rollout = ROLLOUT.format("tool", "main")
    clients = {name: server.client(token) for name, token in
               (("anonymous", None), ("read", READ), ("publish", PUBLISH), ("admin", ADMIN))}
    try:
        admin = clients["admin"]

        def refused(method: str, url: str, body: dict | None, allowed: str) -> None:
            before = (admin.get("/v1/admin/dashboard/overview").json()["products"],
                      channel_seq(admin, "tool", "main"))
            for name in ("anonymous", "read", "publish"):
                if name == allowed:
                    continue
                r = clients[name].request(method, url, json=body)
                expected = (401, "token_required") if name == "anonymous" else (403, "insufficient_scope")
                assert (r.status_code, r.json()["error"]["code"]) == expected, (name, url, r.text)
                if name == "read":
                    assert "a read token cannot do this" in r.json()["error"]["message"]
            after = (admin.get("/v1/admin/dashboard/overview").json()["products"], channel_seq(admin, "tool", "main"))
            assert before == after

        # Move status: publish may.
        refused("POST", status, {"status": "released"}, "publish")
        r = clients["publish"].post(status, json={"status": "released", "reason": "matrix"})
        assert r.status_code == 200 and r.json()["status"] == "released"
        history = admin.get("/v1/admin/dashboard/overview").json()["products"]
        tool = next(p for p in history if p["name"] == "tool")
        moved = next(r for r in tool["releases"] if r["version"] == "2.0.0")
        assert moved["history"][-1] == {**moved["history"][-1], "from": "testing", "to": "released",
                                        "actor": "token:publish", "reason": "matrix"}
        assert moved["moves"] == ["deprecated"]
        # Point a channel: admin only.
        refused("PUT", channel, {"release": "2.0.0"}, "admin")
        r = clients["publish"].put(channel, json={"release": "2.0.0"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "insufficient_scope")
        assert admin.put(channel, json={"release": "2.0.0"}).status_code == 200
        assert admin.put(channel, json={"release": "1.0.0"}).status_code == 200
        # Rollouts: start, promote, halt, resume, abort are admin only.
        refused("POST", rollout, {"release": "2.0.0", "stages": [20, 100]}, "admin")
        assert clients["publish"].post(rollout, json={"release": "2.0.0"}).status_code == 403
        assert admin.post(rollout, json={"release": "2.0.0", "stages": [20, 60, 100], "min_reports": 100}).status_code == 201
        for action in ("promote", "halt", "resume", "abort"):
            refused("POST", f"{rollout}/{action}", {}, "admin")
            assert clients["publish"].post(f"{rollout}/{action}", json={}).status_code == 403
            r = admin.post(f"{rollout}/{action}", json={"reason": "matrix"})
            assert r.status_code == 200, r.text
        view = admin.get("/v1/admin/dashboard/channels?product=tool").json()["products"][0]["channels"][0]
        assert view["rollout"]["state"] == "aborted" and view["candidate"] is None and view["rollout"]["actions"] == []
        assert [e["event"] for e in view["rollout"]["events"]] == ["started", "stage", "halted", "resumed", "aborted"]
    finally:
        for c in clients.values():
            c.close()


# --------------------------------------------------------------------------- overview

def test_overview_dedup_and_lifecycle(dash) -> None:
    server, _ = dash
    data = get(server, "overview")
    app = next(p for p in data["products"] if p["name"] == "app")
    assert [r["version"] for r in app["releases"]] == ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]
    assert [r["status"] for r in app["releases"]] == ["released", "released", "testing", "draft"]
    # Independently: new bytes = contents no earlier release (any product, by publication) had.
    seen: set[str] = set()
    found = manifests(server, "app")
    for r in app["releases"]:
        files = found[r["version"]]["signed"]["files"]
        blobs = {f["blake3"]: f["size"] for f in files if f["type"] == "file"}
        assert r["files"] == len(files)
        assert r["logical_bytes"] == r["bytes"] == sum(f["size"] for f in files if f["type"] == "file")
        assert r["unique_bytes"] == sum(blobs.values())
        assert r["new_bytes"] == sum(s for d, s in blobs.items() if d not in seen)
        assert r["new_objects"] == len(set(blobs) - seen)
        assert r["deduplicated_bytes"] == r["logical_bytes"] - r["new_bytes"]
        seen.update(blobs)
    first, second = app["releases"][0], app["releases"][1]
    assert first["new_bytes"] == first["unique_bytes"] < first["logical_bytes"]   # dedup within a version
    assert 0 < second["new_bytes"] < second["unique_bytes"]                       # dedup across versions
    # Lifecycle: when and by whom.
    assert [(h["from"], h["to"], h["actor"]) for h in first["history"]] == [
        (None, "draft", "token:admin"), ("draft", "testing", "token:admin"), ("testing", "released", "token:admin")]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", h["at"]) for h in first["history"])
    assert [r["moves"] for r in app["releases"]] == [["deprecated"], ["deprecated"], ["draft", "released"], ["testing"]]
    assert first["channels"] == ["beta", "stable"] and second["rollouts"] == ["stable"]
    stable = next(c for c in app["channels"] if c["channel"] == "stable")
    assert stable["release"] == "1.0.0" and stable["candidate"] == "1.1.0"


def test_stats_same_locally_over_the_api_and_in_the_cli(dash) -> None:
    server, _ = dash
    stats = get(server, "overview")["stats"]
    assert stats == json.loads(local(server.store, "stats", "--json"))
    remote = json.loads(server.cas("stats", "--json").stdout)  # CAS_SERVER/CAS_TOKEN: the overview API
    assert remote == stats
    assert stats["releases"] == 6 and stats["objects"] > 0 and stats["stored_bytes"] >= stats["unique_referenced_bytes"]
    human = server.cas("stats").stdout
    assert f"{stats['stored_bytes']:,}" in human


def test_cli_dashboard_views_use_the_api(dash) -> None:
    server, _ = dash
    for view in VIEWS:
        data = json.loads(server.cas("dashboard", view, "--json").stdout)
        assert data["scope"] == "admin"
        assert set(data) == set(get(server, view, ADMIN))
    assert "1.3.0 from 1.2.0" in server.cas("dashboard", "deltas", "--product", "app").stdout
    local_overview = json.loads(local(server.store, "dashboard", "overview", "--json"))
    assert [r["new_bytes"] for r in local_overview["products"][0]["releases"]] == \
        [r["new_bytes"] for r in get(server, "overview")["products"][0]["releases"]]


# --------------------------------------------------------------------------- deltas

def test_deltas_per_release_match_the_delta_documents(dash) -> None:
    server, _ = dash
    data = get(server, "deltas")
    app = {r["version"]: r for r in next(p for p in data["products"] if p["name"] == "app")["releases"]}
    assert app["1.0.0"]["bases"] == []
    assert [b["from"] for b in app["1.1.0"]["bases"]] == ["1.0.0"]
    assert [b["from"] for b in app["1.2.0"]["bases"]] == ["1.0.0", "1.1.0"]
    assert [b["from"] for b in app["1.3.0"]["bases"]] == ["1.2.0"]
    with server.client(READ) as http:
        for version in ("1.1.0", "1.2.0", "1.3.0"):
            for b in app[version]["bases"]:
                assert b["complete"], b
                doc = http.get(f"/v1/products/app/releases/{version}/delta", params={"from": b["from"]}).json()
                assert b["bytes"]["recipes"] == doc["bytes"]["recipes"]
                assert b["bytes"]["full"] == doc["bytes"]["full"] == app[version]["full_bytes"]
                assert sum(b["bytes"]["by_kind"].values()) == b["bytes"]["recipes"]
                assert b["savings_bytes"] == doc["bytes"]["full"] - doc["bytes"]["recipes"]
                assert b["savings_percent"] == round(100 * b["savings_bytes"] / b["bytes"]["full"], 1)
                assert b["removed"] == len(doc["removed"]) and b["upserted"] == len(doc["upserted"])
                have = {f["blake3"] for f in http.get(f"/v1/products/app/releases/{b['from']}/manifest")
                        .json()["signed"]["files"] if f["type"] == "file"}
                kinds: dict[str, int] = {}
                objects: set[str] = set()
                for digest, offers in doc["recipes"].items():
                    if digest not in have and offers[0]["object"] not in objects:   # a bundle counts once
                        objects.add(offers[0]["object"])
                        kinds[offers[0]["kind"]] = kinds.get(offers[0]["kind"], 0) + offers[0]["size"]
                assert b["bytes"]["by_kind"] == kinds
    patched = app["1.2.0"]["bases"][1]
    by_kind = patched["bytes"]["by_kind"]
    assert by_kind.get("patch", 0) + by_kind.get("bundle", 0) > 0 and patched["savings_percent"] > 50
    assert patched["jobs"]["done"] > 0 and patched["jobs"]["queued"] == patched["jobs"]["failed"] == 0
    failing = app["1.3.0"]["bases"][0]
    assert failing["jobs"]["failed"] == 1 and len(failing["failed"]) == 1
    failed = failing["failed"][0]
    assert failed["error"] == INJECTED_ERROR and failed["path"] and failed["attempts"] == 1
    assert data["queue"]["counts"]["failed"] == 1 and data["queue"]["failed"][0]["error"] == INJECTED_ERROR
    with server.client(ADMIN) as http:
        assert http.get("/v1/admin/deltas").json()["counts"] == data["queue"]["counts"]


# --------------------------------------------------------------------------- channels and rollouts

def test_channels_rollout_reports_per_stage_and_over_time(dash) -> None:
    server, clock = dash
    with server.client(ADMIN) as http:
        clock.advance(2 * 3600)
        assert http.post(ROLLOUT.format("app", "stable") + "/promote", json={"reason": "test"}).status_code == 200
        clock.advance(1800)
        report(http, [("c6", "success"), ("c7", "success")])
        status = http.get(ROLLOUT.format("app", "stable")).json()
    data = get(server, "channels")
    app = next(p for p in data["products"] if p["name"] == "app")
    stable = next(c for c in app["channels"] if c["channel"] == "stable")
    beta = next(c for c in app["channels"] if c["channel"] == "beta")
    assert beta["rollout"] is None and beta["candidate"] is None and beta["release"] == "1.0.0"
    assert stable["release"] == "1.0.0" and stable["candidate"] == "1.1.0"
    r = stable["rollout"]
    for key in ("state", "percent", "stage", "stages", "health", "events", "release", "previous"):
        assert r[key] == status[key], key   # the admin rollout API's figures, for a read token
    assert r["percent"] == 50 and r["stage"] == 1 and r["actions"] == ["promote", "halt", "abort"]
    assert [(s["percent"], s["success"], s["failed"], s["rolled_back"]) for s in r["stage_reports"]] == [
        (10, 3, 1, 1), (50, 2, 0, 0)]
    assert r["stage_reports"][0]["ended"] == r["stage_reports"][1]["started"] and r["stage_reports"][1]["ended"] is None
    tl = r["timeline"]
    assert tl["bucket_seconds"] == 900 and len(tl["buckets"]) <= 24
    totals = {k: sum(b[k] for b in tl["buckets"]) for k in ("success", "failed", "rolled_back")}
    assert totals == {"success": 5, "failed": 1, "rolled_back": 1}
    busy = [b for b in tl["buckets"] if b["success"] + b["failed"] + b["rolled_back"]]
    assert [b["percent"] for b in busy] == [10, 50]
    assert [m["event"] for m in tl["marks"]] == ["started", "stage"]
    assert all(0 <= m["offset"] <= tl["span_seconds"] for m in tl["marks"])


# --------------------------------------------------------------------------- health

def test_health_fsck_gc_and_request_rates(dash) -> None:
    server, _ = dash
    (server.store / "fsck-last.json").unlink(missing_ok=True)
    first = get(server, "health")
    assert first["fsck"] is None
    assert first["gc"]["implemented"] is True and first["gc"]["last_run"] is None
    local(server.store, "gc")
    ran = get(server, "health")["gc"]
    assert ran["last_run"] is not None and ran["message"].startswith("last run finished")
    assert first["store"] == {**first["store"], **get(server, "overview")["stats"]}
    assert first["store"]["quarantined"] == 0
    local(server.store, "fsck")
    record = json.loads((server.store / "fsck-last.json").read_text())
    assert record["ok"] is True and record["checked"] == first["store"]["objects"]
    # Counters: a 404 and a 401 are counted as client errors; the rate comes from two samples.
    with server.client(READ) as http:
        assert http.get("/v1/products/nope/releases").status_code == 404
    with server.client(None) as http:
        assert http.get("/v1/admin/dashboard/health").status_code == 401
    time.sleep(1.1)
    second = get(server, "health")
    assert second["fsck"]["ok"] is True and second["fsck"]["finished"] == record["finished"]
    assert second["fsck"]["checked"] == first["store"]["objects"] and second["fsck"]["age_seconds"] >= 0
    rq, before = second["requests"], first["requests"]
    assert rq["total"] >= before["total"] + 3
    assert rq["client_errors"] >= before["client_errors"] + 2 and rq["server_errors"] == 0
    assert rq["rate"] is not None and rq["rate"]["requests_per_second"] > 0
    assert rq["rate"]["client_errors_per_second"] > 0
    endpoints = {e["endpoint"]: e for e in rq["endpoints"]}
    assert endpoints["list_releases"]["statuses"].get("404", 0) >= 1
    assert endpoints["dashboard_health"]["statuses"]["401"] >= 1
    with server.client(None) as http:   # the same counters as /metrics
        metrics = http.get("/metrics").text
    match = re.search(r'cas_http_requests_total\{endpoint="list_releases",method="GET",status="404"\} (\d+)', metrics)
    assert match and int(float(match.group(1))) == endpoints["list_releases"]["statuses"]["404"]


# --------------------------------------------------------------------------- the page

def test_page_and_static_files_are_served_without_a_cdn(dash) -> None:
    server, _ = dash
    with server.client(None) as http:
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        srcs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert srcs and all(s.startswith("/static/") for s in srcs), srcs
        for name in ("dashboard.js", "dashboard.css"):
            r = http.get(f"/static/{name}")
            assert r.status_code == 200 and len(r.text) > 1000
            assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", r.text), name
        assert http.get("/static/../metadata.py").status_code == 404
    package = Path(__file__).resolve().parent.parent / "pyproject.toml"
    assert '"cas.http" = ["static/*.html", "static/*.js", "static/*.css"]' in package.read_text()
