"""The one place If-None-Match is compared and Accept-Encoding read (cas/http/conditional.py)."""
from __future__ import annotations

import gzip

import pytest

from cas.http.conditional import accepts_gzip, document_response, etag_matches


@pytest.mark.parametrize("header,expected", [
    (None, False), ("", False), ("identity", False), ("gzip", True), ("GZIP, deflate", True),
    ("gzip;q=0", False), ("gzip; q=0.5", True), ("deflate, gzip;q=0.0", False), ("*;q=0", False),
    ("br, *", True), ("gzip;level=1;q=0", False), ("gzip;q=x", False), ("x-gzip", True)])
def test_accepts_gzip(header: str | None, expected: bool) -> None:
    assert accepts_gzip(header) is expected


def test_etags_compare_weakly() -> None:
    assert etag_matches('W/"a"', '"a"') and etag_matches('"b", "a"', 'W/"a"') and etag_matches("*", '"a"')
    assert not etag_matches('"a"', '"b"') and not etag_matches(None, '"a"')


def test_document_response_gzips_only_what_it_may() -> None:
    body = b'{"signed": "' + b"x" * 4000 + b'"}'
    packed = document_response({"accept-encoding": "gzip"}, body, '"d"', "no-cache", compressible=True)
    assert packed.headers["content-encoding"] == "gzip" and packed.headers["etag"] == 'W/"d"'
    assert gzip.decompress(packed.body) == body and packed.headers["vary"] == "Accept-Encoding"
    assert packed.body == document_response({"accept-encoding": "gzip"}, body, '"d"', "no-cache", True).body
    for headers, compressible, small in (({}, True, False), ({"accept-encoding": "gzip"}, False, False),
                                         ({"accept-encoding": "gzip"}, True, True)):
        data = b"{}" if small else body
        plain = document_response(headers, data, '"d"', "no-cache", compressible)
        assert "content-encoding" not in plain.headers and plain.body == data and plain.headers["etag"] == '"d"'
    assert document_response({"if-none-match": 'W/"d"'}, body, '"d"', "no-cache", True).status_code == 304
