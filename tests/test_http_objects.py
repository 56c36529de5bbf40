"""Objects over real HTTP: PUT, GET/HEAD, conditional and range requests, missing, curl resume."""
from __future__ import annotations

import os
import re
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import PUBLISH, READ, Server, start_server, store_snapshot

from deltagen.digests import blake3_bytes, blake3_file

IMMUTABLE = "public, max-age=31536000, immutable"
DATA = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable mod 256
DIGEST = blake3_bytes(DATA)
LARGE = os.urandom(300_000)  # above small_object_max_bytes: served by the application, not a cache
LARGE_DIGEST = blake3_bytes(LARGE)


def error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "detail"}, body
    return body["error"]


def raw_send(server: Server, payload: bytes) -> None:
    """Send raw bytes on a fresh connection and hang up without reading."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(payload)
        time.sleep(0.1)


@pytest.fixture(scope="module")
def srv(shared_server: Server) -> Server:
    with shared_server.client(PUBLISH) as http:
        assert http.put(f"/v1/objects/{DIGEST}", content=DATA).status_code in (200, 201)
        assert http.put(f"/v1/objects/{LARGE_DIGEST}", content=LARGE).status_code in (200, 201)
    return shared_server


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("small") / "store", config="max_object_bytes = 1000\n")
    yield server
    server.stop()


# ------------------------------------------------------------------------------------------- PUT

def test_put_new_object_is_201_then_200(shared_server: Server) -> None:
    data = os.urandom(3000)
    digest = blake3_bytes(data)
    with shared_server.client(PUBLISH) as http:
        first = http.put(f"/v1/objects/{digest}", content=data)
        assert first.status_code == 201, first.text
        assert first.json()["created"] is True and first.json()["size"] == 3000
        assert first.headers["location"] == f"/v1/objects/{digest}"
        again = http.put(f"/v1/objects/{digest}", content=data)
        assert again.status_code == 200 and again.json()["created"] is False
        assert http.get(f"/v1/objects/{digest}").content == data


def test_put_digest_mismatch_is_422_and_keeps_nothing(shared_server: Server) -> None:
    before = store_snapshot(shared_server.store)
    wrong = blake3_bytes(b"something else")
    with shared_server.client(PUBLISH) as http:
        response = http.put(f"/v1/objects/{wrong}", content=b"the real content")
        assert response.status_code == 422
        err = error(response)
        assert err["code"] == "digest_mismatch"
        assert err["detail"] == {"expected": wrong, "actual": blake3_bytes(b"the real content")}
        assert http.get(f"/v1/objects/{wrong}").status_code == 404
    assert store_snapshot(shared_server.store) == before
    assert list((shared_server.store / "tmp").iterdir()) == []


def test_put_over_limit_content_length_is_413(small: Server) -> None:
    data = b"x" * 1001
    before = store_snapshot(small.store)
    with small.client(PUBLISH) as http:
        response = http.put(f"/v1/objects/{blake3_bytes(data)}", content=data)
    assert response.status_code == 413 and error(response)["code"] == "too_large"
    assert store_snapshot(small.store) == before
    # At the limit is fine.
    ok = b"y" * 1000
    with small.client(PUBLISH) as http:
        assert http.put(f"/v1/objects/{blake3_bytes(ok)}", content=ok).status_code == 201


def test_put_over_limit_chunked_is_413(small: Server) -> None:
    data = b"z" * 1500
    before = store_snapshot(small.store)
    with small.client(PUBLISH) as http:  # a generator body goes out chunked, without Content-Length
        response = http.put(f"/v1/objects/{blake3_bytes(data)}", content=iter([data[:700], data[700:]]))
    assert response.status_code == 413
    assert store_snapshot(small.store) == before
    assert list((small.store / "tmp").iterdir()) == []


def test_put_size_param_over_limit_is_413(small: Server) -> None:
    with small.client(PUBLISH) as http:
        response = http.put(f"/v1/objects/{blake3_bytes(b'abc')}?size=5000", content=iter([b"abc"]))
    assert response.status_code == 413


def test_put_body_longer_than_size_param_is_413(shared_server: Server) -> None:
    data = b"0123456789" * 10
    before = store_snapshot(shared_server.store)
    with shared_server.client(PUBLISH) as http:
        response = http.put(f"/v1/objects/{blake3_bytes(data)}?size=50", content=data)
    assert response.status_code == 413 and error(response)["code"] == "body_too_long"
    assert store_snapshot(shared_server.store) == before
    assert list((shared_server.store / "tmp").iterdir()) == []


def test_put_body_shorter_than_size_param_is_422_size_mismatch(shared_server: Server) -> None:
    data = b"short body"
    before = store_snapshot(shared_server.store)
    with shared_server.client(PUBLISH) as http:
        response = http.put(f"/v1/objects/{blake3_bytes(data)}?size=100", content=data)
    assert response.status_code == 422 and error(response)["code"] == "size_mismatch"
    assert store_snapshot(shared_server.store) == before


@pytest.mark.parametrize("size", ["abc", "-1", "%C2%B2"])  # "²".isdigit() is True in Python
def test_put_bad_size_param_is_400(shared_server: Server, size: str) -> None:
    with shared_server.client(PUBLISH) as http:
        response = http.put(f"/v1/objects/{blake3_bytes(b'abc')}?size={size}", content=b"abc")
    assert response.status_code == 400 and error(response)["code"] == "bad_size"


def test_put_truncated_body_keeps_nothing(shared_server: Server) -> None:
    before = store_snapshot(shared_server.store)
    digest = blake3_bytes(b"x" * 100000)
    raw_send(shared_server, (f"PUT /v1/objects/{digest} HTTP/1.1\r\nHost: t\r\n"
                             f"Authorization: Bearer {PUBLISH}\r\n"
                             f"Content-Length: 100000\r\n\r\n").encode() + b"0123456789")
    deadline = time.monotonic() + 5
    while list((shared_server.store / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert list((shared_server.store / "tmp").iterdir()) == []
    assert store_snapshot(shared_server.store) == before
    with shared_server.client(None) as http:  # and the server still answers
        assert http.get(f"/v1/objects/{digest}").status_code == 404


# ------------------------------------------------------------------------------------- GET/HEAD

BOTH = pytest.mark.parametrize("data,digest", [(DATA, DIGEST), (LARGE, LARGE_DIGEST)], ids=["small", "large"])
TOKENS = pytest.mark.parametrize("token", [None, READ], ids=["anonymous", "token"])


@BOTH
@TOKENS
def test_get_headers_and_body(srv: Server, data: bytes, digest: str, token: str | None) -> None:
    with srv.client(token) as http:
        response = http.get(f"/v1/objects/{digest}")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["etag"] == f'"{digest}"'
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["cache-control"] == IMMUTABLE
    assert response.headers["content-length"] == str(len(data))


@BOTH
@TOKENS
def test_head_has_headers_and_no_body(srv: Server, data: bytes, digest: str, token: str | None) -> None:
    with srv.client(token) as http:
        response = http.head(f"/v1/objects/{digest}")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["etag"] == f'"{digest}"'
    assert response.headers["cache-control"] == IMMUTABLE


def test_head_without_body_on_raw_socket(srv: Server) -> None:
    """A HEAD answer must not carry body bytes: the next response on the connection starts at once."""
    host, port = srv.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"HEAD /v1/objects/{DIGEST} HTTP/1.1\r\nHost: t\r\n\r\n"
                     f"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 200"), rest[:80]


@BOTH
@TOKENS
def test_if_none_match_is_304(srv: Server, data: bytes, digest: str, token: str | None) -> None:
    with srv.client(token) as http:
        response = http.get(f"/v1/objects/{digest}", headers={"If-None-Match": f'"{digest}"'})
        assert response.status_code == 304 and response.content == b""
        assert response.headers["etag"] == f'"{digest}"'
        other = http.get(f"/v1/objects/{digest}", headers={"If-None-Match": '"abc"'})
        assert other.status_code == 200 and other.content == data


@pytest.mark.parametrize("spec,start,end", [("bytes=10-19", 10, 19), ("bytes=10000-", 10000, 10239),
                                            ("bytes=-5", 10235, 10239), ("bytes=0-0", 0, 0),
                                            ("bytes=10230-99999", 10230, 10239)])
def test_single_range_is_206(srv: Server, spec: str, start: int, end: int) -> None:
    with srv.client(None) as http:
        response = http.get(f"/v1/objects/{DIGEST}", headers={"Range": spec})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert response.headers["content-length"] == str(end - start + 1)
    assert response.content == DATA[start:end + 1]


def test_range_past_end_is_416(srv: Server) -> None:
    with srv.client(None) as http:
        response = http.get(f"/v1/objects/{DIGEST}", headers={"Range": f"bytes={len(DATA)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"
    assert error(response)["code"] == "range_not_satisfiable"


def test_malformed_range_is_json_400(srv: Server) -> None:
    with srv.client(None) as http:
        response = http.get(f"/v1/objects/{DIGEST}", headers={"Range": "bytes=9-3"})
    assert response.status_code == 400 and error(response)["code"] == "bad_range"


def test_range_in_an_unknown_unit_is_ignored(srv: Server) -> None:
    """RFC 9110: a Range in a unit the server does not support is ignored: 200, whole object."""
    with srv.client(None) as http:
        response = http.get(f"/v1/objects/{DIGEST}", headers={"Range": "items=0-3"})
    assert response.status_code == 200 and response.content == DATA


def _parse_byteranges(response: httpx.Response) -> list[tuple[str, bytes]]:
    match = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", response.headers["content-type"])
    assert match, response.headers["content-type"]
    boundary = match[1].encode()
    body = response.content
    assert body.endswith(b"--" + boundary + b"--")
    parts = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, payload = chunk[2:-2].split(b"\r\n\r\n", 1)
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n"))
        parts.append((headers[b"Content-Range"].decode(), payload))
    return parts


def test_multi_range_is_206_multipart(srv: Server) -> None:
    with srv.client(None) as http:
        response = http.get(f"/v1/objects/{DIGEST}", headers={"Range": "bytes=0-9, 300-309, -4"})
    assert response.status_code == 206
    assert response.headers["content-length"] == str(len(response.content))
    size = len(DATA)
    assert _parse_byteranges(response) == [
        (f"bytes 0-9/{size}", DATA[0:10]),
        (f"bytes 300-309/{size}", DATA[300:310]),
        (f"bytes {size - 4}-{size - 1}/{size}", DATA[-4:]),
    ]


def test_if_range_matching_etag_gives_206(srv: Server) -> None:
    with srv.client(None) as http:
        response = http.get(f"/v1/objects/{DIGEST}", headers={"Range": "bytes=100-199", "If-Range": f'"{DIGEST}"'})
    assert response.status_code == 206 and response.content == DATA[100:200]


def test_if_range_other_etag_gives_full_200(srv: Server) -> None:
    with srv.client(None) as http:
        response = http.get(f"/v1/objects/{DIGEST}",
                            headers={"Range": "bytes=100-199", "If-Range": f'"{"0" * 64}"'})
    assert response.status_code == 200 and response.content == DATA


@pytest.mark.parametrize("name", ["xyz", DIGEST.upper(), DIGEST[:-1], DIGEST + "0"])
def test_bad_digest_in_url_is_400(srv: Server, name: str) -> None:
    with srv.client(None) as http:
        response = http.get(f"/v1/objects/{name}")
    assert response.status_code == 400 and error(response)["code"] == "bad_digest"


def test_unknown_object_is_404(srv: Server) -> None:
    with srv.client(None) as http:
        response = http.get(f"/v1/objects/{'ab' * 32}")
        assert response.status_code == 404 and error(response)["code"] == "object_not_found"
        assert http.head(f"/v1/objects/{'ab' * 32}").status_code == 404


# -------------------------------------------------------------------------------------- missing

def test_missing_lists_only_absent_objects(srv: Server) -> None:
    absent = blake3_bytes(b"never stored")
    with srv.client(PUBLISH) as http:
        response = http.post("/v1/objects/missing", json={"objects": [DIGEST, absent, absent]})
    assert response.status_code == 200
    assert response.json() == {"missing": [absent]}


@pytest.mark.parametrize("body", [b"{not json", b'{"objects": ["nothex"]}', b'{"objects": 3}', b"[]"])
def test_missing_bad_body_is_4xx_json(srv: Server, body: bytes) -> None:
    with srv.client(PUBLISH) as http:
        response = http.post("/v1/objects/missing", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422)
    assert error(response)["code"] in ("malformed_json", "bad_request")


# ----------------------------------------------------------------------------------------- curl

def test_curl_resumes_an_interrupted_download(srv: Server, tmp_path: Path) -> None:
    """curl is cut off after a known prefix, then ``curl -C -`` resumes it (206).

    The cut is made by the test, not by a clock: the first curl writes to a pipe the test
    reads, so it can get no further than the test lets it (the pipe fills); the test keeps
    the first 128 KiB in the file and kills curl.  (This waited for a rate-limited curl to
    have written 128 KiB within 10 s: under load curl had often not started by then.)"""
    assert shutil.which("curl"), "curl is not installed (.ci/run installs it)"
    big = os.urandom(8 << 20)
    digest = blake3_bytes(big)
    with srv.client(PUBLISH) as http:
        assert http.put(f"/v1/objects/{digest}", content=big).status_code == 201
    url = f"{srv.url}/v1/objects/{digest}"
    out = tmp_path / "object"
    prefix = 128 << 10
    first = subprocess.Popen(["curl", "-sS", "-o", "-", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             bufsize=0)
    assert first.stdout is not None
    got = b""
    try:
        while len(got) < prefix:
            ready, _, _ = select.select([first.stdout], [], [], 120)  # a safety net: curl never stops by itself
            assert ready, f"curl sent nothing for 120 s after {len(got)} bytes"
            chunk = os.read(first.stdout.fileno(), prefix - len(got))
            assert chunk, f"curl ended after {len(got)} bytes: {first.stderr.read() if first.stderr else ''!r}"
            got += chunk
    finally:
        first.kill()
        first.communicate()
    assert got == big[:prefix]
    out.write_bytes(got)
    done = subprocess.run(["curl", "-sS", "-f", "-C", "-", "-o", str(out), "-w", "%{http_code}", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "206"  # resumed, not re-downloaded
    assert blake3_file(out) == digest


# ----------------------------------------------------------------------------------- operations

def test_healthz(srv: Server) -> None:
    with srv.client(None) as http:
        response = http.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["status"] == "ok"


def _requests_counter(text: str, method: str, status: str) -> float:
    """Requests of one method and status, summed over every endpoint label."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("cas_http_requests_total{") and f'method="{method}"' in line \
                and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_prometheus_text_counts_requests(srv: Server) -> None:
    with srv.client(None) as http:
        before = http.get("/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        assert "# TYPE cas_http_requests_total counter" in before.text
        ok, missing = _requests_counter(before.text, "GET", "200"), _requests_counter(before.text, "GET", "404")
        for _ in range(3):
            assert http.get(f"/v1/objects/{DIGEST}").status_code == 200
        http.get(f"/v1/objects/{'cd' * 32}")
        after = http.get("/metrics").text
    assert _requests_counter(after, "GET", "200") >= ok + 4  # three objects and the first /metrics
    assert _requests_counter(after, "GET", "404") == missing + 1
