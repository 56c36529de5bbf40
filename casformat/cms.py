"""Detached CMS (PKCS#7) signatures over release manifests, checked against X.509 trust anchors.

A release manifest may carry, beside its Ed25519 ``signatures``, a detached CMS
``SignedData`` made with an enterprise X.509 code-signing certificate::

    {"signed": {...}, "signatures": [...], "cms": "<base64 of the DER SignedData>"}

The CMS signature is over ``canonical_bytes(signed)`` -- the same bytes the
Ed25519 signatures cover -- so it survives storage, mirrors and manifest deltas.

Who does what (no hand-written DER anywhere):

* ``cryptography`` makes the signature (``PKCS7SignatureBuilder``, detached,
  binary, DER), loads the certificates the SignedData carries
  (``load_der_pkcs7_certificates``), hashes, checks the signer's RSA / ECDSA
  signature, and builds and checks the chain to a configured trust anchor
  (``x509.verification``: validity periods of every certificate at the
  verification time, basic constraints, key usage, path length, signature
  algorithms and key sizes), with our extension policies on top: the leaf must
  carry the code-signing EKU (1.3.6.1.5.5.7.3.3), keyUsage digitalSignature and
  must not be a CA; issuers must be CAs and, when they restrict EKUs, allow code
  signing.
* ``pyasn1`` + ``pyasn1-modules`` (RFC 5652 / 4055 / 5280 modules) decode the
  SignedData structure that ``cryptography`` does not expose for verification
  (cryptography 48 signs PKCS#7 but does not verify it): signer identifier,
  digest and signature algorithms, signed attributes and their DER re-encoding.

Everything fails closed: any error, unknown algorithm, ambiguity or missing
piece raises ``CmsSignatureError`` (code ``bad_cms_signature``).
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pyasn1_modules import rfc4055, rfc5280, rfc5480, rfc5652

from .canonical import canonical_bytes
from .errors import DocumentError, SignatureError
from .signatures import split_envelope
from .times import utc_now

CMS_FIELD = "cms"
MAX_CMS_BYTES = 256 << 10        # a SignedData with a long chain is a few KiB
MAX_CHAIN_DEPTH = 8
CODE_SIGNING = ExtendedKeyUsageOID.CODE_SIGNING                  # 1.3.6.1.5.5.7.3.3
ANY_EKU = ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE


class CmsSignatureError(SignatureError):
    """A CMS signature is missing, malformed, forged, or its certificate chain is not trusted."""

    code = "bad_cms_signature"


# --------------------------------------------------------------------------- algorithms

_HASHES: dict[univ.ObjectIdentifier, type[hashes.HashAlgorithm]] = {
    rfc4055.id_sha256: hashes.SHA256,
    rfc4055.id_sha384: hashes.SHA384,
    rfc4055.id_sha512: hashes.SHA512,
}
_RSA_PKCS1: dict[univ.ObjectIdentifier, type[hashes.HashAlgorithm]] = {
    rfc4055.sha256WithRSAEncryption: hashes.SHA256,
    rfc4055.sha384WithRSAEncryption: hashes.SHA384,
    rfc4055.sha512WithRSAEncryption: hashes.SHA512,
}
_ECDSA: dict[univ.ObjectIdentifier, type[hashes.HashAlgorithm]] = {
    rfc5480.ecdsa_with_SHA256: hashes.SHA256,
    rfc5480.ecdsa_with_SHA384: hashes.SHA384,
    rfc5480.ecdsa_with_SHA512: hashes.SHA512,
}
_RSA_ENCRYPTION = univ.ObjectIdentifier("1.2.840.113549.1.1.1")


def _hash_of(oid: univ.ObjectIdentifier, what: str) -> hashes.HashAlgorithm:
    algorithm = _HASHES.get(oid)
    if algorithm is None:
        raise CmsSignatureError(f"unsupported {what} {oid} (SHA-256, SHA-384 or SHA-512 required)")
    return algorithm()


def _decode(data: bytes, spec: Any, what: str) -> Any:
    try:
        value, rest = der_decoder.decode(data, asn1Spec=spec)
    except (PyAsn1Error, ValueError, TypeError) as exc:
        raise CmsSignatureError(f"malformed {what}: {str(exc)[:160]}") from None
    if rest:
        raise CmsSignatureError(f"malformed {what}: {len(rest)} trailing bytes")
    return value


# --------------------------------------------------------------------------- loading

def load_certificates(data: bytes) -> list[x509.Certificate]:
    """All certificates of a PEM bundle, or one DER certificate."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise CmsSignatureError(f"cannot read certificates: {exc}") from None


def load_anchors(spec: str, base: Path | None = None) -> list[x509.Certificate]:
    """Trust anchors from inline PEM text (embedded in a config) or from a PEM/DER file."""
    if "-----BEGIN" in spec:
        anchors = load_certificates(spec.encode("ascii", "replace"))
    else:
        path = Path(spec).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        try:
            anchors = load_certificates(path.read_bytes())
        except OSError as exc:
            raise CmsSignatureError(f"cannot read CMS trust anchors {path}: {exc.strerror}") from None
    if not anchors:
        raise CmsSignatureError("no CMS trust anchors configured")
    return anchors


@dataclass(frozen=True)
class CmsPolicy:
    """What a verifier trusts and demands.

    ``require``: a manifest without a CMS signature is refused.  A manifest that
    carries one is always checked when a policy exists, required or not.
    """

    anchors: tuple[x509.Certificate, ...]
    require: bool = True
    max_chain_depth: int = MAX_CHAIN_DEPTH


def policy_from_settings(anchors: str | None, require: bool, base: Path | None = None) -> CmsPolicy | None:
    """A policy from config values; ``None`` when CMS checking is not configured at all."""
    if not anchors:
        if require:
            raise CmsSignatureError("CMS signatures are required but no CMS trust anchors are configured")
        return None
    return CmsPolicy(tuple(load_anchors(anchors, base)), require=require)


# --------------------------------------------------------------------------- verification

@dataclass(frozen=True)
class CmsSigner:
    """The verified signer: its certificate and the chain up to (and with) the trust anchor."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()


def _eku_allows_code_signing(eku: x509.ExtendedKeyUsage | None) -> bool:
    return eku is None or CODE_SIGNING in eku or ANY_EKU in eku


def _ee_key_usage(policy: Any, cert: x509.Certificate, ku: x509.KeyUsage) -> None:
    if not ku.digital_signature:
        raise ValueError("code-signing certificate lacks keyUsage digitalSignature")


def _ee_eku(policy: Any, cert: x509.Certificate, eku: x509.ExtendedKeyUsage) -> None:
    if CODE_SIGNING not in eku:
        raise ValueError("certificate lacks the code-signing extended key usage (1.3.6.1.5.5.7.3.3)")


def _ee_basic_constraints(policy: Any, cert: x509.Certificate, bc: x509.BasicConstraints | None) -> None:
    if bc is not None and bc.ca:
        raise ValueError("signing certificate is a CA (basicConstraints CA:TRUE); a leaf must have CA:FALSE")


def _ca_eku(policy: Any, cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    if not _eku_allows_code_signing(eku):
        raise ValueError("issuing CA restricts extended key usages and excludes code signing")


def _policies() -> tuple[ExtensionPolicy, ExtensionPolicy]:
    """(CA policy, leaf policy): the Web PKI defaults, retargeted at code signing."""
    ca = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _ca_eku)
    ee = (ExtensionPolicy.webpki_defaults_ee()
          # Code-signing certificates name a publisher, not a host: no SAN required.
          .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
          .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _ee_eku)
          .require_present(x509.KeyUsage, Criticality.AGNOSTIC, _ee_key_usage)
          .may_be_present(x509.BasicConstraints, Criticality.AGNOSTIC, _ee_basic_constraints))
    return ca, ee


def _attribute_value(attrs: Any, oid: univ.ObjectIdentifier, name: str) -> bytes:
    found = [a for a in attrs if a["attrType"] == oid]
    if len(found) != 1 or len(found[0]["attrValues"]) != 1:
        raise CmsSignatureError(f"signed attributes must hold exactly one {name}")
    return bytes(found[0]["attrValues"][0])


def _signed_attributes_bytes(signer_info: Any, digest: bytes) -> bytes:
    """Check contentType/messageDigest and return the DER of the attributes as signed (SET OF)."""
    attrs = signer_info["signedAttrs"]
    content_type = _decode(_attribute_value(attrs, rfc5652.id_contentType, "content type"),
                           univ.ObjectIdentifier(), "content-type attribute")
    if content_type != rfc5652.id_data:
        raise CmsSignatureError(f"signed content type is {content_type}, not id-data")
    message_digest = _decode(_attribute_value(attrs, rfc5652.id_messageDigest, "message digest"),
                             univ.OctetString(), "message-digest attribute")
    if bytes(message_digest) != digest:
        raise CmsSignatureError("CMS message digest does not match the manifest (tampered or wrong content)")
    # RFC 5652 5.4: the signature covers the DER of the attributes with the universal SET OF tag,
    # not the [0] IMPLICIT tag they carry inside SignerInfo.
    as_set = univ.SetOf(componentType=rfc5652.Attribute())
    for i, attr in enumerate(attrs):
        as_set.setComponentByPosition(i, attr)
    return bytes(der_encoder.encode(as_set))


def _check_signature(public: Any, signer_info: Any, data: bytes, digest_hash: hashes.HashAlgorithm) -> None:
    algorithm = signer_info["signatureAlgorithm"]
    oid = algorithm["algorithm"]
    signature = bytes(signer_info["signature"])
    try:
        if oid == _RSA_ENCRYPTION or oid in _RSA_PKCS1:
            if not isinstance(public, rsa.RSAPublicKey):
                raise CmsSignatureError("RSA signature algorithm with a non-RSA certificate")
            hash_algorithm = digest_hash if oid == _RSA_ENCRYPTION else _RSA_PKCS1[oid]()
            if hash_algorithm.name != digest_hash.name:
                raise CmsSignatureError("signature and digest algorithms disagree")
            public.verify(signature, data, padding.PKCS1v15(), hash_algorithm)
        elif oid == rfc4055.id_RSASSA_PSS:
            if not isinstance(public, rsa.RSAPublicKey):
                raise CmsSignatureError("RSASSA-PSS signature with a non-RSA certificate")
            if not algorithm["parameters"].isValue:
                raise CmsSignatureError("RSASSA-PSS without parameters")
            params = _decode(der_encoder.encode(algorithm["parameters"]), rfc4055.RSASSA_PSS_params(),
                             "RSASSA-PSS parameters")
            hash_algorithm = _hash_of(params["hashAlgorithm"]["algorithm"], "PSS hash")
            mgf = params["maskGenAlgorithm"]
            if mgf["algorithm"] != rfc4055.id_mgf1:
                raise CmsSignatureError("RSASSA-PSS mask generation must be MGF1")
            mgf_hash = _decode(der_encoder.encode(mgf["parameters"]), rfc5280.AlgorithmIdentifier(),
                               "MGF1 parameters")
            mgf_algorithm = _hash_of(mgf_hash["algorithm"], "MGF1 hash")
            if hash_algorithm.name != digest_hash.name or mgf_algorithm.name != digest_hash.name:
                raise CmsSignatureError("signature and digest algorithms disagree")
            public.verify(signature, data, padding.PSS(padding.MGF1(mgf_algorithm), int(params["saltLength"])),
                          hash_algorithm)
        elif oid in _ECDSA:
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise CmsSignatureError("ECDSA signature algorithm with a non-EC certificate")
            hash_algorithm = _ECDSA[oid]()
            if hash_algorithm.name != digest_hash.name:
                raise CmsSignatureError("signature and digest algorithms disagree")
            public.verify(signature, data, ec.ECDSA(hash_algorithm))
        else:
            raise CmsSignatureError(f"unsupported CMS signature algorithm {oid}")
    except InvalidSignature:
        raise CmsSignatureError("CMS signature does not verify (tampered manifest or wrong key)") from None
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise CmsSignatureError(f"CMS signature cannot be checked: {exc}") from None


def _find_signer(signer_info: Any, certificates: Sequence[x509.Certificate]) -> x509.Certificate:
    sid = signer_info["sid"]
    matches: list[x509.Certificate] = []
    if sid.getName() == "issuerAndSerialNumber":
        serial = int(sid["issuerAndSerialNumber"]["serialNumber"])
        issuer = der_encoder.encode(sid["issuerAndSerialNumber"]["issuer"])
        for cert in certificates:
            if cert.serial_number != serial:
                continue
            parsed = _decode(cert.public_bytes(serialization.Encoding.DER), rfc5280.Certificate(), "certificate")
            if der_encoder.encode(parsed["tbsCertificate"]["issuer"]) == issuer:
                matches.append(cert)
    elif sid.getName() == "subjectKeyIdentifier":
        wanted = bytes(sid["subjectKeyIdentifier"])
        for cert in certificates:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except x509.ExtensionNotFound:
                continue
            if ski == wanted:
                matches.append(cert)
    else:
        raise CmsSignatureError("CMS signer identifier is neither issuer+serial nor subject key identifier")
    if len(matches) != 1:
        raise CmsSignatureError("the CMS signature does not carry its signer's certificate"
                                if not matches else "the CMS signer certificate is ambiguous")
    return matches[0]


def _check_chain(leaf: x509.Certificate, intermediates: list[x509.Certificate],
                 anchors: Sequence[x509.Certificate], now: datetime,
                 max_depth: int = MAX_CHAIN_DEPTH) -> list[x509.Certificate]:
    # A clear message for the commonest failure before the generic chain error.
    if now < leaf.not_valid_before_utc:
        raise CmsSignatureError(f"signing certificate {leaf.subject.rfc4514_string()} is not valid before "
                                f"{leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}")
    if now > leaf.not_valid_after_utc:
        raise CmsSignatureError(f"signing certificate {leaf.subject.rfc4514_string()} expired at "
                                f"{leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    ca_policy, ee_policy = _policies()
    try:
        verifier = (PolicyBuilder().store(Store(list(anchors))).time(now).max_chain_depth(max_depth)
                    .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy).build_client_verifier())
        return list(verifier.verify(leaf, intermediates).chain)
    except VerificationError as exc:
        raise CmsSignatureError(f"CMS signing certificate {leaf.subject.rfc4514_string()} is not trusted: "
                                f"{exc}") from None
    except ValueError as exc:
        raise CmsSignatureError(f"CMS certificate chain cannot be checked: {exc}") from None


def verify_detached(der: bytes, content: bytes, anchors: Sequence[x509.Certificate],
                    now: datetime | None = None, max_chain_depth: int = MAX_CHAIN_DEPTH) -> CmsSigner:
    """Check a detached CMS SignedData over ``content`` and its signer's chain to ``anchors``."""
    if not anchors:
        raise CmsSignatureError("no CMS trust anchors configured")
    if len(der) > MAX_CMS_BYTES:
        raise CmsSignatureError(f"CMS signature of {len(der)} bytes exceeds {MAX_CMS_BYTES}")
    now = (now or utc_now()).astimezone(UTC)
    info = _decode(der, rfc5652.ContentInfo(), "CMS ContentInfo")
    if info["contentType"] != rfc5652.id_signedData:
        raise CmsSignatureError(f"CMS content type is {info['contentType']}, not signed-data")
    signed_data = _decode(bytes(info["content"]), rfc5652.SignedData(), "CMS SignedData")
    encap = signed_data["encapContentInfo"]
    if encap["eContentType"] != rfc5652.id_data:
        raise CmsSignatureError("CMS encapsulated content type must be id-data")
    if encap["eContent"].isValue:
        raise CmsSignatureError("CMS signature must be detached (it embeds content)")
    signer_infos = signed_data["signerInfos"]
    if len(signer_infos) != 1:
        raise CmsSignatureError(f"CMS signature must have exactly one signer, not {len(signer_infos)}")
    signer_info = signer_infos[0]
    try:
        certificates = pkcs7.load_der_pkcs7_certificates(der)
    except ValueError:  # no certificates at all
        certificates = []
    leaf = _find_signer(signer_info, certificates)
    digest_hash = _hash_of(signer_info["digestAlgorithm"]["algorithm"], "CMS digest algorithm")
    hasher = hashes.Hash(digest_hash)
    hasher.update(content)
    digest = hasher.finalize()
    if signer_info["signedAttrs"].isValue:
        data = _signed_attributes_bytes(signer_info, digest)
    else:
        data = content  # no signed attributes: the signature is over the content itself
    try:
        public = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CmsSignatureError(f"signing certificate key cannot be used: {exc}") from None
    _check_signature(public, signer_info, data, digest_hash)
    intermediates = [c for c in certificates if c is not leaf and c != leaf]
    chain = _check_chain(leaf, intermediates, anchors, now, max_chain_depth)
    return CmsSigner(leaf, tuple(chain))


def cms_of(envelope: Mapping[str, Any]) -> bytes | None:
    """The DER of a manifest's CMS signature, ``None`` when it carries none."""
    blob = envelope.get(CMS_FIELD)
    if blob is None:
        return None
    if not isinstance(blob, str) or len(blob) > (MAX_CMS_BYTES * 4) // 3 + 4:
        raise CmsSignatureError("'cms' must be a base64 string of a bounded size")
    try:
        return base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise CmsSignatureError("'cms' is not valid base64") from None


def verify_manifest(envelope: Any, policy: CmsPolicy, now: datetime | None = None) -> CmsSigner | None:
    """Check a manifest envelope's CMS signature under ``policy`` (fail closed).

    Returns the verified signer, or ``None`` when the manifest carries no CMS
    signature and the policy does not require one.
    """
    try:
        signed, _ = split_envelope(envelope)
    except DocumentError as exc:
        raise CmsSignatureError(exc.message) from None
    der = cms_of(envelope)
    if der is None:
        if policy.require:
            raise CmsSignatureError("manifest carries no CMS signature, and one is required")
        return None
    return verify_detached(der, canonical_bytes(signed), policy.anchors, now, policy.max_chain_depth)
