"""The dashboard page in a real browser: Debian's headless Chromium driven by Playwright
against a real `cas serve` with published fixture releases.

Signs in (the token is kept for the browser session), opens each view and checks that
what it shows is what the JSON views say, starts a rollout through the API and promotes
it by clicking (accepting the confirmation), and checks that a read-token session that
clicks an action sees the server's refusal.  Screenshots of every view go to
tests/artifacts/dashboard/*.png.

Chromium is Debian's package (/usr/bin/chromium, installed by .ci/run); Playwright's own
browser downloads are never used.  Without it the test fails (it does not skip).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import ADMIN, READ, Server
from dashboard_fixture import ROLLOUT, local, make_server, start_rollout_with_reports

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "dashboard"
TIMEOUT_MS = 10_000

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium; "
                    ".ci/run does) -- the dashboard browser test needs it and never downloads a browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python playwright package is missing: pip install '.[test]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Any]]:
    server, clock = make_server(tmp_path_factory.mktemp("dashboard-browser"))
    yield server, clock
    server.stop()


def api(server: Server, view: str, token: str = ADMIN) -> dict:
    with server.client(token) as http:
        r = http.get(f"/v1/admin/dashboard/{view}")
        assert r.status_code == 200, r.text
        return r.json()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_view(page: Any, view: str) -> Any:
    renders = int(page.locator("main").get_attribute("data-renders") or 0)
    page.get_by_test_id(f"tab-{view}").click()
    page.wait_for_function(
        "([v, n]) => { const m = document.querySelector('main'); return m.dataset.loaded === v && "
        "Number(m.dataset.renders) > n && !m.hasAttribute('aria-busy'); }", arg=[view, renders], timeout=TIMEOUT_MS)
    return page.locator("main")


def sign_in(page: Any, server: Server, token: str) -> None:
    page.goto(server.url + "/")
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("login-submit").click()
    page.locator("main[data-loaded=releases]").wait_for()


def test_dashboard_in_chromium(browser, dash) -> None:
    server, clock = dash
    started = time.monotonic()
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    external: list[str] = []
    page.on("request", lambda req: external.append(req.url) if not req.url.startswith(server.url) else None)

    # -- sign in: a wrong token is refused, the right one is kept for the session
    page.goto(server.url + "/")
    assert page.get_by_test_id("login").is_visible()
    shot(page, "login")
    page.get_by_test_id("token-input").fill("wrong-token")
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("login-error").filter(has_text="unknown token").wait_for()
    errors.clear()   # the browser logs the 401 of the refused token
    page.get_by_test_id("token-input").fill(ADMIN)
    page.get_by_test_id("login-submit").click()
    page.locator("main[data-loaded=releases]").wait_for()
    assert "admin" in page.get_by_test_id("who").inner_text()
    page.reload()     # the token is in sessionStorage: no second sign-in
    page.locator("main[data-loaded=releases]").wait_for()
    assert not page.get_by_test_id("login").is_visible()

    # -- products and releases: the figures are the overview's
    overview = api(server, "overview")
    main = page.locator("main")
    for product in overview["products"]:
        for r in product["releases"]:
            row = main.get_by_test_id(f"release-{product['name']}-{r['version']}")
            assert row.get_attribute("data-status") == r["status"]
            for testid, key in (("files", "files"), ("logical", "logical_bytes"), ("unique", "unique_bytes"),
                                ("new", "new_bytes"), ("saved", "deduplicated_bytes")):
                assert int(row.get_by_test_id(testid).get_attribute("data-value")) == r[key], (r["version"], key)
            for h in r["history"]:
                assert f"{h['at']} {h['from'] or '—'} → {h['to']} by {h['actor']}" in row.inner_text()
            for move in r["moves"]:
                assert row.get_by_test_id(f"move-{r['version']}-{move}").is_visible()
    assert int(main.get_by_test_id("stat-objects").get_attribute("data-value")) == overview["stats"]["objects"]
    shot(page, "releases")

    # -- deltas: bases, bytes per kind, savings, the failed build and its error
    deltas = api(server, "deltas")
    main = open_view(page, "deltas")
    app = {r["version"]: r for r in deltas["products"][0]["releases"]}
    for version in ("1.1.0", "1.2.0", "1.3.0"):
        for b in app[version]["bases"]:
            row = main.get_by_test_id(f"delta-app-{version}-from-{b['from']}")
            assert int(row.get_by_test_id("download").get_attribute("data-value")) == b["bytes"]["recipes"]
            assert int(row.get_by_test_id("full").get_attribute("data-value")) == b["bytes"]["full"]
            assert int(row.get_by_test_id("savings").get_attribute("data-value")) == b["savings_bytes"]
            assert row.get_by_test_id("savings-percent").inner_text() == f"{b['savings_percent']} %"
            for kind, size in b["bytes"]["by_kind"].items():
                assert int(row.get_by_test_id(f"kind-{kind}").get_attribute("data-value")) == size
    failed = main.get_by_test_id("delta-app-1.3.0-from-1.2.0").get_by_test_id("failed-build")
    assert "injected failure for the dashboard test" in failed.inner_text()
    assert main.get_by_test_id("queue-failed").inner_text() == "1"
    shot(page, "deltas")

    # -- channels and rollouts: start through the API, promote by clicking
    start_rollout_with_reports(server, clock)
    main = open_view(page, "rollouts")
    block = main.get_by_test_id("rollout-app-stable")
    assert block.get_attribute("data-state") == "running" and block.get_attribute("data-percent") == "10"
    assert block.get_by_test_id("rollout-stage").inner_text() == "stage 1/3 (10 → 50 → 100 %)"
    assert main.get_by_test_id("channel-app-stable").get_by_test_id("channel-candidate").inner_text() == "1.1.0"
    stage = block.get_by_test_id("stage-reports").get_by_test_id("stage-0")
    assert [stage.get_by_test_id(k).inner_text() for k in ("success", "failed", "rolled_back")] == ["3", "1", "1"]
    bars = block.get_by_test_id("reports-chart").locator("rect")
    counts: dict[str, int] = {}
    for i in range(bars.count()):
        outcome = bars.nth(i).get_attribute("data-outcome")
        counts[outcome] = counts.get(outcome, 0) + int(bars.nth(i).get_attribute("data-count"))
    assert counts == {"success": 3, "failed": 1, "rolled_back": 1}
    # Dismissing the confirmation does nothing.
    page.once("dialog", lambda d: d.dismiss())
    block.get_by_test_id("rollout-abort").click()
    time.sleep(0.3)
    with server.client(ADMIN) as http:
        assert http.get(ROLLOUT.format("app", "stable")).json()["state"] == "running"
    shot(page, "rollouts")
    clock.advance(1800)
    questions: list[str] = []

    def accept(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()
    page.once("dialog", accept)
    block.get_by_test_id("rollout-promote").click()
    page.get_by_test_id("banner").filter(has_text="Done: Promote").wait_for()
    assert "Promote the rollout of 1.1.0 on app/stable" in questions[0]
    block = page.get_by_test_id("rollout-app-stable")
    page.locator("[data-testid=rollout-app-stable][data-percent='50']").wait_for()
    assert block.get_by_test_id("rollout-percent").inner_text() == "50%"
    assert block.get_by_test_id("rollout-stage").inner_text() == "stage 2/3 (10 → 50 → 100 %)"
    with server.client(ADMIN) as http:
        state = http.get(ROLLOUT.format("app", "stable")).json()
        channel = http.get("/v1/products/app/channels/stable").json()["signed"]
    assert state["percent"] == 50 and state["stage"] == 1 and state["events"][-1]["event"] == "stage"
    assert state["events"][-1]["actor"] == "token:admin" and state["events"][-1]["reason"] == "dashboard"
    assert channel["rollout"]["percent"] == 50
    assert block.get_by_test_id("stage-reports").locator("tbody tr").count() == 2
    shot(page, "rollouts-promoted")

    # -- store health: last fsck, GC, request counters
    local(server.store, "fsck")
    main = open_view(page, "health")
    health = api(server, "health")
    assert int(main.get_by_test_id("health-objects").get_attribute("data-value")) == health["store"]["objects"]
    assert int(main.get_by_test_id("health-stored").get_attribute("data-value")) == health["store"]["stored_bytes"]
    assert main.get_by_test_id("fsck-result").inner_text() == "OK"
    assert int(main.get_by_test_id("fsck-checked").get_attribute("data-value")) == health["fsck"]["checked"]
    assert main.get_by_test_id("gc").inner_text() == health["gc"]["message"]
    assert int(main.get_by_test_id("req-total").get_attribute("data-value")) > 0
    # The view refreshes itself every 5 s; the second sample gives a rate.
    page.get_by_test_id("req-rate").filter(has_text="req/s").wait_for(timeout=8000)
    shot(page, "health")
    assert errors == [], errors
    assert external == [], external

    # -- a read-token session sees everything and is refused when it acts
    reader = browser.new_context(viewport={"width": 1400, "height": 900})
    reader.set_default_timeout(TIMEOUT_MS)
    rpage = reader.new_page()
    sign_in(rpage, server, READ)
    assert "read" in rpage.get_by_test_id("who").inner_text()
    open_view(rpage, "rollouts")
    rpage.once("dialog", lambda d: d.accept())
    rpage.get_by_test_id("rollout-app-stable").get_by_test_id("rollout-halt").click()
    refusal = rpage.get_by_test_id("banner")
    refusal.filter(has_text="Refused (403 insufficient_scope)").wait_for()
    assert "a read token cannot do this; admin is required" in refusal.inner_text()
    shot(rpage, "read-refused")
    with server.client(ADMIN) as http:
        assert http.get(ROLLOUT.format("app", "stable")).json()["state"] == "running"
    # ... and for a release move (publish needed).
    open_view(rpage, "releases")
    rpage.once("dialog", lambda d: d.accept())
    rpage.get_by_test_id("move-1.3.0-testing").click()
    rpage.get_by_test_id("banner").filter(has_text="publish is required").wait_for()
    assert api(server, "overview")["products"][0]["releases"][3]["status"] == "draft"
    reader.close()
    context.close()
    assert time.monotonic() - started < 60


def test_dashboard_starts_a_rollout(browser, dash) -> None:
    """The start form on a channel without a rollout: strategy, stages and gate, the same
    confirmation as promote/halt, the server's refusals shown, the rollout started as asked."""
    server, _ = dash
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(page, server, ADMIN)
    main = open_view(page, "rollouts")
    form = main.get_by_test_id("start-rollout-tool-main")
    assert form.get_by_test_id("start-release-tool-main").input_value() == "2.0.0"   # 1.0.0 is current
    questions: list[str] = []

    def accept(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    # Dismissing the confirmation sends nothing.
    page.once("dialog", lambda d: d.dismiss())
    form.get_by_test_id("start-submit-tool-main").click()
    time.sleep(0.3)
    with server.client(ADMIN) as http:
        assert http.get(ROLLOUT.format("tool", "main")).status_code == 404
    # 2.0.0 is testing and main takes released: the server's refusal is shown.
    page.once("dialog", accept)
    form.get_by_test_id("start-submit-tool-main").click()
    page.get_by_test_id("banner").filter(has_text="409 status_too_low").wait_for()
    with server.client(ADMIN) as http:
        r = http.post("/v1/products/tool/releases/2.0.0/status", json={"status": "released", "reason": "test"})
        assert r.status_code == 200, r.text
    main = open_view(page, "rollouts")
    form = main.get_by_test_id("start-rollout-tool-main")
    # Stages that do not increase: 422 from the server, nothing started.
    form.get_by_test_id("start-stages-tool-main").fill("50,10")
    page.once("dialog", accept)
    form.get_by_test_id("start-submit-tool-main").click()
    page.get_by_test_id("banner").filter(has_text="422 bad_stages").wait_for()
    with server.client(ADMIN) as http:
        assert http.get(ROLLOUT.format("tool", "main")).status_code == 404

    main = open_view(page, "rollouts")
    form = main.get_by_test_id("start-rollout-tool-main")
    form.get_by_test_id("start-strategy-tool-main").select_option("staged")
    form.get_by_test_id("start-stages-tool-main").fill("20, 100")
    form.get_by_test_id("start-duration-tool-main").fill("30m")
    form.get_by_test_id("start-rate-tool-main").fill("0.1")
    form.get_by_test_id("start-min-reports-tool-main").fill("5")
    form.get_by_test_id("start-auto-abort-tool-main").check()
    assert not form.get_by_test_id("start-clients-tool-main").is_visible()   # batches only
    page.once("dialog", accept)
    form.get_by_test_id("start-submit-tool-main").click()
    page.get_by_test_id("banner").filter(has_text="Done: Start rolling out 2.0.0").wait_for()
    assert questions[-1] == ("Start rolling out 2.0.0 on tool/main (now 1.0.0) in stages 20,100 % (stage duration "
                             "30m; gate: max failure rate 0.1, min reports 5, auto-abort)?")
    page.locator("[data-testid=rollout-tool-main][data-percent='20']").wait_for()
    assert page.get_by_test_id("start-rollout-tool-main").count() == 0   # no second start while it runs
    with server.client(ADMIN) as http:
        state = http.get(ROLLOUT.format("tool", "main")).json()
    assert (state["strategy"], state["stages"], state["stage_seconds"], state["max_failure_rate"],
            state["min_reports"], state["auto_abort"], state["release"], state["state"]) == (
        "staged", [20, 100], 1800, "0.1000", 5, True, "2.0.0", "running")
    assert state["events"][0]["actor"] == "token:admin" and state["events"][0]["reason"] == "dashboard"
    shot(page, "rollout-started")

    # The batches fields: shown for that strategy; a read token is refused.
    reader = browser.new_context(viewport={"width": 1400, "height": 900})
    reader.set_default_timeout(TIMEOUT_MS)
    rpage = reader.new_page()
    sign_in(rpage, server, READ)
    rmain = open_view(rpage, "rollouts")
    rform = rmain.get_by_test_id("start-rollout-app-beta")
    rform.get_by_test_id("start-strategy-app-beta").select_option("batches")
    assert rform.get_by_test_id("start-clients-app-beta").is_visible()
    assert not rform.get_by_test_id("start-stages-app-beta").is_visible()
    rform.get_by_test_id("start-release-app-beta").select_option("1.1.0")
    rform.get_by_test_id("start-clients-app-beta").fill("node-1\nnode-2\n# comment\nnode-3\n")
    rform.get_by_test_id("start-batch-size-app-beta").fill("2")
    rmessages: list[str] = []

    def raccept(dialog: Any) -> None:
        rmessages.append(dialog.message)
        dialog.accept()
    rpage.once("dialog", raccept)
    rform.get_by_test_id("start-submit-app-beta").click()
    rpage.get_by_test_id("banner").filter(has_text="Refused (403 insufficient_scope)").wait_for()
    assert "in batches of 2 over 3 clients" in rmessages[0]
    with server.client(ADMIN) as http:
        assert http.get(ROLLOUT.format("app", "beta")).status_code == 404
    reader.close()
    context.close()
    assert errors == [], errors
