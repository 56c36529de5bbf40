"""``cas demo``: the whole product in one command, on a temporary store.

Starts a real server, publishes three fixture versions, waits for the
ahead-of-time deltas, installs version 1 with the client, updates to 2 and 3
showing the bytes saved, then publishes a version whose health check fails
and shows the automatic rollback.  Everything is removed afterwards unless
``--keep`` is given.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from client.updater import Updater
from fixtures import write_release

from . import channels, keys, publisher, releases
from .config import load_config
from .processes import stop_process
from .repo import open_repo
from .trees import scan_tree

VERSIONS = ["1.0.0", "1.1.0", "1.2.0"]
BROKEN = "1.3.0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(keep: bool = False, workdir: str | None = None) -> int:
    base = Path(workdir or tempfile.mkdtemp(prefix="deltacas-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    store = base / "store"
    token = secrets.token_hex(16)
    server: subprocess.Popen[bytes] | None = None
    try:
        _say(f"== deltacas demo in {base}")
        repo = open_repo(load_config(store))
        keys.init_keys(store, repo.meta)
        repo.reload_keys()
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "CAS_ADMIN_TOKEN": token}
        (store / "config.toml").write_text("delta_poll_seconds = 0.2\n")
        server = subprocess.Popen([sys.executable, "-m", "cas.cli", "serve", "--store", str(store),
                                   "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        for _ in range(200):
            try:
                if http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        _say(f"== server on {url} (real uvicorn), store {store}")

        release_key = keys.load_private_key(keys.key_path(store, "release"))
        trees = base / "trees"
        for i, version in enumerate(VERSIONS + [BROKEN]):
            write_release(trees / version, i, health_ok=version != BROKEN)
        for version in VERSIONS:
            tree = scan_tree(trees / version)
            published = publisher.publish_local(repo, tree, publisher.signed_manifest("app", version, tree, release_key))
            releases.move_status(repo, "app", version, "testing", "demo", "demo")
            releases.move_status(repo, "app", version, "released", "demo", "demo")
            _say(f"   published app {version}: {published.files} entries, {published.logical_bytes:,} bytes, "
                 f"{published.uploaded_objects} new objects ({published.uploaded_bytes:,} bytes stored)")
        started = time.monotonic()
        while True:
            counts = http.get("/v1/admin/deltas").json()["counts"]
            if counts["queued"] == 0 and counts["running"] == 0:
                break
            time.sleep(0.2)
        _say(f"== deltas built ahead of time: {counts['done']} jobs in {time.monotonic() - started:.1f}s")

        client_root = base / "client"
        channels.set_channel(repo, "app", "stable", VERSIONS[0])
        Updater.init(client_root, [url], "app", "stable", (store / "root.json").read_bytes(),
                     health_cmd="bin/health")
        updater = Updater(client_root, log=lambda m: _say(f"   client: {m}"))
        for version in VERSIONS:
            channels.set_channel(repo, "app", "stable", version)
            result = updater.update()
            saved = result.bytes_full - result.bytes_downloaded
            _say(f"== client update {result.from_version or '(fresh)'} -> {result.to_version}: downloaded "
                 f"{result.bytes_downloaded:,} of {result.bytes_full:,} bytes "
                 f"({100 * saved / max(result.bytes_full, 1):.1f}% saved"
                 f"{', manifest delta' if result.used_delta else ''}) in {result.seconds:.2f}s")

        broken_tree = scan_tree(trees / BROKEN)
        publisher.publish_local(repo, broken_tree, publisher.signed_manifest("app", BROKEN, broken_tree, release_key))
        releases.move_status(repo, "app", BROKEN, "testing", "demo", "demo")
        releases.move_status(repo, "app", BROKEN, "released", "demo", "demo")
        channels.set_channel(repo, "app", "stable", BROKEN)
        _say(f"== published {BROKEN} whose bin/health fails; the client updates and checks it")
        result = updater.update()
        _say(f"== outcome: {result.outcome}; current is {result.current}")
        for step in result.steps:
            _say(f"   {step}")
        status = updater.status(online=False)
        _say(f"== client status: current {status['current']}, previous {status['previous']}, "
             f"factory {status['factory']}")
        ok = result.outcome == "rolled_back" and result.current == VERSIONS[-1]
        _say("== demo finished " + ("as expected" if ok else "UNEXPECTEDLY"))
        return 0 if ok else 1
    finally:
        if server is not None:
            stop_process(server)
        if keep:
            _say(f"== kept {base}")
        else:
            for dirpath, _, _ in os.walk(base):
                os.chmod(dirpath, 0o755)
            shutil.rmtree(base, ignore_errors=True)
