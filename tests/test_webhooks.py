"""Webhooks: HMAC signature, retries with backoff from the outbox, a permanent failure,
and end to end: a lifecycle move is answered at once and delivered in the background."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from conftest import start_server

from cas import webhooks
from cas.clock import FileClock
from cas.config import load_config
from cas.repo import open_repo

SECRET = "hook-secret"


class Receiver:
    """A loopback HTTP endpoint that fails the first ``fail`` requests with 500."""

    def __init__(self, fail: int = 0, delay: float = 0.0) -> None:
        self.fail, self.delay = fail, delay
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(outer.delay)
                outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 500 if len(outer.received) <= outer.fail else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail=2)
    yield r
    r.close()


def valid(headers: dict[str, str], body: bytes) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-deltacas-signature"], expected)


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"event":"x"}'
    assert webhooks.signature("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


def test_retries_with_backoff_until_delivered(tmp_path: Path, receiver: Receiver) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "config.toml").write_text(f'webhooks = [{{url = "{receiver.url}", secret = "{SECRET}"}}]\n'
                                       "webhook_backoff_seconds = 10.0\n")
    repo = open_repo(load_config(store, env={}))
    clock = FileClock(tmp_path / "clock")
    clock.set(1_900_000_000)
    webhooks.enqueue(repo, clock, "release.status", {"product": "app", "version": "1.0.0"})
    assert webhooks.deliver_due(repo, clock) == 0                  # 500: retry in 10 s
    row = repo.meta.webhook_summary()["deliveries"][0]
    assert row["state"] == "pending" and row["attempts"] == 1 and row["last_status"] == 500
    assert webhooks.deliver_due(repo, clock) == 0 and len(receiver.received) == 1   # not due yet
    clock.advance(10)
    assert webhooks.deliver_due(repo, clock) == 0                  # second 500: next in 20 s
    clock.advance(19)
    assert webhooks.deliver_due(repo, clock) == 0 and len(receiver.received) == 2
    clock.advance(1)
    assert webhooks.deliver_due(repo, clock) == 1
    summary = repo.meta.webhook_summary()
    assert summary["counts"] == {"pending": 0, "delivered": 1, "failed": 0}
    assert len(receiver.received) == 3
    for headers, body in receiver.received:
        assert valid(headers, body) and headers["x-deltacas-event"] == "release.status"
    assert json.loads(receiver.received[-1][1])["data"] == {"product": "app", "version": "1.0.0"}


def test_gives_up_after_max_attempts(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "config.toml").write_text('webhooks = [{url = "http://127.0.0.1:9/nothing", secret = "s"}]\n'
                                       "webhook_max_attempts = 2\nwebhook_backoff_seconds = 1.0\n"
                                       "webhook_timeout_seconds = 2.0\n")
    repo = open_repo(load_config(store, env={}))
    clock = FileClock(tmp_path / "clock")
    clock.set(1_900_000_000)
    webhooks.enqueue(repo, clock, "rollout.halted", {})
    webhooks.deliver_due(repo, clock)
    clock.advance(5)
    webhooks.deliver_due(repo, clock)
    row = repo.meta.webhook_summary()["deliveries"][0]
    assert row["state"] == "failed" and row["attempts"] == 2 and row["last_error"]


def test_bad_webhook_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('webhooks = [{url = "ftp://x", secret = "s"}]\n')
    with pytest.raises(ValueError):
        load_config(tmp_path, env={})


def test_lifecycle_move_is_not_blocked_and_is_delivered(tmp_path: Path) -> None:
    receiver = Receiver(fail=1, delay=1.5)                         # slow, and fails once
    try:
        server = start_server(tmp_path / "store", config=(
            f'webhooks = [{{url = "{receiver.url}", secret = "{SECRET}"}}]\n'
            "webhook_poll_seconds = 0.2\nwebhook_backoff_seconds = 0.2\ndelta_builder = false\n"))
        try:
            tree = tmp_path / "tree"
            tree.mkdir()
            (tree / "a.txt").write_text("a\n")
            server.cas("publish", str(tree), "--product", "app", "--version", "1.0.0", "--key",
                       str(server.store / "keys" / "release.pem"))
            with server.client() as http:
                began = time.monotonic()
                moved = http.post("/v1/products/app/releases/1.0.0/status",
                                  json={"status": "testing", "reason": "qa"})
                assert moved.status_code == 200 and time.monotonic() - began < 1.0
                assert http.get("/v1/admin/webhooks", headers={"Authorization": "Bearer read-token-t"}
                                ).status_code == 403
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    summary = http.get("/v1/admin/webhooks").json()
                    if summary["counts"]["delivered"]:
                        break
                    time.sleep(0.2)
                assert summary["counts"]["delivered"] == 1, summary
                assert summary["deliveries"][0]["attempts"] == 2
            headers, body = receiver.received[-1]
            assert valid(headers, body)
            data = json.loads(body)
            assert data["event"] == "release.status"
            assert data["data"]["to"] == "testing" and data["data"]["reason"] == "qa"
        finally:
            server.stop()
    finally:
        receiver.close()
