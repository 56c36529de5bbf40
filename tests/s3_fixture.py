"""An S3-compatible server for tests: moto's server mode on a free loopback port.

moto (``moto[server]`` from PyPI, in the ``test`` extra) is pure Python and starts in
about a second, so every test session gets a private one; each test makes its own
bucket.  Credentials are dummies set in the environment (the S3 backend reads them
from there, as in production), and inherited by every ``cas`` process a test starts.
See docs/architecture.md ("Object stores") for why moto rather than Ceph radosgw.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from cas.processes import stop_process

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "deltacas-test", "AWS_SECRET_ACCESS_KEY": "deltacas-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint: str
    region: str = "us-east-1"

    def client(self) -> Any:
        import boto3
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name=self.region)

    def new_bucket(self) -> str:
        name = f"cas-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def config(self, bucket: str, prefix: str = "deltacas", **extra: Any) -> str:
        """``config.toml`` lines for a store on this server."""
        lines = ['object_store = "s3"', f's3_endpoint = "{self.endpoint}"', f's3_bucket = "{bucket}"',
                 f's3_prefix = "{prefix}"', f's3_region = "{self.region}"']
        for key, value in extra.items():
            lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value)}")
        return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    port = _free_port()
    log_path = Path(tmp_path_factory.mktemp("moto")) / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited: {log_path.read_text()}")
            try:
                if httpx.get(endpoint + "/moto-api/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("moto server did not start")
            time.sleep(0.1)
        yield S3Server(endpoint)
    finally:
        stop_process(proc)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
