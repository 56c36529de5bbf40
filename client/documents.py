"""Canonical JSON and Ed25519 signatures: the one owner of document bytes.

Pure functions over bytes and dicts; no disk, no network.  Canonical JSON is
UTF-8, keys sorted, no insignificant whitespace and no floats.  A signed
document is an envelope ``{"signed": {...}, "signatures": [{"keyid", "sig"}]}``
and signatures are always over ``canonical_bytes(signed)``.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from deltagen.digests import blake3_bytes

from .errors import DocumentError, DocumentTooLarge, ExpiredDocument, SignatureError

MAX_DOCUMENT_BYTES = 64 << 20  # a manifest of ~200k files fits
MAX_DEPTH = 32


# --------------------------------------------------------------------------- JSON

def _check_value(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise DocumentError("document nested too deeply")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        raise DocumentError("floats are not allowed in canonical JSON")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise DocumentError("object keys must be strings")
            _check_value(item, depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_value(item, depth + 1)
        return
    raise DocumentError(f"type {type(value).__name__} cannot be encoded")


def canonical_bytes(value: Any) -> bytes:
    """The canonical encoding of a JSON value."""
    _check_value(value)
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 encoding
        raise DocumentError("document holds a string that is not valid Unicode (lone surrogate)") from exc


def document_digest(value: Any) -> str:
    """BLAKE3 of the canonical bytes (the manifest digest is this of ``signed``)."""
    return blake3_bytes(canonical_bytes(value))


def _nesting_depth(data: bytes) -> int:
    """Maximum bracket depth of a JSON text, strings skipped (linear scan)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _reject_float(text: str) -> Any:
    raise DocumentError(f"floats are not allowed: {text[:20]}")


def _reject_constant(text: str) -> Any:
    raise DocumentError(f"{text} is not allowed")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DocumentError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_json(data: bytes, max_bytes: int = MAX_DOCUMENT_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON with size, depth, float and duplicate-key limits."""
    if len(data) > max_bytes:
        raise DocumentTooLarge(f"document of {len(data)} bytes exceeds the limit of {max_bytes}")
    if _nesting_depth(data) > max_depth:
        raise DocumentError(f"document nested deeper than {max_depth}")
    try:
        text = data.decode("utf-8")
        value = json.loads(text, parse_float=_reject_float, parse_constant=_reject_constant,
                           object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as exc:
        raise DocumentError("document is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise DocumentError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except ValueError as exc:  # e.g. an integer beyond Python's int conversion digit limit
        raise DocumentError(f"malformed JSON: {exc}"[:200]) from exc
    if "\\u" in text:
        # A \u escape can decode to a lone surrogate, which has no canonical (UTF-8) bytes.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DocumentError("document holds an unpaired surrogate (\\uD800-\\uDFFF)") from exc
    return value


# --------------------------------------------------------------------------- time

def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> datetime:
    if not isinstance(text, str):
        raise DocumentError("timestamp must be a string")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError as exc:
        raise DocumentError(f"bad timestamp {text!r} (want YYYY-MM-DDTHH:MM:SSZ)") from exc


def check_not_expired(signed: Mapping[str, Any], now: datetime | None = None) -> None:
    expires = parse_time(signed.get("expires"))
    if (now or utc_now()) >= expires:
        raise ExpiredDocument(f"document expired at {format_time(expires)}")


# --------------------------------------------------------------------------- keys

def key_id(public: Ed25519PublicKey) -> str:
    """keyid = hex BLAKE3 of the raw 32-byte public key."""
    return blake3_bytes(public_raw(public))


def public_raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_from_hex(text: str) -> Ed25519PublicKey:
    try:
        raw = bytes.fromhex(text)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError) as exc:
        raise DocumentError("bad Ed25519 public key") from exc


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def private_from_pem(data: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise DocumentError("not an Ed25519 private key")
    return key


def public_entry(key: Ed25519PrivateKey | Ed25519PublicKey) -> dict[str, str]:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return {"keytype": "ed25519", "public": public_raw(public).hex()}


# --------------------------------------------------------------------------- signatures

def sign(signed: Mapping[str, Any], keys: Iterable[Ed25519PrivateKey]) -> dict[str, Any]:
    """Envelope of ``signed`` with one signature per key."""
    payload = canonical_bytes(signed)
    signatures = [{"keyid": key_id(k.public_key()),
                   "sig": base64.b64encode(k.sign(payload)).decode("ascii")} for k in keys]
    return {"signed": dict(signed), "signatures": signatures}


def add_signature(envelope: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    payload = canonical_bytes(envelope["signed"])
    kid = key_id(key.public_key())
    signatures = [s for s in envelope.get("signatures", []) if s.get("keyid") != kid]
    signatures.append({"keyid": kid, "sig": base64.b64encode(key.sign(payload)).decode("ascii")})
    return {"signed": envelope["signed"], "signatures": signatures}


def split_envelope(envelope: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    # An optional "cms" string (detached CMS signature over canonical_bytes(signed), see client/cms.py)
    # may ride along; any other extra field is refused.
    if not isinstance(envelope, dict) or set(envelope) - {"cms"} != {"signed", "signatures"}:
        raise DocumentError("a signed document has exactly the fields 'signed' and 'signatures' "
                            "(and optionally 'cms')")
    if "cms" in envelope and not isinstance(envelope["cms"], str):
        raise DocumentError("'cms' must be a base64 string")
    signed, signatures = envelope["signed"], envelope["signatures"]
    if not isinstance(signed, dict):
        raise DocumentError("'signed' must be an object")
    if not isinstance(signatures, list) or not all(
            isinstance(s, dict) and isinstance(s.get("keyid"), str) and isinstance(s.get("sig"), str)
            for s in signatures):
        raise DocumentError("'signatures' must be a list of {keyid, sig}")
    return signed, signatures


@dataclass(frozen=True)
class Role:
    """Trusted keys of one role and how many of them must sign."""

    keys: Mapping[str, Ed25519PublicKey]
    threshold: int = 1


def verify(envelope: Any, role: Role) -> dict[str, Any]:
    """Return ``signed`` when at least ``threshold`` distinct trusted keys signed it."""
    signed, signatures = split_envelope(envelope)
    if role.threshold < 1:
        raise SignatureError("role threshold must be at least 1")
    payload = canonical_bytes(signed)
    good: set[str] = set()
    for entry in signatures:
        kid = entry["keyid"]
        public = role.keys.get(kid)
        if public is None or kid in good:
            continue
        try:
            public.verify(base64.b64decode(entry["sig"], validate=True), payload)
        except (InvalidSignature, binascii.Error, ValueError):
            continue
        good.add(kid)
    if len(good) < role.threshold:
        if not signatures:
            raise SignatureError("document is not signed")
        raise SignatureError(
            f"{len(good)} valid signature(s) by trusted keys, {role.threshold} required")
    return signed
