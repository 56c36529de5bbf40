"""Ed25519 key generation and signing: the server's side of ``casformat.signatures``.

The thin client only verifies; everything that holds a private key lives here.
"""
from __future__ import annotations

import base64
from typing import Any, Iterable, Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from casformat.canonical import canonical_bytes
from casformat.errors import DocumentError
from casformat.signatures import key_id, public_raw


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
