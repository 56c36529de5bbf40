"""Enterprise (X.509 / CMS) signing of release manifests: the publisher's and the server's side.

* ``cas publish --cms-cert CERT.pem --cms-key KEY.pem [--cms-chain CHAIN.pem]`` adds a
  detached CMS signature (``"cms"``) to the manifest envelope: ``add_cms``.
* ``releases.publish`` calls ``check_manifest`` before anything is recorded: when the
  server is configured with ``cms_trust_anchors`` a CMS signature present on a
  manifest must verify (signature, chain, code-signing EKU, validity); with
  ``require_cms = true`` a manifest without one is refused too.  Refusals are 422
  ``bad_cms_signature``.

The verification itself lives in ``casformat/cms.py`` so that the server and the
client apply the very same checks; making signatures (``sign_detached``,
``sign_manifest``, ``load_signing_material``) is the publisher's side and lives here.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from casformat.canonical import canonical_bytes
from casformat.cms import (
    CMS_FIELD,
    CmsPolicy,
    CmsSignatureError,
    CmsSigner,
    cms_of,
    load_certificates,
    policy_from_settings,
    verify_manifest,
)
from casformat.signatures import split_envelope

from .config import Config
from .errors import CasError, Invalid

CODE = "bad_cms_signature"


def add_cms(envelope: Mapping[str, Any], cert_file: str, key_file: str, chain_file: str | None = None
            ) -> dict[str, Any]:
    """The envelope with a detached CMS signature by the certificate's key.

    A passphrase-protected key reads its passphrase from ``CAS_CMS_KEY_PASSWORD``.
    """
    password = os.environ.get("CAS_CMS_KEY_PASSWORD")
    try:
        cert, key, chain = load_signing_material(cert_file, key_file, chain_file,
                                                 password.encode() if password else None)
        return sign_manifest(envelope, cert, key, chain)
    except CmsSignatureError as exc:
        raise CasError(f"cannot make the CMS signature: {exc.message}", code="cms_signing_failed") from None
    except (OSError, ValueError, TypeError) as exc:
        raise CasError(f"cannot make the CMS signature: {exc}", code="cms_signing_failed") from None


def server_policy(config: Config) -> CmsPolicy | None:
    """The server's CMS policy; relative anchor paths are taken from the store directory."""
    return policy_from_settings(config.cms_trust_anchors, config.require_cms, Path(config.store))


def check_manifest(config: Config, envelope: Mapping[str, Any]) -> CmsSigner | None:
    """Fail closed: raise ``Invalid`` (422 ``bad_cms_signature``) unless the manifest passes."""
    if "cms" not in envelope and not config.cms_trust_anchors and not config.require_cms:
        return None  # CMS signing not in use here
    try:
        policy = server_policy(config)
        if policy is None:
            cms_of(envelope)  # not configured: keep only well-formed base64 of a bounded size
            return None
        return verify_manifest(envelope, policy)
    except CmsSignatureError as exc:
        raise Invalid(f"CMS signature refused: {exc.message}", code=CODE) from None
    except Exception as exc:  # fail closed on anything unexpected
        raise Invalid(f"CMS signature refused: {type(exc).__name__}: {exc}"[:300], code=CODE) from None


# --------------------------------------------------------------------------- signing

def sign_detached(content: bytes, certificate: x509.Certificate, key: Any,
                  chain: Iterable[x509.Certificate] = (),
                  hash_algorithm: hashes.HashAlgorithm | None = None,
                  rsa_padding: Any = None) -> bytes:
    """DER of a detached CMS SignedData over ``content`` (binary: no MIME canonicalisation)."""
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise CmsSignatureError("a CMS signing key must be RSA or ECDSA")
    builder = pkcs7.PKCS7SignatureBuilder().set_data(content).add_signer(
        certificate, key, cast("hashes.SHA256", hash_algorithm or hashes.SHA256()), rsa_padding=rsa_padding)
    for extra in chain:
        builder = builder.add_certificate(extra)
    return builder.sign(serialization.Encoding.DER,
                        [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary])


def sign_manifest(envelope: Mapping[str, Any], certificate: x509.Certificate, key: Any,
                  chain: Iterable[x509.Certificate] = ()) -> dict[str, Any]:
    """The envelope with a ``cms`` field: a detached signature over ``canonical_bytes(signed)``."""
    signed, signatures = split_envelope(dict(envelope))
    der = sign_detached(canonical_bytes(signed), certificate, key, chain)
    return {"signed": signed, "signatures": signatures, CMS_FIELD: base64.b64encode(der).decode("ascii")}



def load_signing_material(cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str],
                          chain_file: str | os.PathLike[str] | None = None,
                          password: bytes | None = None) -> tuple[x509.Certificate, Any, list[x509.Certificate]]:
    """(certificate, private key, extra chain certificates) from PEM/DER files."""
    certs = load_certificates(Path(cert_file).read_bytes())
    data = Path(key_file).read_bytes()
    try:
        key = (serialization.load_pem_private_key(data, password) if b"-----BEGIN" in data
               else serialization.load_der_private_key(data, password))
    except (ValueError, TypeError) as exc:
        raise CmsSignatureError(f"cannot read CMS signing key {key_file}: {exc}") from None
    chain = certs[1:] + (load_certificates(Path(chain_file).read_bytes()) if chain_file else [])
    return certs[0], key, chain
