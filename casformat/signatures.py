"""Ed25519 signatures over canonical JSON: keys, envelopes, thresholds, expiry (verification only).

A signed document is an envelope ``{"signed": {...}, "signatures": [{"keyid", "sig"}]}``
(optionally with a detached ``"cms"`` signature, ``casformat/cms.py``); signatures are
always over ``canonical_bytes(signed)``.  Signing and key generation belong to the
server (``cas/signing.py``).
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from deltagen.digests import blake3_bytes

from .canonical import canonical_bytes
from .errors import DocumentError, ExpiredDocument, SignatureError
from .times import format_time, parse_time, utc_now


def check_not_expired(signed: Mapping[str, Any], now: datetime | None = None) -> None:
    expires = parse_time(signed.get("expires"))
    if (now or utc_now()) >= expires:
        raise ExpiredDocument(f"document expired at {format_time(expires)}")


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


def split_envelope(envelope: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    # An optional "cms" string (detached CMS signature over canonical_bytes(signed), see casformat/cms.py)
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
