"""casformat/canonical.py: canonical JSON, bounded parsing, Ed25519 signatures."""
from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.signing import add_signature, generate_key, private_from_pem, private_to_pem, sign
from casformat.canonical import MAX_DEPTH, canonical_bytes, document_digest, parse_json
from casformat.errors import DocumentError, DocumentTooLarge, SignatureError
from casformat.signatures import Role, key_id, verify

# ------------------------------------------------------------------ canonical bytes


def test_canonical_sorts_keys_without_whitespace() -> None:
    value = {"b": [1, 2, {"z": None, "a": True}], "a": "x", "A": False}
    assert canonical_bytes(value) == b'{"A":false,"a":"x","b":[1,2,{"a":true,"z":null}]}'


def test_canonical_keeps_utf8_unescaped() -> None:
    assert canonical_bytes({"k": "é€😀"}) == '{"k":"é€😀"}'.encode()
    # Order is by code point, independent of insertion order.
    assert canonical_bytes({"é": 1, "z": 2, "Z": 3}) == canonical_bytes({"Z": 3, "z": 2, "é": 1})


def test_canonical_refuses_floats_and_foreign_types() -> None:
    for bad in (1.0, {"a": 0.5}, [float("nan")], {"a": [1, {"b": float("inf")}]}):
        with pytest.raises(DocumentError, match="float"):
            canonical_bytes(bad)
    with pytest.raises(DocumentError):
        canonical_bytes({1: "non-string key"})
    with pytest.raises(DocumentError):
        canonical_bytes({"a": b"bytes"})


def test_canonical_refuses_lone_surrogates_with_a_document_error() -> None:
    with pytest.raises(DocumentError):
        canonical_bytes({"a": "\ud800"})


def test_digest_is_of_canonical_bytes() -> None:
    assert document_digest({"b": 1, "a": 2}) == document_digest({"a": 2, "b": 1})
    assert document_digest({"a": 1}) != document_digest({"a": 2})


# ------------------------------------------------------------------ parse_json

def test_parse_refuses_floats_and_constants() -> None:
    for text in (b'{"a": 1.0}', b'[1e5]', b'{"a": -0.0}', b'[NaN]', b'[Infinity]', b'[-Infinity]'):
        with pytest.raises(DocumentError):
            parse_json(text)


def test_parse_refuses_duplicate_keys_at_any_depth() -> None:
    with pytest.raises(DocumentError, match="duplicate"):
        parse_json(b'{"a": 1, "a": 1}')
    with pytest.raises(DocumentError, match="duplicate"):
        parse_json(b'{"x": [{"k": 1, "k": 2}]}')


def test_parse_depth_limit() -> None:
    ok = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert parse_json(ok) is not None
    with pytest.raises(DocumentError, match="nested"):
        parse_json(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    # Far beyond the recursion limit: refused cleanly, not a RecursionError.
    with pytest.raises(DocumentError):
        parse_json(b"[" * 200_000 + b"]" * 200_000)
    # Brackets inside strings do not count.
    assert parse_json(json.dumps({"s": "[" * 1000 + "\\\"{"}).encode()) == {"s": "[" * 1000 + "\\\"{"}


def test_parse_size_limit() -> None:
    body = json.dumps({"a": "x" * 100}).encode()
    assert parse_json(body, max_bytes=len(body))["a"] == "x" * 100
    with pytest.raises(DocumentTooLarge):
        parse_json(body, max_bytes=len(body) - 1)


def test_parse_malformed_and_non_utf8() -> None:
    for text in (b"", b"{", b'{"a": }', b"\xff\xfe{}", b'{"a": 1} trailing', b"{'a': 1}"):
        with pytest.raises(DocumentError):
            parse_json(text)


def test_parse_huge_integer_is_a_document_error() -> None:
    # Python refuses int conversion beyond 4300 digits with a bare ValueError.
    with pytest.raises(DocumentError):
        parse_json(b'{"a": ' + b"1" * 5000 + b"}")


def test_parse_lone_surrogate_is_refused() -> None:
    # Valid JSON, but not representable as UTF-8: cannot have canonical bytes.
    with pytest.raises(DocumentError):
        parse_json(b'{"a": "\\udc80"}')
    assert parse_json(b'{"a": "\\ud83d\\ude00"}') == {"a": "😀"}  # a proper pair is fine


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30)
    | st.text(alphabet=st.characters(exclude_categories=("Cs",))),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=8), children,
                      max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_canonical_round_trip(value: object) -> None:
    data = canonical_bytes(value)
    assert parse_json(data) == value
    assert canonical_bytes(parse_json(data)) == data  # a fixed point
    assert b"\n" not in data.replace(b"\\n", b"")


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.integers(), min_size=2, max_size=6))
def test_canonical_independent_of_insertion_order(value: dict) -> None:
    reordered = dict(reversed(list(value.items())))
    assert canonical_bytes(reordered) == canonical_bytes(value)


# ------------------------------------------------------------------ signatures

def role_of(*keys, threshold: int = 1) -> Role:
    return Role({key_id(k.public_key()): k.public_key() for k in keys}, threshold)


SIGNED = {"schema": 1, "product": "app", "version": "1.0.0", "files": []}


def test_sign_verify_roundtrip_and_pem() -> None:
    key = private_from_pem(private_to_pem(generate_key()))
    envelope = sign(SIGNED, [key])
    assert verify(envelope, role_of(key)) == SIGNED
    # The envelope survives a canonical round trip (what the wire carries).
    assert verify(parse_json(canonical_bytes(envelope)), role_of(key)) == SIGNED


def test_threshold_needs_distinct_keys() -> None:
    a, b, c = generate_key(), generate_key(), generate_key()
    role = role_of(a, b, c, threshold=2)
    assert verify(sign(SIGNED, [a, b]), role) == SIGNED
    with pytest.raises(SignatureError, match="1 valid"):
        verify(sign(SIGNED, [a]), role)
    # The same key's signature repeated counts once.
    doubled = sign(SIGNED, [a])
    doubled["signatures"] = doubled["signatures"] * 3
    with pytest.raises(SignatureError):
        verify(doubled, role)
    # A bad signature under a key id does not block a good one of the same key, but counts once.
    envelope = sign(SIGNED, [a])
    bogus = {"keyid": envelope["signatures"][0]["keyid"], "sig": base64.b64encode(b"\0" * 64).decode()}
    envelope["signatures"].insert(0, bogus)
    assert verify(envelope, role_of(a)) == SIGNED
    # add_signature replaces rather than appends a key's signature.
    again = add_signature(add_signature(sign(SIGNED, [a]), a), b)
    assert len(again["signatures"]) == 2 and verify(again, role) == SIGNED


def test_wrong_key_and_untrusted_key() -> None:
    trusted, other = generate_key(), generate_key()
    with pytest.raises(SignatureError):
        verify(sign(SIGNED, [other]), role_of(trusted))
    # An untrusted key's signature placed under the trusted key id.
    forged = sign(SIGNED, [other])
    forged["signatures"][0]["keyid"] = key_id(trusted.public_key())
    with pytest.raises(SignatureError):
        verify(forged, role_of(trusted))


def test_tampered_payload_and_signature() -> None:
    key = generate_key()
    envelope = sign(SIGNED, [key])
    tampered = {"signed": {**SIGNED, "version": "1.0.1"}, "signatures": envelope["signatures"]}
    with pytest.raises(SignatureError):
        verify(tampered, role_of(key))
    raw = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    raw[0] ^= 1
    flipped = {"signed": SIGNED, "signatures": [{**envelope["signatures"][0],
                                                  "sig": base64.b64encode(bytes(raw)).decode()}]}
    with pytest.raises(SignatureError):
        verify(flipped, role_of(key))
    for junk in ("not base64!", "", "AAAA"):
        bad = {"signed": SIGNED, "signatures": [{**envelope["signatures"][0], "sig": junk}]}
        with pytest.raises(SignatureError):
            verify(bad, role_of(key))


def test_unsigned_and_malformed_envelopes() -> None:
    key = generate_key()
    with pytest.raises(SignatureError, match="not signed"):
        verify({"signed": SIGNED, "signatures": []}, role_of(key))
    for bad in ({"signed": SIGNED}, {"signed": SIGNED, "signatures": [], "extra": 1},
                {"signed": [], "signatures": []}, {"signed": SIGNED, "signatures": [{"keyid": 1, "sig": ""}]},
                [SIGNED], None):
        with pytest.raises(DocumentError):
            verify(bad, role_of(key))
    with pytest.raises(SignatureError):
        verify(sign(SIGNED, [key]), Role({}, 0))
