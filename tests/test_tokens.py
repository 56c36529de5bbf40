"""Named tokens: `cas tokens add|list|remove` edit config.toml (the secret printed once, only
its hash kept), the server accepts them and the audit log records their names; older
configs without names keep working; bad names and bad entries are refused, nothing written."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import PUBLISH, run_cas, start_server

from cas.config import load_config

OLD = hashlib.sha256(b"old-unnamed-token").hexdigest()


def test_named_token_is_audited_by_name(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "config.toml").write_text(f'# kept comment\ndelta_builder = false\n[[tokens]]\nscope = "publish"\n'
                                       f'sha256 = "{OLD}"\n')
    added = json.loads(run_cas("tokens", "add", "ci-main", "--scope", "publish", "--store", str(store),
                               "--json").stdout)
    secret = added["token"]
    text = (store / "config.toml").read_text()
    assert secret not in text and hashlib.sha256(secret.encode()).hexdigest() in text
    assert "# kept comment" in text and 'name = "ci-main"' in text
    listed = json.loads(run_cas("tokens", "list", "--store", str(store), "--json").stdout)
    assert [(t["name"], t["scope"]) for t in listed] == [("", "publish"), ("ci-main", "publish")]
    assert all(secret not in json.dumps(t) for t in listed)

    srv = start_server(store)
    try:
        key = str(store / "keys" / "release.pem")
        tree = tmp_path / "tree"
        tree.mkdir()
        (tree / "a.txt").write_text("a\n")
        run_cas("publish", str(tree), "--product", "app", "--version", "1.0.0", "--key", key,
                env={"CAS_SERVER": srv.url, "CAS_TOKEN": secret})
        with srv.client(secret) as http:
            r = http.post("/v1/products/app/releases/1.0.0/status", json={"status": "testing", "reason": "ci"})
            assert r.status_code == 200, r.text
        with srv.client("old-unnamed-token") as http:
            r = http.post("/v1/products/app/releases/1.0.0/status", json={"status": "released", "reason": "old"})
            assert r.status_code == 200, r.text
        with srv.client(PUBLISH) as http:
            history = http.get("/v1/products/app/releases/1.0.0/history").json()
        actors = [e["actor"] for e in history["history"]]
        # publish and the first move by the named token; the unnamed token is recorded by its scope as before
        assert actors == ["token:ci-main", "token:ci-main", "token:publish"], history
    finally:
        srv.stop()

    removed = run_cas("tokens", "remove", "ci-main", "--store", str(store))
    assert "ci-main" in removed.stdout
    assert "ci-main" not in (store / "config.toml").read_text()
    assert load_config(store, env={}).token_names == {}


@pytest.mark.parametrize("name", ["bad name", "", "-x", "a" * 65, "x/y", "é"])
def test_bad_token_name_writes_nothing(tmp_path: Path, name: str) -> None:
    (tmp_path / "config.toml").write_text("port = 9000\n")
    proc = run_cas("tokens", "add", "--scope", "admin", "--store", str(tmp_path), "--", name, check=False)
    assert proc.returncode != 0 and "bad_token_name" in proc.stderr and proc.stdout == ""
    assert (tmp_path / "config.toml").read_text() == "port = 9000\n"


def test_duplicate_and_unknown_names(tmp_path: Path) -> None:
    run_cas("tokens", "add", "ops", "--scope", "admin", "--store", str(tmp_path))
    before = (tmp_path / "config.toml").read_text()
    dup = run_cas("tokens", "add", "ops", "--scope", "read", "--store", str(tmp_path), check=False)
    assert dup.returncode == 1 and "token_exists" in dup.stderr
    gone = run_cas("tokens", "remove", "nobody", "--store", str(tmp_path), check=False)
    assert gone.returncode == 1 and "unknown_token" in gone.stderr
    assert (tmp_path / "config.toml").read_text() == before


def test_broken_config_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("port = [unterminated\n")
    proc = run_cas("tokens", "add", "ci", "--scope", "publish", "--store", str(tmp_path), check=False)
    assert proc.returncode == 1 and "bad_config" in proc.stderr
    assert (tmp_path / "config.toml").read_text() == "port = [unterminated\n"
    # an edit the server would refuse (an invalid entry already there) is refused too
    (tmp_path / "config.toml").write_text('[[tokens]]\nscope = "root"\nsha256 = "00"\n')
    proc = run_cas("tokens", "add", "ci", "--scope", "publish", "--store", str(tmp_path), check=False)
    assert proc.returncode == 1 and "bad_config" in proc.stderr
    assert "ci" not in (tmp_path / "config.toml").read_text()


@pytest.mark.parametrize("entry,message", [
    ('{scope = "admin"}', "needs sha256"),
    ('{scope = "admin", sha256 = "abc"}', "64 lowercase hex"),
    ('{scope = "boss", token = "t"}', "scope must be one of"),
    ('{scope = "admin", token = "t", colour = "red"}', "each token is"),
    ('{name = "a b", scope = "admin", token = "t"}', "token name"),
])
def test_bad_token_entries_are_refused(tmp_path: Path, entry: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(f"tokens = [{entry}]\n")
    with pytest.raises(ValueError, match=message):
        load_config(tmp_path, env={})


def test_two_tokens_with_one_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('tokens = [{name = "x", scope = "admin", token = "a"}, '
                                          '{name = "x", scope = "read", token = "b"}]\n')
    with pytest.raises(ValueError, match="two tokens are named"):
        load_config(tmp_path, env={})


def test_a_new_secret_never_reads_as_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--token "$(cat t.token)"``: a secret beginning with '-' is taken for an option."""
    import secrets

    from cas.cli import tokens
    drawn = iter(["-leading-dash", "--two", "fine-secret"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(drawn))
    assert tokens.new_secret() == "fine-secret"
    monkeypatch.undo()
    assert not any(tokens.new_secret().startswith("-") for _ in range(2000))
