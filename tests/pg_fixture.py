"""A throwaway PostgreSQL for tests, and the metadata backends to parametrize over.

The session starts a private cluster with ``scripts/postgres-test-server.sh`` (Debian's
``postgresql`` package; `.ci/run` installs it) unless ``CAS_TEST_POSTGRES_URL`` names a
server to use instead (its user must be allowed to CREATE DATABASE).  Each test that
asks for ``postgres_url`` gets a database of its own, dropped afterwards.  Without the
binaries the fixture fails, loudly: a skipped backend is an untested one.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "postgres-test-server.sh"
BACKENDS = ("sqlite", "postgres")


@dataclass
class PostgresServer:
    url: str  # a database the test user may CREATE DATABASE from

    def _admin(self):  # type: ignore[no-untyped-def]
        import psycopg
        return psycopg.connect(self.url, autocommit=True)

    def new_database(self) -> str:
        name = f"cas_test_{secrets.token_hex(6)}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep_orphans() -> None:
    """Stop clusters left by test sessions that were killed before their teardown."""
    for owner in Path("/tmp").glob("cas-pg-*/owner.pid"):
        try:
            os.kill(int(owner.read_text()), 0)
            continue
        except ProcessLookupError:
            pass
        except (PermissionError, ValueError, OSError):
            continue
        subprocess.run([str(SCRIPT), "stop", str(owner.parent)], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    given = os.environ.get("CAS_TEST_POSTGRES_URL")
    if given:
        yield PostgresServer(given)
        return
    _sweep_orphans()
    # Outside pytest's own temp dirs: those are private to root, and the cluster runs as `postgres`.
    workdir = tempfile.mkdtemp(prefix="cas-pg-", dir="/tmp")
    (Path(workdir) / "owner.pid").write_text(str(os.getpid()))
    proc = subprocess.run([str(SCRIPT), "start", workdir, str(_free_port())], capture_output=True, text=True,
                          timeout=180)
    if proc.returncode != 0:
        subprocess.run([str(SCRIPT), "stop", workdir], capture_output=True, timeout=60)
        pytest.fail(f"could not start the PostgreSQL test server (apt-get install -y postgresql, or set "
                    f"CAS_TEST_POSTGRES_URL): {proc.stderr.strip()}", pytrace=False)
    try:
        yield PostgresServer(proc.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run([str(SCRIPT), "stop", workdir], capture_output=True, timeout=60)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=BACKENDS)
def metadata_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``metadata_url`` of a fresh metadata store, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return str(request.getfixturevalue("postgres_url"))
