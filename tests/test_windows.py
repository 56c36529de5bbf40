"""Maintenance windows: pure schedule rules, and the client deferring (or not) against a real server."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Server

from client.errors import ClientError
from client.updater import Updater
from client.windows import is_open, next_opening, schedule

UTC = UTC


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_window_days_hours_and_time_zone() -> None:
    s = schedule(["mon-fri 02:00-04:00"], [], "Europe/Berlin")
    assert is_open(s, at("2026-11-26T01:30"))        # Thu 02:30 in Berlin (UTC+1)
    assert not is_open(s, at("2026-11-26T03:30"))    # Thu 04:30 in Berlin
    assert not is_open(s, at("2026-11-28T01:30"))    # Saturday
    assert next_opening(s, at("2026-11-26T12:00")) == at("2026-11-27T01:00")
    assert next_opening(s, at("2026-11-28T12:00")) == at("2026-11-30T01:00")  # Sat -> Monday


def test_window_across_midnight_and_daylight_saving() -> None:
    s = schedule(["sat 22:00-02:00"], [], "Europe/Berlin")
    assert is_open(s, at("2026-11-29T00:30"))        # Sunday 01:30 belongs to Saturday's window
    assert not is_open(s, at("2026-11-29T01:30"))    # Sunday 02:30
    summer = schedule(["daily 02:00-03:00"], [], "Europe/Berlin")
    assert next_opening(summer, at("2026-07-01T12:00")) == at("2026-07-02T00:00")  # UTC+2 in summer


def test_blackout_wins_over_window() -> None:
    s = schedule(["daily 02:00-04:00"], ["2026-12-24/2026-12-27"], "UTC")
    assert not is_open(s, at("2026-12-25T03:00"))
    assert next_opening(s, at("2026-12-24T12:00")) == at("2026-12-27T02:00")
    only_blackout = schedule([], ["2026-12-24T00:00/2026-12-25T00:00"], "UTC")
    assert is_open(only_blackout, at("2026-12-23T12:00"))
    assert next_opening(only_blackout, at("2026-12-24T06:00")) == at("2026-12-25T00:00")


@pytest.mark.parametrize("bad", ["mon-fri", "funday 01:00-02:00", "mon 25:00-26:00", "mon 01:00-01:00"])
def test_bad_window_specs_are_refused(bad: str) -> None:
    with pytest.raises(ClientError):
        schedule([bad], [], "UTC")


def test_bad_time_zone_and_blackout_are_refused() -> None:
    with pytest.raises(ClientError, match="time zone"):
        schedule([], [], "Mars/Olympus")
    with pytest.raises(ClientError, match="ends before"):
        schedule([], ["2026-12-27/2026-12-24"], "UTC")


def _closed_window_now() -> str:
    """A one-hour daily window that opens 12 hours from now (so it is closed now)."""
    start = datetime.now(UTC) + timedelta(hours=12)
    end = start + timedelta(hours=1)
    return f"daily {start:%H}:00-{end:%H}:00"


def test_client_defers_outside_its_window_unless_critical(server: Server, release_trees: list[Path],
                                                          tmp_path: Path) -> None:
    key = str(server.store / "keys" / "release.pem")
    for version, tree in zip(["1.0.0", "1.1.0", "1.2.0"], release_trees):
        server.cas("publish", str(tree), "--product", "app", "--version", version, "--key", key,
                   "--status", "released")
    server.cas("channel", "set", "app", "stable", "1.0.0")
    root = tmp_path / "client"
    Updater.init(root, [server.url], "app", "stable", (server.store / "root.json").read_bytes(),
                 windows=[_closed_window_now()])
    up = Updater(root)
    deferred = up.update()
    assert deferred.outcome == "deferred" and deferred.current is None and deferred.next_window
    assert up.layout.installed() == []
    assert datetime.fromisoformat(deferred.next_window) > datetime.now(UTC)
    status = up.status()
    assert status["window_open"] is False and status["next_window"] == deferred.next_window
    # An operator can force it.
    assert up.update(ignore_window=True).current == "1.0.0"
    # A critical release goes in outside the window; a normal one waits.
    server.cas("channel", "set", "app", "stable", "1.1.0")
    assert up.update().outcome == "deferred"
    server.cas("release", "critical", "app", "1.1.0", "--reason", "CVE fix")
    with server.client(None) as http:
        doc = http.get("/v1/products/app/channels/stable").json()
    assert doc["signed"]["critical"] == ["1.1.0"]
    result = up.update()
    assert result.outcome == "updated" and result.current == "1.1.0"
    history = json.loads(server.cas("release", "history", "app", "1.1.0", "--json").stdout)
    assert any("critical: CVE fix" in h["reason"] for h in history["history"])
    # The CLI says when the next window opens and exits 0 when deferring.
    server.cas("channel", "set", "app", "stable", "1.2.0")
    cli = subprocess.run([sys.executable, "-m", "client.cli", "update", str(root)], capture_output=True, text=True)
    assert cli.returncode == 0 and "next window opens" in cli.stdout
