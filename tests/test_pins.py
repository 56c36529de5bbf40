"""Per-node rollback: an operator pins one client id (or a batch) to an earlier release on a
channel, over HTTP and with `cas pin`, audited; the real client obeys at its next check and
follows the channel again once the pin is removed.  A pin names only a trusted, offerable
release; a pin a server makes to content the root does not trust, or a pin forged into the
channel document on the way, is refused by the client, which stays where it was."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
from conftest import PUBLISH, Server, start_server, store_snapshot
from hostile_proxy import FAST_CLIENT, HostileProxy

from cas.signing import generate_key, private_to_pem
from casformat.errors import DocumentError, SignatureError
from casformat.manifests import check_channel
from casformat.trust import choose_release
from client.updater import Updater

PINS = "/v1/products/app/channels/stable/pins"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, release_trees: list[Path]) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("pins")
    server = start_server(base / "store", config="delta_builder = false\n")
    key = str(server.store / "keys" / "release.pem")
    for i, tree in enumerate(release_trees):
        server.cas("publish", str(tree), "--product", "app", "--version", f"1.{i}.0", "--key", key,
                   *(["--status", "released"] if i < 2 else []))
    server.cas("channel", "set", "app", "stable", "1.1.0")
    yield server
    server.stop()


def client(server_url: str, root_json: bytes, root: Path, client_id: str) -> Updater:
    return Updater.init(root, [server_url], "app", "stable", root_json, client_id=client_id, **FAST_CLIENT)


def test_pin_one_node_back_then_release_it(srv: Server, tmp_path: Path) -> None:
    root_json = (srv.store / "root.json").read_bytes()
    a, b, c = (client(srv.url, root_json, tmp_path / n, f"node-{n}") for n in "abc")
    for up in (a, b, c):
        assert up.update().current == "1.1.0"

    out = srv.cas("pin", "set", "app", "stable", "1.0.0", "--client", "node-a", "--reason", "bad disk firmware",
                  "--json")
    data = json.loads(out.stdout)
    assert [(p["client_id"], p["release"], p["actor"]) for p in data["pins"]] == [("node-a", "1.0.0", "token:admin")]
    assert a.check()["release"] == "1.0.0" and a.check()["update_pending"]
    result = a.update()
    assert (result.outcome, result.current) == ("updated", "1.0.0") and a.verify()["ok"]
    assert b.update().outcome == "up_to_date" and b.layout.link("current") == "1.1.0"

    # a batch: b and c by file; a re-pinned stays pinned
    ids = tmp_path / "batch.txt"
    ids.write_text("# the rack\nnode-b\nnode-c\n")
    srv.cas("pin", "set", "app", "stable", "1.0.0", "--clients", str(ids))
    assert b.update().current == "1.0.0" and c.update().current == "1.0.0"

    # the pins survive channel re-signing (a lifecycle flag re-signs the channel)
    with srv.client() as http:
        assert http.post("/v1/products/app/releases/1.1.0/critical", json={"critical": True}).status_code == 200
        signed = http.get("/v1/products/app/channels/stable").json()["signed"]
        assert signed["pins"] == [{"release": "1.0.0", "manifest": signed["pins"][0]["manifest"],
                                   "clients": ["node-a", "node-b", "node-c"]}]
        # over HTTP: remove b and c; audit records who
        r = http.post(PINS + "/remove", json={"clients": ["node-b", "node-c"], "reason": "fixed"})
        assert r.status_code == 200, r.text
        assert [p["client_id"] for p in r.json()["pins"]] == ["node-a"]
    assert b.update().current == "1.1.0" and c.update().current == "1.1.0"
    assert a.update().outcome == "up_to_date" and a.layout.link("current") == "1.0.0"

    srv.cas("pin", "remove", "app", "stable", "--all", "--reason", "done")
    assert a.update().current == "1.1.0"
    listed = json.loads(srv.cas("pin", "list", "app", "stable", "--json").stdout)
    assert listed["pins"] == []
    events = [(e["event"], e["client_id"], e["release"], e["reason"]) for e in reversed(listed["events"])]
    assert events == [("pin", "node-a", "1.0.0", "bad disk firmware"), ("pin", "node-b", "1.0.0", "pin 1.0.0"),
                      ("pin", "node-c", "1.0.0", "pin 1.0.0"), ("unpin", "node-b", None, "fixed"),
                      ("unpin", "node-c", None, "fixed"), ("unpin", "node-a", None, "done")]
    with srv.client() as http:  # the last unpin signed a document without pins
        assert "pins" not in http.get("/v1/products/app/channels/stable").json()["signed"]


def test_pinned_release_cannot_be_deprecated_or_deleted(srv: Server) -> None:
    srv.cas("pin", "set", "app", "stable", "1.0.0", "--client", "keep-me")
    try:
        with srv.client() as http:
            r = http.post("/v1/products/app/releases/1.0.0/status", json={"status": "deprecated"})
            assert r.status_code == 409 and r.json()["error"]["code"] == "release_in_use"
            assert r.json()["error"]["detail"] == {"pinned_on": ["stable"]}
    finally:
        srv.cas("pin", "remove", "app", "stable", "--client", "keep-me")


@pytest.mark.parametrize("body,expected", [
    ({"release": "1.2.0", "clients": ["x"]}, (409, "status_too_low")),       # a draft: not offerable
    ({"release": "9.9.9", "clients": ["x"]}, (404, "unknown_release")),
    ({"release": "1.0.0", "clients": []}, (422, "bad_clients")),
    ({"release": "1.0.0", "clients": ["x", "x"]}, (422, "bad_clients")),
    ({"release": "1.0.0", "clients": ["x" * 129]}, (422, "bad_clients")),
    ({"release": "1.0.0", "clients": ["bad\nid"]}, (422, "bad_clients")),
    ({"release": "1.0.0", "clients": "x"}, (422, "bad_clients")),
    ({"release": "1.0.0", "clients": ["x"], "colour": "red"}, (422, "bad_pin")),
    ({"clients": ["x"]}, (422, "bad_pin")),
    ({"release": "1.0.0", "clients": ["x"], "reason": "r" * 1001}, (422, "bad_request")),
])
def test_bad_pins_change_nothing(srv: Server, body: dict, expected: tuple[int, str]) -> None:
    before = store_snapshot(srv.store)
    with srv.client() as http:
        r = http.post(PINS, json=body)
        assert (r.status_code, r.json()["error"]["code"]) == expected, r.text
        r = http.post(PINS + "/remove", json={"clients": ["nobody"]})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_pinned")
        r = http.post("/v1/products/app/channels/nope/pins", json={"release": "1.0.0", "clients": ["x"]})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_channel")
        r = http.post(PINS, content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422)
    assert store_snapshot(srv.store) == before


def test_pins_need_admin(srv: Server) -> None:
    with srv.client(PUBLISH) as http:
        r = http.post(PINS, json={"release": "1.0.0", "clients": ["x"]})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "insufficient_scope")
        assert http.get(PINS).status_code == 403
    with srv.client(None) as http:
        assert http.post(PINS + "/remove", json={"all": True}).status_code == 401


def test_too_many_pins_for_the_document(tmp_path: Path, release_trees: list[Path]) -> None:
    server = start_server(tmp_path / "store", config="delta_builder = false\nrollout_max_document_bytes = 4096\n")
    try:
        key = str(server.store / "keys" / "release.pem")
        for i in range(2):
            server.cas("publish", str(release_trees[i]), "--product", "app", "--version", f"1.{i}.0", "--key", key,
                       "--status", "released")
        server.cas("channel", "set", "app", "stable", "1.1.0")
        before = store_snapshot(server.store)
        with server.client() as http:
            r = http.post(PINS, json={"release": "1.0.0", "clients": [f"client-{i:04}" for i in range(400)]})
            assert (r.status_code, r.json()["error"]["code"]) == (422, "too_many_clients")
        assert store_snapshot(server.store) == before
    finally:
        server.stop()


def test_client_refuses_a_pin_to_untrusted_content(tmp_path: Path, release_trees: list[Path]) -> None:
    """A server that does not enforce signatures can pin a release signed by a foreign key; the
    client verifies the pinned manifest like any other and refuses it."""
    server = start_server(tmp_path / "store", config="enforce_signatures = false\ndelta_builder = false\n")
    try:
        good = str(server.store / "keys" / "release.pem")
        foreign = tmp_path / "foreign.pem"
        foreign.write_bytes(private_to_pem(generate_key()))
        server.cas("publish", str(release_trees[1]), "--product", "app", "--version", "1.1.0", "--key", good,
                   "--status", "released", "--channel", "stable")
        server.cas("publish", str(release_trees[0]), "--product", "app", "--version", "0.9.0", "--key",
                   str(foreign), "--status", "released")
        up = client(server.url, (server.store / "root.json").read_bytes(), tmp_path / "c", "node-x")
        assert up.update().current == "1.1.0"
        server.cas("pin", "set", "app", "stable", "0.9.0", "--client", "node-x")
        with pytest.raises(SignatureError):
            up.update()
        assert up.layout.link("current") == "1.1.0" and up.verify()["ok"]
        assert not (tmp_path / "c" / "versions" / "0.9.0").exists()
    finally:
        server.stop()


def test_client_refuses_a_pin_forged_on_the_way(srv: Server, tmp_path: Path) -> None:
    """A mirror or proxy that adds a pin to the signed channel document breaks its signature."""
    proxy = HostileProxy(srv.url).start()
    try:
        up = client(proxy.url, (srv.store / "root.json").read_bytes(), tmp_path / "c", "node-f")
        assert up.update().current == "1.1.0"

        def add_pin(body: bytes) -> bytes:
            doc = json.loads(body)
            doc["signed"]["pins"] = [{"release": "1.0.0", "manifest": doc["signed"]["manifest"],
                                      "clients": ["node-f"]}]
            doc["signed"]["sequence"] += 1
            return json.dumps(doc).encode()

        proxy.fault(r"/channels/stable", "transform", fn=add_pin)
        with pytest.raises(SignatureError):
            up.update()
        assert up.layout.link("current") == "1.1.0" and up.verify()["ok"]
    finally:
        proxy.stop()


D1, D2 = "a" * 64, "b" * 64


def channel_signed(**extra: object) -> dict:
    return {"schema": 1, "product": "app", "channel": "stable", "sequence": 3, "expires": "2099-01-01T00:00:00Z",
            "release": "1.1.0", "manifest": D1, "rollout": None, **extra}


@pytest.mark.parametrize("pins,message", [
    ({"release": "1.0.0"}, "pins must be a list"),
    ([{"release": "1.0.0", "manifest": D2}], "each pin is"),
    ([{"release": "1.0.0", "manifest": D2, "clients": ["a"], "extra": 1}], "each pin is"),
    ([{"release": "../x", "manifest": D2, "clients": ["a"]}], "version"),
    ([{"release": "1.0.0", "manifest": "nope", "clients": ["a"]}], "pin manifest must be a digest"),
    ([{"release": "1.0.0", "manifest": D2, "clients": []}], "non-empty list"),
    ([{"release": "1.0.0", "manifest": D2, "clients": ["x" * 129]}], "non-empty list"),
    ([{"release": "1.0.0", "manifest": D2, "clients": [7]}], "non-empty list"),
    ([{"release": "1.0.0", "manifest": D2, "clients": ["a", "a"]}], "pinned twice"),
    ([{"release": "1.0.0", "manifest": D2, "clients": ["a"]},
      {"release": "0.9.0", "manifest": D1, "clients": ["a"]}], "pinned twice"),
    ([{"release": f"1.0.{i}", "manifest": D2, "clients": [f"c{i}"]} for i in range(65)], "at most 64"),
])
def test_malformed_pins_are_refused(pins: object, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        check_channel(channel_signed(pins=pins))


def test_the_pin_wins_over_the_rollout_and_the_channel() -> None:
    signed = channel_signed(
        rollout={"release": "1.2.0", "manifest": D2, "percent": 100, "salt": "00" * 8},
        pins=[{"release": "1.0.0", "manifest": D2, "clients": ["node-a"]}])
    assert check_channel(signed) is signed
    assert choose_release(signed, "node-a") == ("1.0.0", D2)
    assert choose_release(signed, "node-b") == ("1.2.0", D2)     # in the 100 % cohort
    assert choose_release(channel_signed(), "node-a") == ("1.1.0", D1)


def test_a_pin_overrides_the_channels_version_policy() -> None:
    """A pin is the operator rolling a node back on purpose: a no-downgrade or same-major
    policy refuses the same move made any other way, not the pinned one."""
    from types import SimpleNamespace

    from client.config import ClientConfig
    from client.errors import PolicyRefused
    from client.updater import Updater

    me = SimpleNamespace(allow_downgrade=False, allow_major=False, log=lambda message: None)
    config = ClientConfig(servers=["http://127.0.0.1:1"], product="app", channel="stable", client_id="c1")
    for rule in ("no-downgrade", "same-major"):
        policy = {"rule": rule, "deprecated": []}
        with pytest.raises(PolicyRefused):
            Updater._check_policy(me, config, policy, "2.0.0", "1.0.0")  # type: ignore[arg-type]
        warnings = Updater._check_policy(me, config, policy, "2.0.0", "1.0.0", pinned=True)  # type: ignore[arg-type]
        assert warnings  # said in the log, not refused
