"""A local user of the client host against the install root (D10): a root pre-created by
another user or writable by others, state files planted as symlinks or owned by someone
else, and roots too long for a release's paths are refused; nothing is followed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cas

from casformat.paths import MAX_ROOT_BYTES
from client.errors import ClientError
from client.updater import Updater

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files owned by another uid")


@pytest.fixture(scope="module")
def root_document(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("keys") / "store"
    run_cas("keys", "init", "--store", str(store))
    return store / "root.json"


def init(root: Path, root_document: Path) -> Updater:
    return Updater.init(root, ["http://127.0.0.1:9"], "app", "stable", root_document.read_bytes())


def cli_init(root: Path, root_document: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.cli", "init", str(root), "--server", "http://127.0.0.1:9",
                           "--product", "app", "--channel", "stable", "--root", str(root_document)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_init_refuses_a_root_precreated_by_another_user(tmp_path: Path, root_document: Path) -> None:
    root = tmp_path / "app"
    root.mkdir(mode=0o755)
    os.chown(root, NOBODY, NOBODY)
    proc = cli_init(root, root_document)
    assert proc.returncode != 0
    assert "belongs to uid 65534, not to this user" in proc.stderr, proc.stderr
    assert not (root / ".cas").exists()


def test_init_refuses_a_root_writable_by_others(tmp_path: Path, root_document: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    os.chmod(root, 0o777)
    proc = cli_init(root, root_document)
    assert proc.returncode != 0 and "writable by group or others" in proc.stderr, proc.stderr
    assert not (root / ".cas").exists()
    os.chmod(root, 0o755)   # the owner fixes it: init goes through
    assert cli_init(root, root_document).returncode == 0


def test_symlinked_lock_is_refused_and_its_target_untouched(tmp_path: Path, root_document: Path) -> None:
    root = tmp_path / "app"
    up = init(root, root_document)
    victim = tmp_path / "precious"
    victim.write_text("root's precious data\n")
    (root / ".cas" / "lock").unlink(missing_ok=True)
    os.symlink(victim, root / ".cas" / "lock")
    with pytest.raises(ClientError, match="symlink"):
        up.update()
    with pytest.raises(ClientError, match="symlink"):
        up.gc()
    assert victim.read_text() == "root's precious data\n"


def test_state_file_replaced_by_another_user_is_refused(tmp_path: Path, root_document: Path) -> None:
    root = tmp_path / "app"
    up = init(root, root_document)
    planted = root / ".cas" / "root.json"
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(ClientError, match="belongs to uid 65534"):
        up.update()
    with pytest.raises(ClientError, match="belongs to uid 65534"):
        up.check()
    os.chown(planted, 0, 0)
    os.unlink(root / ".cas" / "state.json")
    os.symlink(planted, root / ".cas" / "state.json")   # a state file as a link is never followed
    with pytest.raises(ClientError, match="symlink"):
        up.update()
    assert json.loads(planted.read_text())["signed"]["version"] == 1


def test_root_too_long_for_a_release_is_refused(tmp_path: Path, root_document: Path) -> None:
    root = tmp_path
    while len(os.fsencode(root)) <= MAX_ROOT_BYTES:
        root = root / ("d" * 200)
    with pytest.raises(ClientError, match="install root path is"):
        init(root, root_document)
    assert not root.exists()
