"""`cas publish` refuses trees a manifest cannot hold, with a one-line reason and exit 1."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import time
from pathlib import Path

import pytest
from conftest import run_cas, store_snapshot


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("cli") / "store"
    run_cas("keys", "init", "--store", str(store))
    return store


@pytest.fixture
def tree(tmp_path: Path, release_trees: list[Path]) -> Path:
    dest = tmp_path / "tree"
    shutil.copytree(release_trees[0], dest, symlinks=True)
    return dest


def _mkfifo(tree: Path) -> None:
    os.mkfifo(tree / "share" / "pipe")


def _device(tree: Path) -> None:
    try:
        os.mknod(tree / "share" / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.fail("creating a device node needs root; the suite runs as root, as CI does")


def _socket(tree: Path) -> None:
    # Bound by a relative name: a unix socket path is limited to ~108 bytes, tmp paths are not.
    with contextlib.chdir(tree):
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("s")
        sock.close()


def _link(target: str, where: str = "lib/escape") -> object:
    return lambda tree: os.symlink(target, tree / where)


def _chain(tree: Path) -> None:
    os.symlink("..", tree / "share" / "up")  # inside on its own (the tree root)
    os.symlink("share/up/../outside", tree / "esc")  # lexically 'outside', really ../outside


def _backslash(tree: Path) -> None:
    (tree / "share" / "a\\b").write_bytes(b"x")


def _newline(tree: Path) -> None:
    (tree / "share" / "a\nb").write_bytes(b"x")


def _non_utf8(tree: Path) -> None:
    with open(os.fsencode(tree / "share") + b"/caf\xe9", "wb") as fh:
        fh.write(b"latin-1 name")


BAD_TREES = {
    "fifo": (_mkfifo, "not a regular file"),
    "device": (_device, "not a regular file"),
    "socket": (_socket, "not a regular file"),
    "symlink-dotdot": (_link("../../etc"), "outside the tree"),
    "symlink-absolute": (_link("/etc/passwd"), "absolute"),
    "symlink-deep-dotdot": (_link("../lib/../../../x", "lib/deep"), "outside the tree"),
    "symlink-dir-escape": (_link("../..", "share/up"), "outside the tree"),
    "symlink-chain-escape": (_chain, "through other symlinks"),
    "backslash-name": (_backslash, "backslash"),
    "newline-name": (_newline, "control"),
    "non-utf8-name": (_non_utf8, "UTF-8"),
}


@pytest.mark.parametrize("name", list(BAD_TREES))
def test_publish_refuses_unpublishable_trees(store: Path, tree: Path, name: str) -> None:
    make, reason = BAD_TREES[name]
    make(tree)
    before = store_snapshot(store)
    result = run_cas("publish", str(tree), "--product", "app", "--version", "1.0.0", "--store", str(store),
                     check=False, timeout=60)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cas: error: ") and reason in lines[0], lines
    assert "Traceback" not in result.stderr
    assert store_snapshot(store) == before


def test_publish_refuses_a_missing_or_file_dir(store: Path, tmp_path: Path) -> None:
    for target in (tmp_path / "nope", Path(__file__)):
        result = run_cas("publish", str(target), "--product", "app", "--version", "1.0.0", "--store",
                         str(store), check=False)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("version", ["-x", "..", "a b", "1/2"])
def test_publish_refuses_bad_version_names(store: Path, tree: Path, version: str) -> None:
    result = run_cas("publish", str(tree), "--product", "app", f"--version={version}", "--store", str(store),
                     check=False)
    assert result.returncode == 1, result
    assert result.stderr.startswith("cas: error: ") and "Traceback" not in result.stderr, result.stderr


def test_publish_inside_symlinks_and_checkout(store: Path, tree: Path, tmp_path: Path) -> None:
    os.symlink("../share/doc", tree / "bin" / "docs")  # a symlink to a directory inside the tree
    published = json.loads(run_cas("publish", str(tree), "--product", "app", "--version", "2.0.0",
                                   "--store", str(store), "--json").stdout)
    assert published["created"]
    out = tmp_path / "out"
    run_cas("checkout", "app", "2.0.0", str(out), "--store", str(store))
    assert os.readlink(out / "bin" / "docs") == "../share/doc"
    assert (out / "bin" / "docs" / "README.txt").read_bytes() == (tree / "share/doc/README.txt").read_bytes()


def test_republish_same_tree_later_is_idempotent(store: Path, tree: Path) -> None:
    """`created` differs between runs; the same tree under the same version is still 'already published'."""
    args = ("publish", str(tree), "--product", "app", "--version", "3.0.0", "--store", str(store), "--json")
    first = json.loads(run_cas(*args).stdout)
    time.sleep(1.1)  # the manifest timestamp has one-second resolution
    again = json.loads(run_cas(*args).stdout)
    assert first["created"] is True and again["created"] is False
    assert again["manifest"] == first["manifest"] and again["uploaded_objects"] == 0
    (tree / "etc" / "app.conf").write_bytes(b"changed\n")
    clash = run_cas(*args, check=False)
    assert clash.returncode == 1 and "different content" in clash.stderr


def test_checkout_has_its_own_inodes_and_hardlinks_are_named_by_fsck(tree: Path, tmp_path: Path) -> None:
    """A default checkout reflinks or copies: a write into it leaves the object intact (fsck
    clean).  `--hardlink` shares the store's files, warns, and is recorded, so when a write
    through it damages an object `cas fsck` names that checkout."""
    own = tmp_path / "own-store"
    run_cas("keys", "init", "--store", str(own))
    run_cas("publish", str(tree), "--product", "app", "--version", "4.0.0", "--store", str(own))
    readme = Path("share/doc/README.txt")
    original = (tree / readme).read_bytes()
    obj = next(p for p in (own / "objects").rglob("*") if p.is_file() and p.read_bytes() == original)

    copy = tmp_path / "copy"
    made = run_cas("checkout", "app", "4.0.0", str(copy), "--store", str(own), "--json")
    assert json.loads(made.stdout)["linked"] == 0 and "warning" not in made.stderr
    assert os.stat(copy / readme).st_ino != os.stat(obj).st_ino
    os.chmod(copy / readme, 0o644)
    (copy / readme).write_bytes(b"changed in the checkout\n")
    assert obj.read_bytes() == original
    assert run_cas("fsck", "--store", str(own), check=False).returncode == 0

    linked = tmp_path / "linked"
    made = run_cas("checkout", "app", "4.0.0", str(linked), "--store", str(own), "--hardlink", "--json")
    assert json.loads(made.stdout)["linked"] > 0 and "warning: --hardlink" in made.stderr
    assert os.stat(linked / readme).st_ino == os.stat(obj).st_ino
    os.chmod(linked / readme, 0o644)                 # (the object's mode too: one inode)
    (linked / readme).write_bytes(b"corrupted through a hardlink checkout\n")
    human = run_cas("fsck", "--store", str(own), "--no-quarantine", check=False)
    assert human.returncode == 1 and f"shares its inode with {linked.resolve()}/{readme}" in human.stdout
    fsck = run_cas("fsck", "--store", str(own), "--json", check=False)
    assert fsck.returncode == 1
    report = json.loads(fsck.stdout)
    assert len(report["corrupt"]) == 1
    assert report["damaged_in_checkouts"] == [{"digest": report["corrupt"][0], "checkout": str(linked.resolve()),
                                               "product": "app", "version": "4.0.0", "path": str(readme)}]


def test_fsck_checks_the_per_mode_variants_of_hardlink_checkouts(tree: Path, tmp_path: Path) -> None:
    """An executable in a `--hardlink` checkout links a per-mode copy of its object
    (STORE/variants/555/...), not the object: a write through it damages the variant, which
    later hardlink checkouts would share.  `cas fsck` re-hashes the variants, names the damaged
    one and the checkout sharing it, quarantines it, and the next checkout makes it afresh."""
    own = tmp_path / "own-store"
    run_cas("keys", "init", "--store", str(own))
    run_cas("publish", str(tree), "--product", "app", "--version", "4.0.0", "--store", str(own))
    app = Path("bin/app")
    original = (tree / app).read_bytes()
    linked = tmp_path / "linked"
    run_cas("checkout", "app", "4.0.0", str(linked), "--store", str(own), "--hardlink")
    [variant] = [p for p in (own / "variants").rglob("*") if p.is_file() and p.read_bytes() == original]
    assert variant.parent.parent.name == "555" and os.stat(linked / app).st_ino == os.stat(variant).st_ino
    assert run_cas("fsck", "--store", str(own), check=False).returncode == 0   # clean so far

    os.chmod(linked / app, 0o755)
    (linked / app).write_bytes(b"#!/bin/sh\necho corrupted through a hardlink checkout\n")
    human = run_cas("fsck", "--store", str(own), "--no-quarantine", check=False)
    assert human.returncode == 1, human.stdout
    digest = variant.parent.name + variant.name
    assert f"corrupt variant 555 of {digest}" in human.stdout
    assert f"variant 555 of {digest} shares its inode with {linked.resolve()}/{app}" in human.stdout
    assert variant.exists()                                                      # --no-quarantine: left
    fsck = run_cas("fsck", "--store", str(own), "--json", check=False)
    assert fsck.returncode == 1
    report = json.loads(fsck.stdout)
    assert report["corrupt"] == []                                               # the object is intact
    assert [v["digest"] for v in report["variants"]["corrupt"]] == [digest]
    assert report["damaged_in_checkouts"] == [{"digest": digest, "variant": "555", "checkout": str(linked.resolve()),
                                               "product": "app", "version": "4.0.0", "path": str(app)}]
    assert not variant.exists() and len(report["variants"]["quarantined"]) == 1
    again = tmp_path / "again"
    run_cas("checkout", "app", "4.0.0", str(again), "--store", str(own), "--hardlink")
    assert (again / app).read_bytes() == original                                # made again from the object
    assert run_cas("fsck", "--store", str(own), check=False).returncode == 0


def test_publish_to_a_closed_port_is_one_line_after_retries(tree: Path, tmp_path: Path) -> None:
    """Issue 14 item 5: an unreachable server is retried (bounded) and then one line with its
    code and exit status 1, never a traceback (the first request bypassed the retrying helper)."""
    from conftest import free_port
    key = tmp_path / "release.pem"
    run_cas("keys", "init", "--store", str(tmp_path / "keystore"))
    key.write_bytes((tmp_path / "keystore" / "keys" / "release.pem").read_bytes())
    result = run_cas("publish", str(tree), "--product", "app", "--version", "1.0.0", "--key", str(key),
                     "--server", f"http://127.0.0.1:{free_port()}", "--token", "t", check=False, timeout=120)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cas: error: ") and lines[0].endswith("(connection_failed)"), lines
