"""Bearer-token scopes against a real server that refuses anonymous reads."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import ADMIN, PUBLISH, READ, Server, start_server

from deltagen.digests import blake3_bytes

DATA = b"auth test object"
DIGEST = blake3_bytes(DATA)


def error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "detail"}, body
    return body["error"]


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, release_trees: list[Path]) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("strict") / "store", config="anonymous_read = false\n")
    try:
        server.cas("publish", str(release_trees[0]), "--product", "app", "--version", "1.0.0",
                   "--key", str(server.store / "keys" / "release.pem"), "--status", "released")
        with server.client(ADMIN) as http:
            assert http.put(f"/v1/objects/{DIGEST}", content=DATA).status_code in (200, 201)
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("path", [f"/v1/objects/{DIGEST}", "/v1/products", "/v1/products/app/releases"])
def test_anonymous_read_refused_with_bearer_challenge(strict: Server, path: str) -> None:
    with strict.client(None) as http:
        response = http.get(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert error(response)["code"] == "token_required"


def test_anonymous_head_object_refused(strict: Server) -> None:
    with strict.client(None) as http:
        response = http.head(f"/v1/objects/{DIGEST}")
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("token", [READ, PUBLISH, ADMIN])
def test_every_token_reads(strict: Server, token: str) -> None:
    with strict.client(token) as http:
        response = http.get(f"/v1/objects/{DIGEST}")
        assert response.status_code == 200 and response.content == DATA
        assert http.get("/v1/products/app/releases").status_code == 200


def test_read_token_cannot_put_objects(strict: Server) -> None:
    data = b"read may not write"
    with strict.client(READ) as http:
        response = http.put(f"/v1/objects/{blake3_bytes(data)}", content=data)
        assert response.status_code == 403 and error(response)["code"] == "insufficient_scope"
        assert http.get(f"/v1/objects/{blake3_bytes(data)}").status_code == 404


@pytest.mark.parametrize("method,path", [("POST", "/v1/uploads"), ("POST", "/v1/objects/missing"),
                                         ("PUT", "/v1/products/app/channels/stable")])
def test_read_token_cannot_publish(strict: Server, method: str, path: str) -> None:
    with strict.client(READ) as http:
        response = http.request(method, path, json={"objects": [], "release": "1.0.0"})
    assert response.status_code == 403 and error(response)["code"] == "insufficient_scope"


def test_publish_token_uploads_objects(strict: Server) -> None:
    data = os.urandom(2000)
    with strict.client(PUBLISH) as http:
        assert http.put(f"/v1/objects/{blake3_bytes(data)}", content=data).status_code == 201
        location = http.post("/v1/uploads").headers["location"]
        assert http.patch(location, content=data[:10], headers={"Content-Range": "0-9"}).status_code == 202
        assert http.put(f"{location}?blake3={blake3_bytes(data[:10])}").status_code == 201
        assert http.post("/v1/objects/missing", json={"objects": [DIGEST]}).json() == {"missing": []}


def test_publish_token_cannot_set_channels(strict: Server) -> None:
    with strict.client(PUBLISH) as http:
        response = http.put("/v1/products/app/channels/stable", json={"release": "1.0.0"})
        assert response.status_code == 403 and error(response)["code"] == "insufficient_scope"
        assert http.get("/v1/products/app/channels/stable").status_code == 404  # nothing was set


def test_admin_token_does_all(strict: Server) -> None:
    data = os.urandom(1500)
    with strict.client(ADMIN) as http:
        assert http.put(f"/v1/objects/{blake3_bytes(data)}", content=data).status_code == 201
        assert http.post("/v1/uploads").status_code == 202
        channel = http.put("/v1/products/app/channels/beta", json={"release": "1.0.0"})
        assert channel.status_code == 200, channel.text
        assert http.get("/v1/products/app/channels/beta").json()["signed"]["release"] == "1.0.0"


@pytest.mark.parametrize("path", [f"/v1/objects/{DIGEST}", "/v1/uploads"])
def test_wrong_token_is_401_bad_token(strict: Server, path: str) -> None:
    with strict.client("not-a-real-token") as http:
        response = http.get(path) if path.startswith("/v1/objects") else http.post(path)
    assert response.status_code == 401 and error(response)["code"] == "bad_token"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_wrong_token_refused_even_where_anonymous_reads_are_allowed(shared_server: Server) -> None:
    with shared_server.client("not-a-real-token") as http:
        response = http.get("/v1/products")
    assert response.status_code == 401 and error(response)["code"] == "bad_token"


def test_anonymous_write_refused_where_anonymous_reads_are_allowed(shared_server: Server) -> None:
    with shared_server.client(None) as http:
        assert http.get("/v1/products").status_code == 200
        response = http.put(f"/v1/objects/{DIGEST}", content=DATA)
    assert response.status_code == 401 and error(response)["code"] == "token_required"


@pytest.mark.parametrize("header", [f"Basic {READ}", "Bearer", f"Bearer{READ}", READ, f"Token {READ}"])
def test_malformed_authorization_is_401(strict: Server, header: str) -> None:
    with httpx.Client(base_url=strict.url, timeout=10) as http:
        response = http.get(f"/v1/objects/{DIGEST}", headers={"Authorization": header})
    assert response.status_code == 401 and error(response)["code"] == "bad_token"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_scheme_is_case_insensitive(strict: Server) -> None:
    with httpx.Client(base_url=strict.url, timeout=10) as http:
        response = http.get(f"/v1/objects/{DIGEST}", headers={"Authorization": f"bearer {READ}"})
    assert response.status_code == 200


def test_repeated_bad_tokens_are_rate_limited(tmp_path) -> None:
    from conftest import ADMIN, start_server
    srv = start_server(tmp_path / "store", config="auth_failures_per_minute = 5\n")
    try:
        with srv.client("wrong-token") as bad:
            codes = [bad.get("/v1/products").status_code for _ in range(7)]
        assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
        # Even the right token waits out the window from that address: no oracle for guessing.
        with srv.client(ADMIN) as good:
            response = good.get("/v1/products")
            assert response.status_code == 429 and response.json()["error"]["code"] == "rate_limited"
        # Anonymous reads without a token are not affected.
        with srv.client(None) as anon:
            assert anon.get("/v1/products").status_code == 200
    finally:
        srv.stop()
