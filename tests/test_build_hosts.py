"""Build hosts (issue 17, item 3): `cas deltas worker` on its own, no HTTP server, on real engines.

Three worker processes, each with a local directory of its own (as on three hosts), point
at one PostgreSQL database and one SeaweedFS bucket. A release pair published with the
local CLI queues its jobs; the workers share the queue (``FOR UPDATE SKIP LOCKED``), each
job is built once, and a worker killed with SIGKILL in the middle of a build loses its job
only for a lease: the others renew theirs while they live, its lease runs out and another
worker builds the job.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from conftest import run_cas
from s3_fixture import S3Server

from cas.processes import stop_process
from fixtures import write_release

LEASE = 4.0
MiB = 1 << 20


class Worker:
    """``cas deltas worker`` in a UTS namespace of its own, named ``home.name``: a host of its
    own as far as job owners go (``host:pid``), so no worker takes another for a dead local one."""

    def __init__(self, home: Path, config: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(config)
        self.home = home
        self.log = open(home.parent / f"{home.name}.log", "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAS_")}
        command = shlex.join([sys.executable, "-m", "cas.cli", "deltas", "worker", "--store", str(home)])
        # unshare and sh exec in place: the pid is the worker's.
        self.proc = subprocess.Popen(["unshare", "--uts", "sh", "-c", f"hostname {home.name} && exec {command}"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)

    @property
    def owner(self) -> str:
        return f"{self.home.name}:{self.proc.pid}"

    def stop(self) -> None:
        stop_process(self.proc, 30)
        self.log.close()


def jobs(url: str) -> list[tuple[str, str, str, int, str]]:
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            "SELECT base, target, state, attempts, COALESCE(owner, '') FROM delta_jobs ORDER BY base, target")]


def file_builds(url: str, owner: str) -> list[tuple[str, str]]:
    """The per-file build jobs ``owner`` is running (not bundle jobs)."""
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            "SELECT base, target FROM delta_jobs WHERE state = 'running' AND owner = %s AND kind = 'files'",
            (owner,))]


def wait_until(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout} s"
        time.sleep(0.05)


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, seaweed_server: S3Server) -> Iterator[tuple[str, str, Path]]:
    bucket = seaweed_server.new_bucket()
    config = (seaweed_server.config(bucket) + f'metadata_url = "{postgres_url}"\ndelta_workers = 1\n'
              f"delta_poll_seconds = 0.2\ndelta_lease_seconds = {LEASE}\n")
    publisher = tmp_path / "publisher"
    publisher.mkdir()
    (publisher / "config.toml").write_text(config)
    run_cas("keys", "init", "--store", str(publisher))
    yield config, postgres_url, publisher


def publish(publisher: Path, trees: list[Path]) -> None:
    key = str(publisher / "keys" / "release.pem")
    for i, tree in enumerate(trees):
        run_cas("publish", str(tree), "--product", "app", "--version", f"1.{i}.0", "--key", key,
                "--status", "released", env={"CAS_STORE": str(publisher)})


def test_workers_on_separate_hosts_share_the_queue_and_build_each_job_once(
        cluster: tuple[str, str, Path], tmp_path: Path) -> None:
    config, url, publisher = cluster
    trees = []
    for i in range(3):
        write_release(tmp_path / f"v{i}", i)
        trees.append(tmp_path / f"v{i}")
    publish(publisher, trees)
    queued = jobs(url)
    assert len(queued) >= 6 and {j[2] for j in queued} == {"queued"}
    workers = [Worker(tmp_path / f"host{i}", config) for i in range(3)]
    try:
        done = wait_until(lambda: (lambda js: js if all(j[2] in ("done", "failed") for j in js) else None)(jobs(url)),
                          180, "all builds")
        assert all(j[2] == "done" for j in done), [j for j in done if j[2] != "done"]
        assert all(j[3] == 1 for j in done), [j for j in done if j[3] != 1]  # each built once
        owners = {j[4] for j in done}
        assert owners <= {w.owner for w in workers}
        assert len(owners) >= 2, owners  # the queue was shared
        for w in workers:
            assert w.proc.poll() is None
            # Nothing but temp space on a build host: no objects, no database, no uploads.
            assert not (w.home / "meta.db").exists()
            assert not any((w.home / "objects").rglob("*")) if (w.home / "objects").exists() else True
    finally:
        for w in workers:
            w.stop()
    # A clean stop hands nothing back half-done, and leaves no temp files behind.
    assert {j[2] for j in jobs(url)} == {"done"}
    for w in workers:
        assert list((w.home / "tmp").iterdir()) == []


def test_a_killed_build_hosts_job_is_built_by_another_after_its_lease(
        cluster: tuple[str, str, Path], tmp_path: Path) -> None:
    config, url, publisher = cluster
    trees = []
    for i in range(2):  # a large file that changes: its patch takes a while to build
        write_release(tmp_path / f"v{i}", i, large_bytes=6 * MiB)
        trees.append(tmp_path / f"v{i}")
    publish(publisher, trees)
    first = Worker(tmp_path / "host0", config)
    others: list[Worker] = []
    try:
        # Killed while it builds a file's patches (a bundle job it claims may be deferred at
        # once, waiting for its pair's per-file builds, and a deferral is not an attempt): what
        # it held is read after it died, when nothing can change it but another host.
        wait_until(lambda: file_builds(url, first.owner), 60, "a file build by the first worker")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        held = [j for j in jobs(url) if j[2] == "running" and j[4] == first.owner]
        assert held, "the first worker held no job when killed"
        # The others are other hosts: none of them re-queues the first one's jobs as a dead
        # local process's at start-up; only the lease can give its job back.
        others = [Worker(tmp_path / f"host{i}", config) for i in (1, 2)]
        victims = {(j[0], j[1]) for j in held}
        # Its last renewal was at most a third of a lease ago: half a lease on, nobody took them.
        time.sleep(LEASE / 2)
        still = {(j[0], j[1]): j for j in jobs(url)}
        assert all(still[p][2] == "running" and still[p][4] == first.owner for p in victims), still
        done = wait_until(lambda: (lambda js: js if all(j[2] in ("done", "failed") for j in js) else None)(jobs(url)),
                          240, "all builds")
        assert all(j[2] == "done" for j in done), [j for j in done if j[2] != "done"]
        by_pair = {(j[0], j[1]): j for j in done}
        for pair in victims:
            job = by_pair[pair]
            assert job[4] in {w.owner for w in others}, job  # rebuilt by a live worker ...
            assert job[3] == 2, job                          # ... once more, not more
        for j in done:
            if (j[0], j[1]) not in victims and j[4] != first.owner:
                assert j[3] == 1, j
        for w in others:
            assert w.proc.poll() is None
    finally:
        first.stop()
        for w in others:
            w.stop()
