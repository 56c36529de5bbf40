"""A short PostgreSQL outage (issue 14 item 3), with the real throwaway cluster stopped and started.

During the outage requests that touch the database answer 503 ``metadata_unavailable``
with ``Retry-After`` (clients retry those), not 500 ``internal``; afterwards they answer
again.  A delta job whose build meets the outage is given back to the queue (not left
``running`` for its whole lease) and is built once the database is back.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import start_server
from proc_helpers import wait_until

from cas import deltas
from cas.config import load_config
from cas.repo import open_repo
from deltagen.digests import blake3_bytes


class Cluster:
    """The test session's PostgreSQL cluster (tests/pg_fixture.py), stopped and started with pg_ctl."""

    def __init__(self) -> None:
        mine = [p.parent for p in Path("/tmp").glob("cas-pg-*/owner.pid") if p.read_text() == str(os.getpid())]
        if not mine:
            pytest.fail("no PostgreSQL cluster of this test process (CAS_TEST_POSTGRES_URL cannot be restarted)")
        self.data = mine[0] / "data"
        opts = shlex.split((self.data / "postmaster.opts").read_text())
        self.pg_ctl = str(Path(opts[0]).parent / "pg_ctl")
        args = opts[1:]
        i = args.index("-D")
        self.options = shlex.join(args[:i] + args[i + 2:])

    def _run(self, *args: str) -> None:
        done = subprocess.run(["runuser", "-u", "postgres", "--", self.pg_ctl, "-D", str(self.data), *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr

    def stop(self) -> None:
        self._run("-m", "fast", "-w", "stop")

    def start(self) -> None:
        self._run("-o", self.options, "-l", str(self.data.parent / "server.log"), "-w", "-t", "60", "start")


@pytest.fixture
def cluster(postgres_url: str) -> Iterator[Cluster]:
    c = Cluster()
    yield c
    try:  # whatever the test did, leave it running for the rest of the session
        c.start()
    except AssertionError:
        pass  # already running


def test_requests_during_an_outage_are_503_with_retry_after(tmp_path: Path, postgres_url: str,
                                                            cluster: Cluster) -> None:
    server = start_server(tmp_path / "store", config=f'metadata_url = "{postgres_url}"\ndelta_builder = false\n')
    try:
        with server.client() as http:
            assert http.get("/v1/products").status_code == 200
            cluster.stop()
            try:
                for path in ("/v1/products", "/v1/products/app/releases", "/healthz"):
                    r = http.get(path)
                    assert r.status_code == 503, (path, r.status_code, r.text)
                    assert r.json()["error"]["code"] == "metadata_unavailable"
                    assert int(r.headers["retry-after"]) > 0
                # /metrics still answers: the process's counters, and state gauges marked unreadable
                r = http.get("/metrics")
                assert r.status_code == 200 and "cas_state_scrape_ok 0.0" in r.text
                assert "cas_http_requests_total" in r.text and "cas_delta_jobs" not in r.text
            finally:
                cluster.start()
            # Back without a restart of deltacas: the pool replaces its dead connections
            # (503 + Retry-After until it has, as during the outage).
            assert wait_until(lambda: http.get("/v1/products").status_code == 200, 30)
            assert "cas_state_scrape_ok 1.0" in http.get("/metrics").text
    finally:
        server.stop()


def test_a_delta_job_meeting_an_outage_is_given_back_then_built(tmp_path: Path, postgres_url: str,
                                                                cluster: Cluster,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    # The outage (2 s and a restart) outlasts the pool's wait for a connection: shorter ones are
    # absorbed by the wait (the query just waits), longer ones are what this test is about.
    config = load_config(store, metadata_url=postgres_url, postgres_pool_timeout_seconds=0.5)
    repo = open_repo(config)
    content = os.urandom(1 << 16) * 4
    source = tmp_path / "file.bin"
    source.write_bytes(content)
    digest = repo.ingest_file(source).digest
    assert blake3_bytes(content) == digest
    repo.meta.enqueue_jobs([("", digest)])

    real_build = deltas.build_job
    restarted = threading.Event()

    def build_during_outage(*args, **kwargs):  # type: ignore[no-untyped-def]
        rows = real_build(*args, **kwargs)    # the build itself works; recording it meets the outage
        cluster.stop()

        def back_soon() -> None:
            threading.Event().wait(2.0)
            cluster.start()
            restarted.set()
        threading.Thread(target=back_soon, daemon=True).start()
        return rows

    monkeypatch.setattr(deltas, "build_job", build_during_outage)
    owner = deltas.owner_id()
    limits = deltas.limits_for(repo)
    assert deltas.run_one(repo, owner, limits) is False  # nothing recorded: the job was given back
    assert restarted.wait(120)
    states = repo.meta.job_states([("", digest)])
    assert states[("", digest)] == "queued", states  # not 'running' until the lease runs out
    monkeypatch.setattr(deltas, "build_job", real_build)
    assert deltas.run_one(repo, owner, limits) is True
    assert repo.meta.job_states([("", digest)])[("", digest)] == "done"
    repo.meta.close_all()


def test_claim_during_an_outage_backs_off_without_crashing(tmp_path: Path, postgres_url: str,
                                                           cluster: Cluster) -> None:
    repo = open_repo(load_config(tmp_path / "store", metadata_url=postgres_url))
    builder = deltas.DeltaBuilder(repo)
    cluster.stop()
    try:
        assert builder._run_safe() is False  # the outage is a pause, not a crash
        assert builder.backoff > 0
    finally:
        cluster.start()
    assert builder._run_safe() is False      # the queue is empty: nothing to do
    assert builder.backoff == 0
    repo.meta.close_all()


def test_giving_a_job_back_during_an_outage_stops_at_once_when_asked(tmp_path: Path, postgres_url: str,
                                                                   cluster: Cluster) -> None:
    """The retry waits of ``_give_back`` wait on the builder's stop event: a SIGTERM of the
    worker during an outage ends it now, not after the backoff (1+2+4+... s, up to minutes)."""
    repo = open_repo(load_config(tmp_path / "store", metadata_url=postgres_url,
                                 delta_db_backoff_seconds=30.0, delta_db_attempts=5))
    stop = threading.Event()
    ended = threading.Event()

    def give_back() -> None:
        deltas._give_back(repo, deltas.owner_id(), "", "0" * 64, stop)
        ended.set()

    cluster.stop()
    try:
        worker = threading.Thread(target=give_back, daemon=True)
        worker.start()
        assert not ended.wait(1.0)  # the database is down: it waits to try again
        stop.set()
        assert ended.wait(10.0), "_give_back kept sleeping after the stop event was set"
    finally:
        cluster.start()
    repo.meta.close_all()


def _deltacas_connections(admin_url: str, database: str) -> int:
    import psycopg
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = "
                           "'deltacas'", (database,)).fetchone()
    return int(row[0]) if row else 0


def test_the_pool_bounds_connections_and_recovers_from_a_restart(tmp_path: Path, postgres_url: str,
                                                                 cluster: Cluster) -> None:
    """A real `cas serve` with postgres_pool_size = 3: forty concurrent requests use at most
    three connections; while PostgreSQL is down every request is 503 + Retry-After (none 500,
    none hangs past the pool's wait); once it is back the same process answers again."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    database = postgres_url.rsplit("/", 1)[1]
    admin_url = postgres_url.rsplit("/", 1)[0] + "/postgres"
    server = start_server(tmp_path / "store", config=f'metadata_url = "{postgres_url}"\ndelta_builder = false\n'
                                                     'postgres_pool_size = 3\npostgres_pool_timeout_seconds = 1.0\n')
    try:
        with server.client() as http:
            def get(_: int) -> int:  # a client per request: one httpx.Client is not shared by 40 threads
                return httpx.get(server.url + "/v1/products/app/releases", timeout=60).status_code

            # The connections are counted while the forty threads press on the pool: without
            # the bound (one connection per server thread) the peak passes 3; with it, and the
            # load truly concurrent, it reaches more than one.
            peak = 0
            loaded = threading.Event()

            def count() -> None:
                nonlocal peak
                while not loaded.is_set():
                    peak = max(peak, _deltacas_connections(admin_url, database))
                    time.sleep(0.02)

            counter = threading.Thread(target=count, daemon=True)
            counter.start()
            with ThreadPoolExecutor(40) as pool:
                codes = list(pool.map(get, range(400)))
            loaded.set()
            counter.join(10)
            assert set(codes) == {404}, codes  # no such product: every query ran
            assert 2 <= peak <= 3, peak

            cluster.stop()
            try:
                for _ in range(3):
                    started = time.monotonic()
                    r = http.get("/v1/products")
                    assert r.status_code == 503, (r.status_code, r.text)
                    assert r.json()["error"]["code"] == "metadata_unavailable"
                    assert int(r.headers["retry-after"]) > 0
                    assert time.monotonic() - started < 15
            finally:
                cluster.start()
            deadline = time.monotonic() + 30
            codes = []
            while True:
                r = http.get("/v1/products")
                codes.append(r.status_code)
                if r.status_code == 200:
                    break
                assert time.monotonic() < deadline, codes
                time.sleep(0.2)
            assert set(codes) <= {200, 503}, codes
            with ThreadPoolExecutor(10) as pool:
                assert set(pool.map(get, range(50))) == {404}
            assert server.proc.poll() is None  # the same process: nothing restarted
            assert _deltacas_connections(admin_url, database) <= 3  # the pool still bounds them
    finally:
        server.stop()
