"""Shared test fixtures: a real `cas serve` (uvicorn) on a free loopback port."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

# A throwaway PostgreSQL (session fixture) and the metadata backends to parametrize over.
from pg_fixture import metadata_url, postgres_server, postgres_url  # noqa: F401

# The moto S3 server (session fixture) for the S3 object-store backend.
from s3_fixture import s3_server  # noqa: F401

# SeaweedFS (session fixture): a real distributed object store behind the same S3 backend.
from seaweed_fixture import seaweed_server  # noqa: F401

from cas.processes import stop_process
from fixtures import write_release

ADMIN, PUBLISH, READ = "admin-token-t", "publish-token-t", "read-token-t"
REPORT = "report-token-t"  # a fleet's report token: reports that count for the rollout gate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cas(*args: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "cas.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"cas {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class Server:
    url: str
    store: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    def client(self, token: str | None = ADMIN, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def cas(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cas(*args, env={"CAS_STORE": str(self.store), **self.env}, check=check)

    def stop(self) -> None:
        stop_process(self.proc)


def start_server(store: Path, config: str = "", init_keys: bool = True, extra_args: tuple[str, ...] = ()
                 ) -> Server:
    store.mkdir(parents=True, exist_ok=True)
    if config:
        (store / "config.toml").write_text(config)
    if init_keys and not (store / "keys").exists():
        run_cas("keys", "init", "--store", str(store))
    port = free_port()
    env = {**os.environ, "CAS_ADMIN_TOKEN": ADMIN, "CAS_PUBLISH_TOKEN": PUBLISH, "CAS_READ_TOKEN": READ,
           "CAS_REPORT_TOKEN": REPORT}
    log = open(store.parent / f"server-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cas.cli", "serve", "--store", str(store), "--port",
                             str(port), *extra_args], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(store.parent / f'server-{port}.log').read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return Server(url, store, proc, {"CAS_SERVER": url, "CAS_TOKEN": ADMIN})
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path / "store")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("shared") / "store")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def release_trees(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three consecutive fixture releases."""
    base = tmp_path_factory.mktemp("trees")
    trees = []
    for i in range(3):
        dest = base / f"v{i}"
        write_release(dest, i)
        trees.append(dest)
    return trees


def store_snapshot(store: Path) -> dict[str, Any]:
    """Everything observable in a store: object files and every metadata row."""
    objects = sorted(str(p.relative_to(store)) for p in (store / "objects").rglob("*") if p.is_file())
    conn = sqlite3.connect(store / "meta.db")
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                             "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        rows = {t: sorted(map(repr, conn.execute(f"SELECT * FROM {t}").fetchall())) for t in tables}
    finally:
        conn.close()
    uploads = sorted(p.name for p in (store / "uploads").iterdir()) if (store / "uploads").exists() else []
    return {"objects": objects, "rows": rows, "uploads": uploads}


def wait_for_builds(http: httpx.Client, timeout: float = 120) -> dict[str, Any]:
    """Poll the server's delta queue until nothing is queued or running; its summary."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = http.get("/v1/admin/deltas").json()
        if status["counts"]["queued"] == 0 and status["counts"]["running"] == 0:
            return status
        time.sleep(0.2)
    raise AssertionError(f"delta builds did not finish: {status.get('counts')}")
