"""The whole scale-out topology on one machine (issue 17, item 6), every part real:

nginx balancing two `cas serve` replicas (separate local store directories, no delta
worker of their own), PostgreSQL, SeaweedFS, and a separate `cas deltas worker` build
host. Releases are published through nginx (uploads spread over both replicas); a
`cas-client` updates through nginx while one replica is killed and restarted in the
middle of its download, and finishes with the right tree; a release published while
that replica is down is served by both once it is back; nothing published is lost.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import ADMIN, PUBLISH, READ, REPORT, free_port, run_cas
from nginx_fixture import Nginx, start_nginx
from s3_fixture import S3Server

from cas.processes import stop_process
from fixtures import write_release

MiB = 1 << 20


class Replica:
    """`cas serve` on a fixed port (so nginx's upstream stays valid across a restart)."""

    def __init__(self, store: Path, port: int) -> None:
        self.store, self.port = store, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "CAS_ADMIN_TOKEN": ADMIN, "CAS_PUBLISH_TOKEN": PUBLISH, "CAS_READ_TOKEN": READ,
               "CAS_REPORT_TOKEN": REPORT}
        log = open(self.store.parent / f"{self.store.name}-{time.monotonic_ns()}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "cas.cli", "serve", "--store", str(self.store),
                                      "--port", str(self.port)], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"replica {self.store.name} exited"
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"replica {self.store.name} did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 20)


def start_topology_nginx(workdir: Path, replicas: list[Replica]) -> Nginx:
    """nginx balancing the replicas (tests/nginx_fixture.py runs it), object downloads slowed."""
    port = free_port()
    servers = "\n".join(f"    server 127.0.0.1:{r.port} max_fails=1 fail_timeout=2s;" for r in replicas)
    site = f"""
upstream deltacas {{
{servers}
    keepalive 16;
}}
server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_next_upstream error timeout http_502 http_503;
    proxy_connect_timeout 2s;
    location /v1/objects/ {{
        proxy_pass http://deltacas;
        proxy_buffering off;
        limit_rate 512k;            # slow downloads: the kill lands in the middle of one
    }}
    location / {{
        proxy_pass http://deltacas;
    }}
}}
"""
    return start_nginx(workdir, site, port)


def client(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def same_tree(installed: Path, source: Path) -> None:
    def listing(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_symlink() or p.is_file())
    assert listing(installed) == listing(source)
    for rel in listing(source):
        a, b = installed / rel, source / rel
        if b.is_symlink():
            assert a.is_symlink() and os.readlink(a) == os.readlink(b), rel
        else:
            assert a.read_bytes() == b.read_bytes(), rel


@pytest.fixture
def topology(tmp_path: Path, postgres_url: str, seaweed_server: S3Server
             ) -> Iterator[tuple[list[Replica], str, subprocess.Popen[bytes], str]]:
    bucket = seaweed_server.new_bucket()
    config = (seaweed_server.config(bucket, delta_builder=False) + f'metadata_url = "{postgres_url}"\n'
              "delta_poll_seconds = 0.2\ndelta_workers = 1\n")
    stores = [tmp_path / "replica-a", tmp_path / "replica-b", tmp_path / "build-host"]
    for store in stores:
        store.mkdir()
        (store / "config.toml").write_text(config)
    run_cas("keys", "init", "--store", str(stores[0]))
    shutil.copytree(stores[0] / "keys", stores[1] / "keys")  # the replicas share keys and nothing local
    replicas = [Replica(stores[0], free_port()), Replica(stores[1], free_port())]
    worker_log = open(tmp_path / "build-host.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "cas.cli", "deltas", "worker", "--store", str(stores[2])],
                              stdout=worker_log, stderr=subprocess.STDOUT,
                              env={k: v for k, v in os.environ.items() if not k.startswith("CAS_")})
    nginx = None
    try:
        for r in replicas:
            r.start()
        (tmp_path / "nginx").mkdir()
        nginx = start_topology_nginx(tmp_path / "nginx", replicas)
        url = nginx.url
        yield replicas, url, worker, str(stores[0] / "keys" / "release.pem")
    finally:
        if nginx is not None:
            nginx.stop()
        for r in replicas:
            r.stop()
        stop_process(worker, 30)
        worker_log.close()


def wait_for_builds(url: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as http:
        while True:
            status = http.get("/v1/admin/deltas").json()
            counts = status["counts"]
            if counts["queued"] == 0 and counts["running"] == 0 and counts["done"] > 0:
                return status
            assert time.monotonic() < deadline, counts
            time.sleep(0.3)


@pytest.mark.timeout(600)
def test_a_client_updates_through_nginx_while_a_replica_is_killed_and_restarted(
        topology: tuple[list[Replica], str, subprocess.Popen[bytes], str], tmp_path: Path) -> None:
    (a, b), url, worker, key = topology
    env = {"CAS_SERVER": url, "CAS_TOKEN": ADMIN}
    trees = [tmp_path / "v0", tmp_path / "v1", tmp_path / "v2"]
    for i, tree in enumerate(trees):
        write_release(tree, i)
    # 1.1.0 brings a new 12 MiB file no delta can shrink: at 512 KiB/s the download takes seconds.
    (trees[1] / "share" / "blob.bin").parent.mkdir(parents=True, exist_ok=True)
    (trees[1] / "share" / "blob.bin").write_bytes(os.urandom(12 * MiB))
    for version, tree in (("1.0.0", trees[0]), ("1.1.0", trees[1])):
        run_cas("publish", str(tree), "--product", "app", "--version", version, "--key", key,
                "--status", "released", env=env)
    status = wait_for_builds(url)
    assert status["counts"]["failed"] == 0, status
    assert worker.poll() is None  # the separate build host built them: the replicas run no worker

    root = tmp_path / "device"
    init = client("init", root, "--server", url, "--product", "app", "--channel", "stable",
                  "--root", a.store / "root.json")
    assert init.returncode == 0, init.stderr
    run_cas("channel", "set", "app", "stable", "1.0.0", env=env)
    first = client("update", root, "--json")
    assert first.returncode == 0, first.stderr
    same_tree(root / "current", trees[0])

    run_cas("channel", "set", "app", "stable", "1.1.0", env=env)
    update = subprocess.Popen([sys.executable, "-m", "client.cli", "update", str(root), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # the update has started (its channel and delta reads): kill A under it
    assert update.poll() is None, ("the update finished before the replica was killed", update.communicate())
    a.kill()
    # While A is down: nginx sends everything to B, and a publish through it lands whole.
    run_cas("publish", str(trees[2]), "--product", "app", "--version", "1.2.0", "--key", key,
            "--status", "released", env=env)
    time.sleep(1.0)
    a.start()
    out, err = update.communicate(timeout=300)
    assert update.returncode == 0, err
    result = json.loads(out)
    assert result["outcome"] == "updated" and result["current"] == "1.1.0", result
    same_tree(root / "current", trees[1])

    # Nothing published is lost: both replicas (A restarted) answer every release alike.
    wait_for_builds(url)
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        answers = [httpx.get(f"{r.url}/v1/products/app/releases/{version}/manifest", timeout=30) for r in (a, b)]
        assert [x.status_code for x in answers] == [200, 200], version
        assert answers[0].content == answers[1].content
    run_cas("channel", "set", "app", "stable", "1.2.0", env=env)
    last = client("update", root, "--json")
    assert last.returncode == 0, last.stderr
    same_tree(root / "current", trees[2])
    fsck = run_cas("fsck", "--json", env={"CAS_STORE": str(b.store)})
    assert '"corrupt": []' in fsck.stdout
    # Object downloads went through both replicas.
    log = (tmp_path / "nginx" / "access.log").read_text().splitlines()
    used = {addr for line in log if "/v1/objects/" in line for addr in re.findall(r"127\.0\.0\.1:\d+", line)}
    assert {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"} <= used, used
