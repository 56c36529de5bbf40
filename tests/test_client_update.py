"""The thin client end to end against a real `cas serve`: delta updates, hardlinked
install trees, status/verify/gc, health-check rollback (previous, then factory, then
manual intervention), locally damaged files, the update lock and a full disk.

The server holds 1.0.0, 1.1.0, 1.2.0 (good) and 1.3.0 (its bin/health fails), all
released, with deltas built.  Steps that only set a test up use the library
(``Updater``); the behaviour under test goes through ``cas-client`` (a subprocess).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from conftest import Server, start_server, wait_for_builds
from proc_helpers import fill, tmpfs

from casformat.canonical import document_digest
from client import cli as client_cli
from client.config import ClientConfig
from client.install import tree_problems
from client.installroot import InstallRoot
from client.report import send_report
from client.updater import Updater
from fixtures import write_release

REPO = Path(__file__).resolve().parent.parent
FAST = "delta_poll_seconds = 0.2\n"
GOOD = ["1.0.0", "1.1.0", "1.2.0"]
BAD = "1.3.0"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, release_trees: list[Path]) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("client-update")
    bad = base / "bad"
    write_release(bad, 3, health_ok=False)
    server = start_server(base / "store", config=FAST)
    key = str(server.store / "keys" / "release.pem")
    for version, tree in [*zip(GOOD, release_trees), (BAD, bad)]:
        server.cas("publish", str(tree), "--product", "app", "--version", version, "--key", key,
                   "--status", "released")
    with server.client() as http:
        assert wait_for_builds(http)["counts"]["failed"] == 0
        # The deltas the tests rely on are complete (every recipe built), not just planned.
        deadline = time.monotonic() + 60
        for base, target in (("1.0.0", "1.2.0"), ("1.1.0", "1.2.0")):
            while not http.get(f"/v1/products/app/releases/{target}/delta", params={"from": base}).json()["complete"]:
                assert time.monotonic() < deadline, f"delta {base} -> {target} never completed"
                time.sleep(0.2)
    yield server
    server.stop()


# ---------------------------------------------------------------------- helpers

def cli(*args: Any, timeout: float = 60, env: dict[str, str] | None = None,
        **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})}, **kw)


def update_json(root: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = cli("update", root, "--json", *extra)
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        data = {}
    return proc, data


def init_root(server: Server, root: Path, health: str | None = "bin/health") -> Path:
    args = ["init", root, "--server", server.url, "--product", "app", "--channel", "stable",
            "--root", server.store / "root.json"]
    if health:
        args += ["--health-cmd", health]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    return root


def install(root: Path, *versions: str) -> None:
    """Set-up only: install versions in turn through the library."""
    for version in versions:
        result = Updater(root).update(to=version)
        assert result.outcome == "updated" and result.current == version, result


def channel(server: Server, version: str) -> None:
    server.cas("channel", "set", "app", "stable", version)


def link(root: Path, name: str) -> str | None:
    try:
        target = os.readlink(root / name)
    except FileNotFoundError:
        return None
    assert target.startswith("versions/"), target
    return target.split("/", 1)[1]


def manifest(root: Path, version: str) -> dict[str, Any]:
    return json.loads((root / ".cas" / "manifests" / f"{version}.json").read_text())["signed"]


def problems(root: Path, version: str) -> list[str]:
    return tree_problems(root / "versions" / version, manifest(root, version)["files"])


def damage(path: Path) -> None:
    """Change an installed (read-only) file in place, then restore its mode."""
    mode = stat.S_IMODE(path.stat().st_mode)
    os.chmod(path, mode | stat.S_IWUSR)
    with open(path, "r+b") as fh:
        first = fh.read(1)
        fh.seek(0)
        fh.write(bytes([first[0] ^ 0xFF]) if first else b"x")
    os.chmod(path, mode)


def unique_file(root: Path, version: str) -> Path:
    """A regular file of ``version`` whose inode no other installed version shares."""
    for entry in manifest(root, version)["files"]:
        path = root / "versions" / version / entry["path"]
        if entry["type"] == "file" and entry["size"] > 0 and path.stat().st_nlink == 1:
            return path
    raise AssertionError(f"no unshared file in {version}")


# ---------------------------------------------------------------------- 1. update chain

def test_update_chain_uses_delta_hardlinks_and_reports(srv: Server, tmp_path: Path) -> None:
    root = init_root(srv, tmp_path / "root")
    channel(srv, "1.0.0")
    proc, first = update_json(root)
    assert proc.returncode == 0, proc.stderr
    assert first["outcome"] == "updated" and first["current"] == "1.0.0"
    # A fresh install uses the delta from nothing: compressed forms instead of raw objects.
    assert first["used_delta"] is True and first["bytes_downloaded"] < first["bytes_full"] * 0.8, first
    assert link(root, "current") == "1.0.0" and link(root, "factory") == "1.0.0"
    assert link(root, "previous") is None

    channel(srv, "1.2.0")
    proc, data = update_json(root)
    assert proc.returncode == 0, proc.stderr
    assert data["outcome"] == "updated" and data["from_version"] == "1.0.0" and data["current"] == "1.2.0"
    assert data["used_delta"] is True
    assert data["files_local"] > 0
    assert 0 < data["bytes_downloaded"] < data["bytes_full"] / 5, data
    assert (link(root, "current"), link(root, "previous"), link(root, "factory")) == ("1.2.0", "1.0.0", "1.0.0")

    old, new = manifest(root, "1.0.0"), manifest(root, "1.2.0")
    old_by_path = {e["path"]: e for e in old["files"]}
    old_inodes: dict[str, set[int]] = {}   # content -> inodes holding it in 1.0.0 (dedup links either)
    for e in old["files"]:
        if e["type"] == "file":
            old_inodes.setdefault(e["blake3"], set()).add((root / "versions" / "1.0.0" / e["path"]).stat().st_ino)
    unchanged = 0
    for entry in new["files"]:
        path = root / "versions" / "1.2.0" / entry["path"]
        if entry["type"] == "symlink":
            assert path.is_symlink() and os.readlink(path) == entry["target"]
            continue
        st = path.lstat()
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == entry["mode"] & 0o7555, entry["path"]
        assert st.st_mode & 0o222 == 0, f"{entry['path']} is writable"
        before = old_by_path.get(entry["path"])
        if before and before["type"] == "file" and before["blake3"] == entry["blake3"] \
                and before["mode"] == entry["mode"]:
            assert st.st_ino in old_inodes[entry["blake3"]], f"{entry['path']} is not a hardlink"
            unchanged += 1
    assert unchanged >= 3
    assert any(e["type"] == "symlink" for e in new["files"])
    assert problems(root, "1.2.0") == [] and problems(root, "1.0.0") == []

    verify = cli("verify", root)
    assert verify.returncode == 0 and "intact" in verify.stdout
    status = cli("status", root, "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert (info["current"], info["previous"], info["factory"]) == ("1.2.0", "1.0.0", "1.0.0")
    assert info["update_pending"] is False and info["channel_release"] == "1.2.0"
    assert info["journal"] is None
    # Staging and downloads are cleaned after a successful update.
    assert list((root / ".cas" / "downloads").iterdir()) == []
    assert list((root / ".cas" / "staging").iterdir()) == []

    again, data = update_json(root)
    assert again.returncode == 0 and data["outcome"] == "up_to_date"

    # A damaged tree makes verify fail.
    damage(root / "versions" / "1.2.0" / "bin" / "app")
    bad = cli("verify", root)
    assert bad.returncode == 1 and "DAMAGED" in bad.stdout and "bin/app" in bad.stdout


def test_gc_removes_only_unreferenced_versions(srv: Server, tmp_path: Path) -> None:
    root = init_root(srv, tmp_path / "root")
    install(root, "1.0.0", "1.1.0", "1.2.0")
    assert (link(root, "current"), link(root, "previous"), link(root, "factory")) == ("1.2.0", "1.1.0", "1.0.0")
    proc = cli("gc", root, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"ok": True, "removed": [], "kept": ["1.0.0", "1.1.0", "1.2.0"]}

    # The channel goes back to the factory release: the intact installed tree is reused as is
    # (nothing downloaded, the factory tree never torn down); 1.1.0 is now unreferenced.
    factory_ino = (root / "versions" / "1.0.0" / "bin" / "app").stat().st_ino
    channel(srv, "1.0.0")
    proc, data = update_json(root)
    assert proc.returncode == 0, proc.stderr
    assert data["outcome"] == "updated" and data["bytes_downloaded"] == 0
    assert (root / "versions" / "1.0.0" / "bin" / "app").stat().st_ino == factory_ino
    assert (link(root, "current"), link(root, "previous"), link(root, "factory")) == ("1.0.0", "1.2.0", "1.0.0")

    proc = cli("gc", root, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"ok": True, "removed": ["1.1.0"], "kept": ["1.0.0", "1.2.0"]}
    assert not (root / "versions" / "1.1.0").exists()
    assert not (root / ".cas" / "manifests" / "1.1.0.json").exists()
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["1.0.0", "1.2.0"]
    for version in ("1.0.0", "1.2.0"):
        assert problems(root, version) == []
    assert json.loads(cli("gc", root, "--json").stdout)["removed"] == []


# ---------------------------------------------------------------------- 2. health and rollback

def test_failed_health_rolls_back_to_previous(srv: Server, tmp_path: Path) -> None:
    root = init_root(srv, tmp_path / "root")
    install(root, "1.0.0", "1.1.0", "1.2.0")
    channel(srv, BAD)
    proc, data = update_json(root)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert data["outcome"] == "rolled_back" and data["to_version"] == BAD and data["current"] == "1.2.0"
    assert any("health of 1.3.0: failed" in s for s in data["steps"])
    assert link(root, "current") == "1.2.0" and problems(root, "1.2.0") == []
    # previous is again what it was before the failed update, factory unchanged.
    assert link(root, "previous") == "1.1.0" and link(root, "factory") == "1.0.0"
    assert not (root / ".cas" / "journal.json").exists()
    info = json.loads(cli("status", root, "--json").stdout)
    assert info["update_pending"] is True and info["current"] == "1.2.0"
    # The failed version was removed after the rollback (not kept); its mark stays.
    assert not (root / "versions" / BAD).exists() and BAD not in info["installed"]
    assert [r["version"] for r in info["failed_releases"]] == [BAD]
    assert BAD not in json.loads((root / ".cas" / "state.json").read_text())["installed"]
    assert json.loads(cli("gc", root, "--json").stdout)["removed"] == []

    # Manual rollback to factory works (health checked); previous becomes the version it left.
    proc = cli("rollback", root, "--to", "factory", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {**json.loads(proc.stdout), "from": "1.2.0", "to": "1.0.0",
                                       "previous": "1.2.0", "factory": "1.0.0"}
    assert link(root, "current") == "1.0.0" and cli("verify", root).returncode == 0
    assert (link(root, "previous"), link(root, "factory")) == ("1.2.0", "1.0.0")
    # ... and a damaged target is refused, current and previous untouched.
    damage(unique_file(root, "1.1.0"))
    proc = cli("rollback", root, "--to", "1.1.0")
    assert proc.returncode != 0 and "damaged" in proc.stderr, proc.stderr
    assert (link(root, "current"), link(root, "previous")) == ("1.0.0", "1.2.0")
    proc = cli("rollback", root, "--to", "previous")
    assert proc.returncode == 0, proc.stderr
    assert "previous is now 1.0.0, factory 1.0.0" in proc.stdout
    assert (link(root, "current"), link(root, "previous")) == ("1.2.0", "1.0.0")


def test_manual_rollback_to_previous_toggles_and_a_failing_one_moves_nothing(srv: Server, tmp_path: Path) -> None:
    """previous after a manual rollback is the version it left: `rollback` twice is back where
    it started; a rollback whose target fails its health check changes no link."""
    root = init_root(srv, tmp_path / "root")
    install(root, "1.0.0", "1.1.0", "1.2.0")
    assert cli("rollback", root).returncode == 0
    assert (link(root, "current"), link(root, "previous"), link(root, "factory")) == ("1.1.0", "1.2.0", "1.0.0")
    assert cli("rollback", root).returncode == 0
    assert (link(root, "current"), link(root, "previous"), link(root, "factory")) == ("1.2.0", "1.1.0", "1.0.0")
    proc = cli("rollback", root, "--to", "factory", "--health-cmd", "exit 3")
    assert proc.returncode == 5 and "1.0.0 failed its health check" in proc.stderr, proc.stderr
    assert (link(root, "current"), link(root, "previous"), link(root, "factory")) == ("1.2.0", "1.1.0", "1.0.0")
    proc = cli("rollback", root, "--to", "9.9.9")
    assert proc.returncode == 1 and "9.9.9 is damaged or not installed" in proc.stderr
    assert link(root, "previous") == "1.1.0"


def test_automatic_rollback_to_factory_leaves_no_previous_pointing_at_current(srv: Server,
                                                                              tmp_path: Path) -> None:
    root = init_root(srv, tmp_path / "root")
    install(root, "1.0.0", "1.2.0")                 # previous 1.0.0 = factory
    damage(unique_file(root, "1.2.0"))
    channel(srv, BAD)
    proc, data = update_json(root)
    assert proc.returncode == 2 and data["current"] == "1.0.0", (proc.stdout, proc.stderr)
    # previous was 1.0.0 before the update, which is now current: no previous at all.
    assert (link(root, "current"), link(root, "previous"), link(root, "factory")) == ("1.0.0", None, "1.0.0")
    proc = cli("rollback", root)
    assert proc.returncode == 1 and "there is no previous version" in proc.stderr


def test_keep_versions_after_successful_updates(srv: Server, tmp_path: Path) -> None:
    """After an update the client keeps the keep_versions most recent versions and the
    rollback points by itself; older ones go without `cas-client gc`."""
    root = init_root(srv, tmp_path / "root")
    assert cli("config", "set", root, "keep_versions", "2").returncode == 0
    install(root, "1.1.0", "1.0.0", "1.2.0")        # factory 1.1.0
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["1.0.0", "1.1.0", "1.2.0"]
    proc = cli("update", root, "--to", BAD, "--health-cmd", "true")   # passes under this check
    assert proc.returncode == 0, proc.stderr
    # Kept: the 2 most recent (1.3.0, 1.2.0 = previous) and the factory 1.1.0; 1.0.0 removed.
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["1.1.0", "1.2.0", BAD]
    assert not (root / ".cas" / "manifests" / "1.0.0.json").exists()
    assert "removed 1.0.0" in proc.stderr
    assert sorted(json.loads((root / ".cas" / "state.json").read_text())["installed"]) == ["1.1.0", "1.2.0", BAD]
    # keep_versions 0: nothing is removed automatically.
    assert cli("config", "set", root, "keep_versions", "0").returncode == 0
    assert cli("update", root, "--to", "1.0.0").returncode == 0
    assert cli("update", root, "--to", "1.2.0").returncode == 0
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["1.0.0", "1.1.0", "1.2.0", BAD]


def test_failed_release_is_remembered_and_not_swapped_to_again(srv: Server, tmp_path: Path) -> None:
    """A release that failed its health check is skipped on the next runs (by manifest
    digest) until the owner passes --retry-failed or the operator publishes another."""
    root = init_root(srv, tmp_path / "root")
    install(root, "1.0.0", "1.2.0")
    channel(srv, BAD)
    proc, data = update_json(root)
    assert proc.returncode == 2 and data["outcome"] == "rolled_back", (proc.stdout, proc.stderr)
    with srv.client() as http:   # the failed tree (and its cached manifest) were removed: ask the server
        bad_digest = document_digest(http.get(f"/v1/products/app/releases/{BAD}/manifest").json()["signed"])

    proc, data = update_json(root)
    assert proc.returncode == 0, proc.stderr
    assert data["outcome"] == "skipped_failed" and data["current"] == "1.2.0"
    assert "--retry-failed" in data["steps"][0]
    assert link(root, "current") == "1.2.0" and link(root, "previous") == "1.0.0"
    info = json.loads(cli("status", root, "--json").stdout)
    assert [(r["version"], r["manifest"]) for r in info["failed_releases"]] == [(BAD, bad_digest)]
    assert "failed    1.3.0" in cli("status", root).stdout

    # The owner asks for another try: it is swapped to, fails and is rolled back again.
    proc, data = update_json(root, "--retry-failed")
    assert proc.returncode == 2 and data["outcome"] == "rolled_back", (proc.stdout, proc.stderr)
    assert update_json(root)[1]["outcome"] == "skipped_failed"
    # The operator moves the channel on: that release is installed as usual.
    channel(srv, "1.1.0")
    proc, data = update_json(root)
    assert proc.returncode == 0 and data["outcome"] == "updated" and link(root, "current") == "1.1.0"


def test_reports_list_the_failed_releases() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(202)

    config = ClientConfig(servers=("http://origin.invalid",), product="app", channel="stable", client_id="c1")
    marks = [{"version": BAD, "manifest": "ab" * 32, "at": 1.0, "detail": "exit 1"}]
    asyncio.run(send_report(config, "rolled_back", "1.2.0", BAD, "health failed", lambda m: None,
                            httpx.MockTransport(handler), marks))
    assert bodies[0]["failed_releases"] == [{"version": BAD, "manifest": "ab" * 32}]


def test_damaged_previous_is_skipped_for_factory(srv: Server, tmp_path: Path) -> None:
    root = init_root(srv, tmp_path / "root")
    install(root, "1.0.0", "1.2.0")
    damage(unique_file(root, "1.2.0"))
    channel(srv, BAD)
    proc, data = update_json(root)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert data["outcome"] == "rolled_back" and data["current"] == "1.0.0"
    assert "skipped 1.2.0: damaged" in data["steps"]
    assert link(root, "current") == "1.0.0" and problems(root, "1.0.0") == []
    assert link(root, "factory") == "1.0.0"


def test_everything_failing_needs_manual_intervention(srv: Server, tmp_path: Path) -> None:
    root = init_root(srv, tmp_path / "root")
    install(root, "1.0.0", "1.2.0")
    channel(srv, BAD)
    proc = cli("update", root, "--health-cmd", "exit 1")
    assert proc.returncode == 6, (proc.stdout, proc.stderr)
    assert "manual intervention" in proc.stderr
    assert link(root, "current") == "1.2.0" and problems(root, "1.2.0") == []
    assert not (root / ".cas" / "journal.json").exists()


def test_failed_first_install_does_not_become_factory(srv: Server, tmp_path: Path) -> None:
    root = init_root(srv, tmp_path / "root")
    channel(srv, BAD)
    proc = cli("update", root)
    assert proc.returncode == 6, (proc.stdout, proc.stderr)
    assert link(root, "factory") is None
    # A later good release becomes the factory one.
    channel(srv, "1.2.0")
    proc, data = update_json(root)
    assert proc.returncode == 0, proc.stderr
    assert link(root, "factory") == "1.2.0" and link(root, "current") == "1.2.0"


# ---------------------------------------------------------------------- 3. local modifications

def test_locally_modified_files_are_never_reused(srv: Server, tmp_path: Path) -> None:
    root = init_root(srv, tmp_path / "root")
    install(root, "1.0.0", "1.1.0")
    cur = manifest(root, "1.1.0")
    with srv.client(None) as http:
        nxt = http.get("/v1/products/app/releases/1.2.0/manifest").json()["signed"]
        delta = http.get("/v1/products/app/releases/1.2.0/delta", params={"from": "1.1.0"}).json()
    app_old = next(e for e in cur["files"] if e["path"] == "bin/app")
    app_new = next(e for e in nxt["files"] if e["path"] == "bin/app")
    # Precondition: the delta offers a patch of bin/app whose base is 1.1.0's bin/app.
    assert any(r["kind"] == "patch" and r["base"] == app_old["blake3"] for r in delta["recipes"][app_new["blake3"]])
    # A file 1.2.0 keeps unchanged (same path, content and mode).
    new_by_path = {e["path"]: e for e in nxt["files"]}
    same = next(e for e in cur["files"] if e["type"] == "file" and e["size"] > 0 and e["path"] != "bin/app"
                and new_by_path.get(e["path"], {}).get("blake3") == e["blake3"]
                and new_by_path[e["path"]]["mode"] == e["mode"])
    for rel in ("bin/app", same["path"]):
        damage(root / "versions" / "1.1.0" / rel)   # also hits other versions sharing the inode
    damaged_ino = (root / "versions" / "1.1.0" / same["path"]).stat().st_ino

    channel(srv, "1.2.0")
    proc = cli("update", root)     # human output: recipe fallbacks are logged on stderr
    assert proc.returncode == 0, proc.stderr
    assert "recipe failed" not in proc.stderr, proc.stderr   # the damaged base was never tried
    assert link(root, "current") == "1.2.0"
    assert problems(root, "1.2.0") == []
    assert cli("verify", root).returncode == 0
    assert (root / "versions" / "1.2.0" / same["path"]).stat().st_ino != damaged_ino


# ---------------------------------------------------------------------- 4. the lock

def test_second_update_exits_at_once_while_locked(srv: Server, tmp_path: Path) -> None:
    root = init_root(srv, tmp_path / "root")
    install(root, "1.0.0")
    channel(srv, "1.2.0")
    holder = InstallRoot(root)
    holder.lock()
    try:
        started = time.monotonic()
        proc = cli("update", root)
        assert proc.returncode == 3, (proc.stdout, proc.stderr)
        assert "already in progress" in proc.stderr
        assert time.monotonic() - started < 10
        assert cli("gc", root).returncode == 3
        assert cli("rollback", root, "--to", "factory").returncode == 3
        assert link(root, "current") == "1.0.0" and not (root / ".cas" / "journal.json").exists()
    finally:
        holder.unlock()
    proc = cli("update", root)
    assert proc.returncode == 0, proc.stderr
    assert link(root, "current") == "1.2.0"


# ---------------------------------------------------------------------- 6. disk full

@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "mnt", "1200k") as mnt:
        yield mnt


def test_disk_full_preflight_and_staging(srv: Server, tmp_path: Path, small_fs: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    prepared = init_root(srv, tmp_path / "prepared")
    install(prepared, "1.0.0")
    root = small_fs / "root"
    subprocess.run(["cp", "-a", str(prepared), str(root)], check=True)
    assert problems(root, "1.0.0") == []
    channel(srv, "1.2.0")
    filler = fill(small_fs, 64 << 10)

    # Preflight: a real small filesystem; refused before anything is written.
    proc = cli("update", root)
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    assert "bytes free" in proc.stderr and "needed" in proc.stderr
    assert link(root, "current") == "1.0.0" and problems(root, "1.0.0") == []
    assert not (root / ".cas" / "journal.json").exists()
    assert not (root / "versions" / "1.2.0").exists()

    # Staging: the preflight is fooled (it believes the disk is empty); the writes hit ENOSPC.
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 40))
    code = client_cli.main(["update", str(root)])
    err = capsys.readouterr().err
    assert code == 4, err
    assert "disk full" in err and "No space left" in err
    monkeypatch.undo()
    assert link(root, "current") == "1.0.0" and problems(root, "1.0.0") == []
    assert not (root / "versions" / "1.2.0").exists()
    assert list((root / ".cas" / "staging").iterdir()) == []   # the half-built tree is gone
    assert not (root / ".cas" / "journal.json").exists()

    # With space again, the update completes.
    filler.unlink()
    proc = cli("update", root)
    assert proc.returncode == 0, proc.stderr
    assert link(root, "current") == "1.2.0" and problems(root, "1.2.0") == []


# ---------------------------------------------------------------------- unprivileged user

def test_update_without_dac_override(srv: Server, tmp_path: Path) -> None:
    """Root bypasses file permissions: run the client without CAP_DAC_OVERRIDE, so that a
    read-only file (an installed or staged one) cannot be opened for writing, as for any user.
    (Run as another user, the client has no such capability to begin with.)"""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root's capabilities"
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
        probe = subprocess.run([*prefix, "true"], capture_output=True)
        assert probe.returncode == 0, f"cannot drop capabilities: {probe.stderr!r}"
    root = tmp_path / "root"
    init_root(srv, root, health=None)

    def run(*args: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, sys.executable, "-m", "client.cli", *map(str, args)],
                              capture_output=True, text=True, timeout=60, cwd=REPO)

    for version in ("1.0.0", "1.2.0"):
        proc = run("update", root, "--to", version)
        assert proc.returncode == 0, proc.stderr
        assert link(root, "current") == version and problems(root, version) == []
    assert run("gc", root).returncode == 0
