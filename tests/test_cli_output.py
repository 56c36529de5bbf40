"""What the command lines print (issue 18, client items 5 and 6): under ``--json`` every failure
of ``cas-client`` and ``cas`` is exactly one JSON object on stdout (``ok``, ``code``,
``message``) with the documented exit status; error details are human words, never Python
reprs; a standard output closed early (``cmd | head``) ends the command quietly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cas

from client.installroot import InstallRoot

REPO = Path(__file__).resolve().parent.parent


def run(tool: str, *args: Any, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    module = "client.cli" if tool == "cas-client" else "cas.cli"
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=120, cwd=REPO, env=dict(os.environ))


def one_object(stdout: str) -> dict[str, Any]:
    """stdout is exactly one JSON object (and nothing else)."""
    data, end = json.JSONDecoder().raw_decode(stdout.strip())
    assert stdout.strip()[end:].strip() == "", stdout
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, release_trees: list[Path]) -> Path:
    store = tmp_path_factory.mktemp("output") / "store"
    run_cas("keys", "init", "--store", str(store))
    run_cas("publish", str(release_trees[0]), "--product", "app", "--version", "1.0.0", "--store", str(store))
    return store


@pytest.fixture
def root(store: Path, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    proc = run("cas-client", "init", root, "--server", "http://127.0.0.1:9", "--product", "app", "--channel",
               "stable", "--root", store / "root.json", "--attempts", "1")
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.mark.parametrize(("args", "status", "code"), [
    (("status", "{missing}", "--offline"), 1, "client_error"),
    (("update", "{missing}"), 1, "client_error"),
    (("rollback", "{missing}"), 1, "client_error"),
    (("verify", "{missing}"), 1, "client_error"),
    (("gc", "{missing}"), 1, "client_error"),
    (("config", "show", "{missing}"), 1, "client_error"),
    (("config", "set", "{root}", "concurrency", "0"), 1, "bad_config"),
    (("config", "get", "{root}", "nope"), 1, "bad_config"),
    (("verify", "{root}"), 1, "client_error"),                  # nothing installed
    (("rollback", "{root}", "--to", "factory"), 1, "client_error"),
    (("rollback", "{root}", "--to", "../x"), 1, "invalid_path"),
    (("update", "{root}"), 1, "download_failed"),               # the server is down
    (("update", "{root}", "--concurrency", "99"), 1, "bad_config"),
    (("update", "{root}", "--bogus"), 2, "usage"),
    (("update",), 2, "usage"),
    (("init", "{tmp}/new", "--product", "app"), 2, "usage"),
])
def test_client_json_failures_are_one_object(root: Path, tmp_path: Path, args: tuple[str, ...], status: int,
                                            code: str) -> None:
    words = [a.format(missing=tmp_path / "missing", root=root, tmp=tmp_path) for a in args]
    proc = run("cas-client", *words, "--json")
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    data = one_object(proc.stdout)
    assert data["ok"] is False and data["code"] == code and data["message"], data
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("usage: cas-client" if code == "usage" else "cas-client: error: "), proc.stderr


def test_client_json_lock_and_success_objects(root: Path) -> None:
    layout = InstallRoot(root)
    layout.lock()
    try:
        proc = run("cas-client", "update", root, "--json")
        assert proc.returncode == 3
        assert one_object(proc.stdout) == {**one_object(proc.stdout), "ok": False, "code": "update_in_progress"}
    finally:
        layout.unlock()
    proc = run("cas-client", "status", root, "--offline", "--json")
    assert proc.returncode == 0 and one_object(proc.stdout)["ok"] is True
    # Without --json a failure prints nothing on stdout, one line on stderr.
    proc = run("cas-client", "config", "set", root, "attempts", "0")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == "cas-client: error: attempts must be an integer from 1 to 20; got 0"


def test_cas_json_failure_and_human_detail(store: Path) -> None:
    # An illegal move: its detail is a mapping, printed as words (not {'from': 'draft', ...}).
    proc = run("cas", "release", "status", "app", "1.0.0", "released", "--store", store, "--json")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    data = one_object(proc.stdout)
    assert data["ok"] is False and data["code"] == "illegal_transition"
    assert data["detail"] == {"from": "draft", "to": "released", "allowed": ["testing"]}
    lines = proc.stderr.splitlines()
    assert lines[0] == "cas: error: cannot move app 1.0.0 from draft to released (illegal_transition)"
    assert lines[1:] == ["  from: draft", "  to: released", "  allowed: testing"]
    assert "{" not in proc.stderr and "[" not in proc.stderr
    # A command line it cannot parse: argparse's usage on stderr, exit 2, one object under --json.
    proc = run("cas", "release", "status", "app", "--store", store, "--json")
    assert proc.returncode == 2 and one_object(proc.stdout)["code"] == "usage"
    assert "the following arguments are required" in proc.stderr
    # An OS error: the reason and the file, no "[Errno 2]".
    proc = run("cas", "publish", store / "no-such-tree", "--product", "app", "--version", "9.0.0", "--store",
               store, "--json")
    assert proc.returncode == 1
    data = one_object(proc.stdout)
    assert data["ok"] is False and data["code"] and "Errno" not in proc.stderr, proc.stderr


def closed_pipe_run(tool: str, *args: Any) -> subprocess.CompletedProcess[str]:
    """Run with standard output a pipe whose reading end is closed before the command writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return run(tool, *args, stdout=write_end)
    finally:
        os.close(write_end)


@pytest.mark.parametrize(("tool", "args"), [
    ("cas", ("stats", "--store", "{store}")),
    ("cas", ("release", "history", "app", "1.0.0", "--store", "{store}")),
    ("cas-client", ("config", "show", "{root}")),
    ("cas-client", ("status", "{root}", "--offline", "--json")),
])
def test_closed_pipe_is_quiet(store: Path, root: Path, tool: str, args: tuple[str, ...]) -> None:
    proc = closed_pipe_run(tool, *(a.format(store=store, root=root) for a in args))
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == "", proc.stderr


def test_head_of_a_long_listing(store: Path, root: Path) -> None:
    """The issue's case with a real shell pipeline: ``... | head -1`` leaves no error line."""
    for command in (f"{sys.executable} -m cas.cli stats --store {store}",
                    f"{sys.executable} -m client.cli config show {root}"):
        proc = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | head -1"], capture_output=True,
                              text=True, timeout=60, cwd=REPO)
        assert proc.stdout.count("\n") == 1 and "Broken pipe" not in proc.stderr and "Errno" not in proc.stderr, \
            proc.stderr
