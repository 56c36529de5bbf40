"""gzip-inner end to end: a real `cas serve` builds it for changed .gz files of a release,
and `cas-client` updates through it to the exact bytes.

Two releases with a changelog compressed by GNU ``gzip -9n`` (as Debian packages ship
them) and a man page compressed by Python's ``gzip`` module at level 9, each changed by a
prepended entry; the server's delta offers gzip-inner first for both.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import Server, start_server, wait_for_builds
from test_deltagen_gzip_inner import NEW_TEXT, OLD_TEXT, changelog, gnu_gzip, python_gzip

from deltagen.digests import blake3_bytes

REPO = Path(__file__).resolve().parent.parent
MAN_OLD = changelog(7, 800)
MAN_NEW = MAN_OLD[:20_000] + b".SH NEW OPTION\n--gzip-inner\n" + MAN_OLD[20_000:]


def _release(root: Path, changelog_gz: bytes, man_gz: bytes, version: str) -> None:
    (root / "usr/share/doc/app").mkdir(parents=True)
    (root / "usr/share/man/man1").mkdir(parents=True)
    (root / "usr/share/doc/app/changelog.gz").write_bytes(changelog_gz)
    (root / "usr/share/man/man1/app.1.gz").write_bytes(man_gz)
    (root / "VERSION").write_text(version + "\n")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, bytes]]]:
    base = tmp_path_factory.mktemp("gzip-inner-e2e")
    new_files = {"usr/share/doc/app/changelog.gz": gnu_gzip(NEW_TEXT),
                 "usr/share/man/man1/app.1.gz": python_gzip(MAN_NEW, "app.1")}
    _release(base / "r1", gnu_gzip(OLD_TEXT), python_gzip(MAN_OLD, "app.1"), "1.0.0")
    _release(base / "r2", *new_files.values(), "1.1.0")
    server = start_server(base / "store", config="delta_poll_seconds = 0.2\n")
    key = str(server.store / "keys" / "release.pem")
    for version, tree in (("1.0.0", base / "r1"), ("1.1.0", base / "r2")):
        server.cas("publish", str(tree), "--product", "app", "--version", version, "--key", key,
                   "--status", "released")
    with server.client() as http:
        assert wait_for_builds(http)["counts"]["failed"] == 0
        deadline = time.monotonic() + 60
        while not http.get("/v1/products/app/releases/1.1.0/delta", params={"from": "1.0.0"}).json()["complete"]:
            assert time.monotonic() < deadline, "delta 1.0.0 -> 1.1.0 never completed"
            time.sleep(0.2)
    yield server, new_files
    server.stop()


def cli(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=dict(os.environ))


def test_server_offers_gzip_inner_first_for_changed_gzip_files(srv: tuple[Server, dict[str, bytes]]) -> None:
    server, new_files = srv
    with server.client(None) as http:
        delta = http.get("/v1/products/app/releases/1.1.0/delta", params={"from": "1.0.0"}).json()
    for path, data in new_files.items():
        recipes = delta["recipes"][blake3_bytes(data)]
        single = [r for r in recipes if r["kind"] != "bundle"]
        assert single[0]["kind"] == "patch" and single[0]["algorithm"] == "gzip-inner", (path, recipes)
        assert single[0]["size"] * 10 < len(data), (path, recipes)
        assert single[-1]["kind"] == "raw"


def test_client_updates_through_gzip_inner_to_the_exact_bytes(srv: tuple[Server, dict[str, bytes]],
                                                              tmp_path: Path) -> None:
    server, new_files = srv
    root = tmp_path / "root"
    proc = cli("init", root, "--server", server.url, "--product", "app", "--channel", "stable",
               "--root", server.store / "root.json")
    assert proc.returncode == 0, proc.stderr
    for version in ("1.0.0", "1.1.0"):
        server.cas("channel", "set", "app", "stable", version)
        if version == "1.1.0":
            # What a client killed in the middle of a gzip-inner apply leaves beside the patch:
            # the next update clears it with the other downloads.
            leftover = root / ".cas" / "downloads" / ".gzip-inner-killed"
            leftover.mkdir(parents=True)
            (leftover / "old").write_bytes(OLD_TEXT)
        proc = cli("update", root, "--json")
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert data["outcome"] == "updated" and data["current"] == version, data
    assert data["from_version"] == "1.0.0" and data["used_delta"] is True
    # two gzip-inner patches of a few hundred bytes, not the two .gz files (~25 KB)
    assert data["bytes_downloaded"] < sum(map(len, new_files.values())) / 5, data
    for path, expected in new_files.items():
        assert (root / "versions" / "1.1.0" / path).read_bytes() == expected, path
    assert not leftover.exists()
