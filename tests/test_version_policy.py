"""Version compatibility policies (issue 18, client item 3): set on the server per channel or
product (``cas channel policy``, ``PUT .../channels/{c}/policy``), signed into the channel
document (a mirror cannot strip it), checked by the client before it downloads anything."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from conftest import READ, Server, start_server, wait_for_builds

from casformat.canonical import canonical_bytes
from casformat.compat import judge
from casformat.errors import SignatureError
from casformat.roots import verify_first_root
from casformat.trust import ChannelState, accept_channel

REPO = Path(__file__).resolve().parent.parent
VERSIONS = ["1.0.0", "1.1.0", "2.0.0"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, release_trees: list[Path]) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("policy") / "store", config="delta_poll_seconds = 0.2\n")
    key = str(server.store / "keys" / "release.pem")
    for version, tree in zip(VERSIONS, release_trees):
        server.cas("publish", str(tree), "--product", "app", "--version", version, "--key", key,
                   "--status", "released")
    server.cas("channel", "set", "app", "stable", "1.1.0")
    server.cas("channel", "set", "app", "beta", "1.1.0")
    with server.client() as http:
        wait_for_builds(http)
    yield server
    server.stop()


def cli(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=dict(os.environ))


def channel_signed(server: Server, channel: str = "stable") -> dict[str, Any]:
    with server.client() as http:
        signed: dict[str, Any] = http.get(f"/v1/products/app/channels/{channel}").json()["signed"]
        return signed


def client_at(server: Server, root: Path, version: str, channel: str = "stable") -> Path:
    proc = cli("init", root, "--server", server.url, "--product", "app", "--channel", channel,
               "--root", server.store / "root.json")
    assert proc.returncode == 0, proc.stderr
    proc = cli("update", root, "--to", version)
    assert proc.returncode == 0, proc.stderr
    return root


def nothing_fetched(root: Path, installed: list[str]) -> None:
    assert sorted(p.name for p in (root / "versions").iterdir()) == installed
    assert list((root / ".cas" / "downloads").iterdir()) == []
    assert not (root / ".cas" / "journal.json").exists()


def test_no_downgrade_refuses_an_older_to_before_any_download(srv: Server, tmp_path: Path) -> None:
    root = client_at(srv, tmp_path / "root", "1.1.0")
    before = channel_signed(srv)["sequence"]
    proc = srv.cas("channel", "policy", "app", "stable", "no-downgrade")
    assert "version policy no-downgrade" in proc.stdout and "re-signed stable" in proc.stdout
    signed = channel_signed(srv)
    assert signed["policy"] == {"rule": "no-downgrade", "deprecated": []} and signed["sequence"] == before + 1
    assert "policy" not in channel_signed(srv, "beta")   # per channel
    status = json.loads(cli("status", root, "--json").stdout)
    assert status["channel_policy"] == {"rule": "no-downgrade", "deprecated": []}
    assert "policy    no-downgrade" in cli("status", root).stdout

    proc = cli("update", root, "--to", "1.0.0")
    assert proc.returncode == 7, (proc.stdout, proc.stderr)
    assert "rule 'no-downgrade': 1.0.0 is older than the installed 1.1.0" in proc.stderr
    assert "cas-client update --to 1.0.0 --allow-downgrade" in proc.stderr
    nothing_fetched(root, ["1.1.0"])
    proc = cli("update", root, "--to", "1.0.0", "--json")
    data = json.loads(proc.stdout)
    assert proc.returncode == 7 and (data["ok"], data["code"]) == (False, "policy_refused")
    assert data["detail"] == {"rule": "no-downgrade", "override": "--allow-downgrade", "from": "1.1.0", "to": "1.0.0"}
    # Upgrades are fine; the override installs the older one, with a warning.
    proc = cli("update", root, "--to", "1.0.0", "--allow-downgrade", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["current"] == "1.0.0" and any("downgrading 1.1.0 -> 1.0.0" in w for w in data["warnings"])
    # The channel itself moving back is refused the same way (the policy covers every target).
    proc = cli("update", root)
    assert proc.returncode == 0 and json.loads(cli("status", root, "--json").stdout)["current"] == "1.1.0"
    srv.cas("channel", "policy", "app", "stable", "none")
    assert "policy" not in channel_signed(srv)
    assert cli("update", root, "--to", "1.0.0").returncode == 0


def test_product_wide_same_major_and_deprecated_warning(srv: Server, tmp_path: Path) -> None:
    root = client_at(srv, tmp_path / "root", "1.0.0", channel="beta")
    proc = srv.cas("channel", "policy", "app", "*", "same-major", "--json")
    assert json.loads(proc.stdout)["resigned"] == ["beta", "stable"]
    shown = srv.cas("channel", "policy", "app", "beta").stdout
    assert "same-major (from the product's policy)" in shown
    srv.cas("channel", "set", "app", "beta", "2.0.0")
    proc = cli("update", root)
    assert proc.returncode == 7, (proc.stdout, proc.stderr)
    assert "rule 'same-major': 2.0.0 has another major version than the installed 1.0.0" in proc.stderr
    assert "--allow-major" in proc.stderr
    nothing_fetched(root, ["1.0.0"])
    assert cli("update", root, "--to", "1.1.0").returncode == 0      # same major, minor >=
    # A channel's own policy wins over the product's.
    srv.cas("channel", "policy", "app", "beta", "any")
    assert channel_signed(srv, "beta")["policy"]["rule"] == "any"
    proc = cli("update", root)
    assert proc.returncode == 0, proc.stderr
    srv.cas("channel", "policy", "app", "beta", "none")
    srv.cas("channel", "policy", "app", "*", "none")
    srv.cas("channel", "set", "app", "beta", "1.1.0")


def test_deprecating_a_release_resigns_and_the_client_warns(srv: Server, tmp_path: Path) -> None:
    root = client_at(srv, tmp_path / "root", "1.1.0")
    srv.cas("channel", "policy", "app", "stable", "any")
    before = channel_signed(srv)["sequence"]
    srv.cas("release", "status", "app", "1.0.0", "deprecated")
    try:
        signed = channel_signed(srv)
        assert signed["policy"] == {"rule": "any", "deprecated": ["1.0.0"]} and signed["sequence"] == before + 1
        proc = cli("update", root, "--to", "1.0.0")
        assert proc.returncode == 0, proc.stderr
        assert "warning: 1.0.0 is deprecated by the operator" in proc.stdout + proc.stderr
    finally:
        srv.cas("channel", "policy", "app", "stable", "none")


def test_the_policy_is_signed_a_mirror_cannot_strip_it(srv: Server) -> None:
    srv.cas("channel", "policy", "app", "stable", "no-downgrade")
    try:
        with srv.client() as http:
            envelope = http.get("/v1/products/app/channels/stable").json()
        root = verify_first_root(json.loads((srv.store / "root.json").read_text()))
        assert accept_channel(root, envelope, "app", "stable", ChannelState())["policy"]["rule"] == "no-downgrade"
        for tampered in ({k: v for k, v in envelope["signed"].items() if k != "policy"},
                         {**envelope["signed"], "policy": {"rule": "any", "deprecated": []}}):
            forged = json.loads(canonical_bytes({**envelope, "signed": tampered}))
            with pytest.raises(SignatureError):
                accept_channel(root, forged, "app", "stable", ChannelState())
    finally:
        srv.cas("channel", "policy", "app", "stable", "none")


def test_policy_over_http_and_bad_input(srv: Server) -> None:
    with srv.client() as http:
        assert http.get("/v1/products/app/channels/stable/policy").json()["rule"] is None
        answer = http.put("/v1/products/app/channels/stable/policy", json={"rule": "sideways"})
        assert answer.status_code in (400, 422) and "no-downgrade" in answer.json()["error"]["message"]
        assert http.put("/v1/products/app/channels/stable/policy", json=["x"]).status_code == 400
        assert http.put("/v1/products/nope/channels/stable/policy", json={"rule": "any"}).status_code == 404
        assert http.put("/v1/products/app/channels/..%2Fx/policy", json={"rule": "any"}).status_code in (400, 404, 422)
        assert http.put("/v1/products/app/channels/stable/policy", json={"rule": "any"}).json()["rule"] == "any"
        assert http.put("/v1/products/app/channels/stable/policy", json={"rule": None}).json()["rule"] is None
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {READ}"}) as reader:
        assert reader.put("/v1/products/app/channels/stable/policy", json={"rule": "any"}).status_code == 403
    proc = srv.cas("channel", "policy", "app", "stable", "sideways", check=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_judge_rules() -> None:
    policy = {"rule": "same-major", "deprecated": ["1.0.1"]}
    assert judge(None, "2.0.0", "1.0.0").refusal is None
    assert judge(policy, None, "1.0.0").refusal is None               # fresh install
    assert judge(policy, "1.2.0", "1.10.0").refusal is None            # ordered as versions, not text
    assert judge(policy, "1.10.0", "1.9.0").override == "--allow-downgrade"
    assert judge(policy, "1.2.0", "2.0.0rc1").override == "--allow-major"
    assert judge(policy, "1.2.0", "2.0.0", allow_major=True).refusal is None
    assert judge(policy, "1.2.0", "1.0.1", allow_downgrade=True).warnings[0] == "1.0.1 is deprecated by the operator"
    unordered = judge({"rule": "no-downgrade", "deprecated": []}, "build-7", "build-8")
    assert unordered.refusal and "'build-7' is not one" in unordered.refusal
    assert judge({"rule": "any", "deprecated": []}, "build-7", "build-8").refusal is None
