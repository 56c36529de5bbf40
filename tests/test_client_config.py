"""``cas-client config show|get|set|unset`` and the setting flags of ``init``/``update``: every
value goes through one validation (client/config.py); a refused value names the allowed
range and nothing is written.  The update with flags runs against a real ``cas serve``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import Server, run_cas, start_server, wait_for_builds

from client.config import SETTINGS, ClientConfig, ConfigError, parse_value
from client.installroot import InstallRoot

REPO = Path(__file__).resolve().parent.parent


def cli(*args: Any, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=dict(os.environ))


@pytest.fixture(scope="module")
def root_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("config-keys") / "store"
    run_cas("keys", "init", "--store", str(store))
    return store / "root.json"


def init(root: Path, root_json: Path, *extra: str, server: str = "http://127.0.0.1:9") -> subprocess.CompletedProcess[str]:
    return cli("init", root, "--server", server, "--product", "app", "--channel", "stable",
               "--root", root_json, *extra)


def stored(root: Path) -> dict[str, Any]:
    return json.loads((root / ".cas" / "config.json").read_text())


def test_defaults_are_the_replaced_systems(root_json: Path, tmp_path: Path) -> None:
    config = ClientConfig(servers=("http://x",), product="p", channel="c", client_id="i")
    assert config.health_timeout_s == 30 and config.keep_versions == 3
    assert [config.retry_delay(n) for n in range(6)] == [1, 2, 4, 8, 8, 8]
    jittery = ClientConfig(servers=("http://x",), product="p", channel="c", client_id="i", backoff_jitter=0.5)
    assert jittery.retry_delay(2, 0.0) == 2 and jittery.retry_delay(2, 0.999) == pytest.approx(6, abs=0.01)
    assert attempts_waits(ClientConfig(servers=("http://x",), product="p", channel="c", client_id="i")) == \
        [1, 2, 4, 8]


def attempts_waits(config: ClientConfig) -> list[float]:
    """The waits between the default attempts on one server: 1-2-4-8 s, then it gives up."""
    return [config.retry_delay(n) for n in range(config.attempts - 1)]


def test_init_flags_show_get_set_unset(root_json: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = init(root, root_json, "--health-timeout", "45", "--bandwidth-limit", "2M", "--keep-versions", "5",
                "--concurrency", "2", "--window", "mon-fri 02:00-04:00", "--set", "backoff_jitter=0.25")
    assert proc.returncode == 0, proc.stderr
    data = stored(root)
    assert (data["health_timeout_s"], data["bandwidth_bytes_per_s"], data["keep_versions"],
            data["concurrency"], data["windows"], data["backoff_jitter"]) == (45, 2 << 20, 5, 2,
                                                                             ["mon-fri 02:00-04:00"], 0.25)
    assert "attempts" not in data  # not given: stays at the default (a later default applies)

    show = cli("config", "show", root, "--json")
    assert show.returncode == 0, show.stderr
    rows = json.loads(show.stdout)["settings"]
    assert set(rows) == set(SETTINGS)
    assert rows["attempts"] == {**rows["attempts"], "value": 5, "default": 5, "set": False}
    assert rows["health_timeout_s"]["set"] is True and rows["health_timeout_s"]["default"] == 30
    human = cli("config", "show", root).stdout
    assert "attempts" in human and "(default)" in human and "{" not in human

    assert cli("config", "get", root, "health_timeout_s").stdout.strip() == "45"
    proc = cli("config", "set", root, "bandwidth_bytes_per_s", "512K")
    assert proc.returncode == 0 and stored(root)["bandwidth_bytes_per_s"] == 512 << 10, proc.stderr
    proc = cli("config", "set", root, "windows", "sat,sun 01:00-05:00", "daily 23:00-01:00")
    assert proc.returncode == 0, proc.stderr
    assert stored(root)["windows"] == ["sat,sun 01:00-05:00", "daily 23:00-01:00"]
    proc = cli("config", "set", root, "servers", "http://mirror.example/", "https://origin.example/cas")
    assert proc.returncode == 0 and stored(root)["servers"][1] == "https://origin.example/cas", proc.stderr
    assert cli("config", "set", root, "require_cms", "no").returncode == 0 and stored(root)["require_cms"] is False

    proc = cli("config", "unset", root, "health_timeout_s", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["value"] == 30
    assert "health_timeout_s" not in stored(root)
    assert cli("config", "get", root, "health_timeout_s").stdout.strip() == "30"


@pytest.mark.parametrize(("args", "words"), [
    (("concurrency", "0"), ["concurrency", "1 to 64", "got 0"]),
    (("concurrency", "many"), ["concurrency", "integer", "'many'"]),
    (("health_timeout_s", "-5"), ["health_timeout_s", "1 to 86,400 seconds"]),
    (("health_timeout_s", "nan"), ["health_timeout_s", "seconds"]),
    (("bandwidth_bytes_per_s", "5Q"), ["bandwidth_bytes_per_s", "0 to 1 TiB"]),
    (("attempts", "21"), ["attempts", "1 to 20"]),
    (("attempts", "3", "4"), ["attempts", "takes one value"]),
    (("backoff_s", "10"), ["max_backoff_s (8) must be at least backoff_s (10)"]),
    (("require_cms", "maybe"), ["require_cms", "true or false"]),
    (("require_cms", "true"), ["require_cms", "no CMS trust anchors"]),
    (("cms_trust_anchors", "/nonexistent/anchors.pem"), ["cms_trust_anchors", "cannot read"]),
    (("windows", "someday 02:00-04:00"), ["someday"]),
    (("timezone", "Mars/Olympus"), ["Mars/Olympus"]),
    (("servers", "ftp://mirror/"), ["servers", "not an http(s) URL"]),
    (("report_url", "origin.example"), ["report_url", "not an http(s) URL"]),
    (("product", "other"), ["product is fixed at init"]),
    (("client_idd", "x"), ["no setting 'client_idd'", "did you mean client_id"]),
])
def test_bad_values_are_refused_and_nothing_is_written(root_json: Path, tmp_path: Path, args: tuple[str, ...],
                                                       words: list[str]) -> None:
    root = tmp_path / "root"
    assert init(root, root_json).returncode == 0
    path = root / ".cas" / "config.json"
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    proc = cli("config", "set", root, *args)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert [p.name for p in path.parent.iterdir() if p.name.startswith("config")] == ["config.json"]


def test_unset_of_a_required_setting_and_a_report_token_with_mirrors(root_json: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert init(root, root_json, "--report-token", "s3cret").returncode == 0
    before = (root / ".cas" / "config.json").read_bytes()
    proc = cli("config", "unset", root, "servers")
    assert proc.returncode == 1 and "servers cannot be unset" in proc.stderr
    # A second server would send the token to whichever is last: refused until report_url is set.
    proc = cli("config", "set", root, "servers", "http://mirror.example", "http://origin.example")
    assert proc.returncode == 1 and "report_url" in proc.stderr
    assert (root / ".cas" / "config.json").read_bytes() == before
    assert cli("config", "set", root, "report_url", "http://origin.example").returncode == 0
    assert cli("config", "set", root, "servers", "http://mirror.example", "http://origin.example").returncode == 0
    # The token is not printed by show (a secret), only by get.
    assert "s3cret" not in cli("config", "show", root).stdout
    assert cli("config", "get", root, "report_token").stdout.strip() == "s3cret"


def test_bad_init_flags_write_nothing(root_json: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = init(root, root_json, "--keep-versions", "-1")
    assert proc.returncode == 1 and "keep_versions must be an integer from 0 to 1,000" in proc.stderr
    assert not (root / ".cas").exists()
    proc = init(root, root_json, "--set", "read_timeout_s=0")
    assert proc.returncode == 1 and "read_timeout_s" in proc.stderr and not (root / ".cas").exists()
    proc = init(root, root_json, "--set", "nonsense")
    assert proc.returncode == 1 and "NAME=VALUE" in proc.stderr


def test_hand_edited_file_is_checked_on_load_and_can_be_repaired(root_json: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert init(root, root_json).returncode == 0
    data = stored(root)
    data["concurrency"] = "lots"
    (root / ".cas" / "config.json").write_text(json.dumps(data))
    proc = cli("status", root, "--offline")
    assert proc.returncode == 1 and "concurrency must be an integer from 1 to 64; got 'lots'" in proc.stderr
    assert cli("config", "set", root, "concurrency", "8").returncode == 0
    assert cli("status", root, "--offline").returncode == 0


def test_config_set_waits_for_no_update(root_json: Path, tmp_path: Path) -> None:
    """The file is changed under the update lock: not while an update is reading it."""
    root = tmp_path / "root"
    assert init(root, root_json).returncode == 0
    layout = InstallRoot(root)
    layout.lock()
    try:
        proc = cli("config", "set", root, "concurrency", "8")
        assert proc.returncode == 3 and "in progress" in proc.stderr
    finally:
        layout.unlock()
    assert "concurrency" not in stored(root)


def test_parse_value_units() -> None:
    assert parse_value("bandwidth_bytes_per_s", ["1.5M"]) == 3 << 19
    assert parse_value("health_timeout_s", ["2m"]) == 120 and parse_value("health_timeout_s", ["1500ms"]) == 1.5
    assert parse_value("health_cmd", ["none"]) is None
    assert ClientConfig(servers=("http://x",), product="p", channel="c", client_id="i", health_cmd="").health_cmd is None
    with pytest.raises(ConfigError, match="bandwidth_bytes_per_s"):
        parse_value("bandwidth_bytes_per_s", ["1.5"])
    with pytest.raises(ConfigError, match="keep_versions"):
        ClientConfig(servers=("http://x",), product="p", channel="c", client_id="i", keep_versions=1.5)


# ---------------------------------------------------------------------- flags on update, real server

@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, release_trees: list[Path]) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("client-config") / "store", config="delta_poll_seconds = 0.2\n")
    key = str(server.store / "keys" / "release.pem")
    server.cas("publish", str(release_trees[0]), "--product", "app", "--version", "1.0.0", "--key", key,
               "--status", "released")
    server.cas("channel", "set", "app", "stable", "1.0.0")
    with server.client() as http:
        wait_for_builds(http)
    yield server
    server.stop()


def test_update_flags_apply_to_one_run(srv: Server, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert init(root, srv.store / "root.json", server=srv.url).returncode == 0
    before = (root / ".cas" / "config.json").read_bytes()
    proc = cli("update", root, "--concurrency", "0")
    assert proc.returncode == 1 and "concurrency must be an integer from 1 to 64" in proc.stderr
    assert not (root / "current").exists()
    proc = cli("update", root, "--bandwidth-limit", "50M", "--concurrency", "2", "--health-timeout", "5s",
               "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["current"] == "1.0.0"
    assert (root / ".cas" / "config.json").read_bytes() == before
