"""Enterprise signing: detached CMS signatures over manifests, checked fail-closed against X.509 anchors.

A test PKI is made with ``cryptography``: a root CA, an intermediate, a code-signing leaf, and the
bad cases (expired leaf, leaf without the code-signing EKU, leaf of another CA, leaf with CA:TRUE,
leaf without digitalSignature, an intermediate that is not a CA, an expired intermediate).
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import PUBLISH, start_server, store_snapshot
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cas import cms_signing
from cas.signing import generate_key, sign
from casformat import cms, trust
from casformat.canonical import canonical_bytes, document_digest
from casformat.errors import DocumentError
from casformat.manifest_delta import manifest_delta
from casformat.roots import Root
from casformat.signatures import Role, key_id, split_envelope
from client.config import ClientConfig

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Corp"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: Any, issuer: tuple[str, Any] | None = None, *, ca: bool = False,
          eku: tuple[x509.ObjectIdentifier, ...] | None = (ExtendedKeyUsageOID.CODE_SIGNING,),
          start: dt.datetime = NOW - DAY, end: dt.datetime = NOW + 30 * DAY,
          digital_signature: bool = True, unknown_critical: bool = False) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer_name))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
    if ca:
        usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
    else:
        usage = x509.KeyUsage(digital_signature, False, False, False, False, False, False, False, False)
    builder = builder.add_extension(usage, True)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), False)
    if unknown_critical:
        builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"),
                                                                   b"\x05\x00"), True)
    return builder.sign(issuer_key, hashes.SHA256())


def _ec() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class Pki:
    root: x509.Certificate
    inter: x509.Certificate
    signers: dict[str, tuple[x509.Certificate, Any, list[x509.Certificate]]]


@pytest.fixture(scope="module")
def pki() -> Pki:
    root_key, inter_key, other_key = _ec(), _ec(), _ec()
    root = _cert("Example Root CA", root_key, ca=True)
    inter = _cert("Example Code Signing CA", inter_key, ("Example Root CA", root_key), ca=True, eku=None)
    other_root = _cert("Other Root CA", other_key, ca=True)
    under = ("Example Code Signing CA", inter_key)
    leaf_key, rsa_key = _ec(), rsa.generate_private_key(public_exponent=65537, key_size=2048)
    not_ca_key, old_inter_key = _ec(), _ec()
    not_ca = _cert("Not A CA", not_ca_key, ("Example Root CA", root_key), eku=None)
    old_inter = _cert("Old CA", old_inter_key, ("Example Root CA", root_key), ca=True, eku=None,
                      start=NOW - 90 * DAY, end=NOW - DAY)
    signers = {
        "good": (_cert("Release Signing", leaf_key, under), leaf_key, [inter]),
        "good_rsa": (_cert("Release Signing RSA", rsa_key, under), rsa_key, [inter]),
        "expired": (_cert("Expired Signing", leaf_key, under, start=NOW - 60 * DAY, end=NOW - DAY),
                    leaf_key, [inter]),
        "not_yet_valid": (_cert("Future Signing", leaf_key, under, start=NOW + DAY, end=NOW + 9 * DAY),
                          leaf_key, [inter]),
        "no_codesign_eku": (_cert("Client Auth Only", leaf_key, under, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)),
                            leaf_key, [inter]),
        "no_eku": (_cert("No EKU", leaf_key, under, eku=None), leaf_key, [inter]),
        "other_ca": (_cert("Foreign Signing", leaf_key, ("Other Root CA", other_key)), leaf_key, [other_root]),
        "leaf_is_ca": (_cert("CA Leaf", leaf_key, under, ca=True), leaf_key, [inter]),
        "no_digital_signature": (_cert("No DS", leaf_key, under, digital_signature=False), leaf_key, [inter]),
        "issuer_not_ca": (_cert("Under Non CA", leaf_key, ("Not A CA", not_ca_key)), leaf_key, [not_ca]),
        "issuer_expired": (_cert("Under Old CA", leaf_key, ("Old CA", old_inter_key)), leaf_key, [old_inter]),
        "unknown_critical": (_cert("Odd Signing", leaf_key, under, unknown_critical=True), leaf_key, [inter]),
        "missing_intermediate": (_cert("Release Signing", leaf_key, under), leaf_key, []),
    }
    return Pki(root, inter, signers)


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _manifest(version: str = "1.0.0") -> dict[str, Any]:
    signed = {"schema": 1, "product": "app", "version": version, "created": "2026-11-24T20:00:00Z",
              "files": [{"path": "bin/app", "type": "file", "mode": 493, "size": 3,
                         "blake3": "0" * 64, "sha256": "1" * 64}]}
    return sign(signed, [generate_key()])


def _signed_by(pki: Pki, which: str, envelope: dict[str, Any] | None = None) -> dict[str, Any]:
    cert, key, chain = pki.signers[which]
    return cms_signing.sign_manifest(envelope or _manifest(), cert, key, chain)


def _policy(pki: Pki, require: bool = True) -> cms.CmsPolicy:
    return cms.CmsPolicy((pki.root,), require=require)


# --------------------------------------------------------------------------- unit level

@pytest.mark.parametrize("which", ["good", "good_rsa"])
def test_valid_chain_accepted(pki: Pki, which: str) -> None:
    envelope = _signed_by(pki, which)
    signer = cms.verify_manifest(envelope, _policy(pki))
    assert signer is not None and signer.certificate == pki.signers[which][0]
    assert [c.subject for c in signer.chain] == [pki.signers[which][0].subject, pki.inter.subject, pki.root.subject]
    # The CMS signature is over canonical_bytes(signed): the DER carries no content (detached).
    assert canonical_bytes(envelope["signed"]) not in base64.b64decode(envelope["cms"])


@pytest.mark.parametrize("which, message", [
    ("expired", "expired at"),
    ("not_yet_valid", "not valid before"),
    ("no_codesign_eku", "code-signing extended key usage"),
    ("no_eku", "missing required extension"),
    ("other_ca", "not trusted"),
    ("leaf_is_ca", "is a CA"),
    ("no_digital_signature", "digitalSignature"),
    ("issuer_not_ca", "basicConstraints.cA must be asserted"),
    ("issuer_expired", "not valid at validation time"),
    ("unknown_critical", "unaccounted-for critical extensions"),
    ("missing_intermediate", "not trusted"),
])
def test_bad_certificates_refused(pki: Pki, which: str, message: str) -> None:
    with pytest.raises(cms.CmsSignatureError, match=message) as info:
        cms.verify_manifest(_signed_by(pki, which), _policy(pki))
    assert info.value.code == "bad_cms_signature"


def test_tampered_manifest_refused(pki: Pki) -> None:
    envelope = _signed_by(pki, "good")
    envelope["signed"]["files"][0]["size"] = 4
    with pytest.raises(cms.CmsSignatureError, match="message digest does not match"):
        cms.verify_manifest(envelope, _policy(pki))


def test_tampered_signature_and_garbage_refused(pki: Pki) -> None:
    envelope = _signed_by(pki, "good")
    der = bytearray(base64.b64decode(envelope["cms"]))
    der[-10] ^= 0x01  # inside the signature value, at the end of the SignerInfo
    bad = {**envelope, "cms": base64.b64encode(bytes(der)).decode()}
    with pytest.raises(cms.CmsSignatureError):
        cms.verify_manifest(bad, _policy(pki))
    for junk in ("not base64!", base64.b64encode(b"\x30\x03\x02\x01\x01").decode(), ""):
        with pytest.raises(cms.CmsSignatureError):
            cms.verify_manifest({**envelope, "cms": junk}, _policy(pki))
    # Another manifest's valid signature does not transfer.
    other = _signed_by(pki, "good", _manifest("2.0.0"))
    with pytest.raises(cms.CmsSignatureError, match="message digest"):
        cms.verify_manifest({**envelope, "cms": other["cms"]}, _policy(pki))


def test_missing_signature_required_or_optional(pki: Pki) -> None:
    plain = _manifest()
    with pytest.raises(cms.CmsSignatureError, match="no CMS signature"):
        cms.verify_manifest(plain, _policy(pki, require=True))
    assert cms.verify_manifest(plain, _policy(pki, require=False)) is None
    # Present but bad is refused even where it is optional.
    with pytest.raises(cms.CmsSignatureError):
        cms.verify_manifest(_signed_by(pki, "expired"), _policy(pki, require=False))


def test_wrong_anchor_and_no_anchor(pki: Pki) -> None:
    envelope = _signed_by(pki, "good")
    with pytest.raises(cms.CmsSignatureError, match="not trusted"):
        cms.verify_manifest(envelope, cms.CmsPolicy((pki.signers["other_ca"][2][0],)))
    with pytest.raises(cms.CmsSignatureError, match="no CMS trust anchors"):
        cms.verify_manifest(envelope, cms.CmsPolicy(()))
    with pytest.raises(cms.CmsSignatureError, match="no CMS trust anchors"):
        cms.policy_from_settings(None, require=True)
    assert cms.policy_from_settings(None, require=False) is None


def test_verification_time_is_respected(pki: Pki) -> None:
    envelope = _signed_by(pki, "good")
    assert cms.verify_manifest(envelope, _policy(pki), now=NOW + 10 * DAY) is not None
    with pytest.raises(cms.CmsSignatureError, match="expired at"):
        cms.verify_manifest(envelope, _policy(pki), now=NOW + 31 * DAY)


def test_envelope_allows_only_a_cms_string(pki: Pki) -> None:
    envelope = _signed_by(pki, "good")
    signed, _ = split_envelope(envelope)
    assert signed == envelope["signed"]
    with pytest.raises(DocumentError, match="exactly the fields"):
        split_envelope({**envelope, "x509": "..."})
    with pytest.raises(DocumentError, match="'cms' must be"):
        split_envelope({**envelope, "cms": 5})


def test_openssl_made_signatures_interoperate(pki: Pki, tmp_path: Path) -> None:
    """A detached signature from `openssl cms -sign` (with and without attributes, and PSS) verifies."""
    assert shutil.which("openssl"), "no openssl command (.ci/run installs it)"
    cert, key, chain = pki.signers["good_rsa"]
    envelope = _manifest()
    (tmp_path / "content").write_bytes(canonical_bytes(envelope["signed"]))
    (tmp_path / "cert.pem").write_text(_pem(cert))
    (tmp_path / "chain.pem").write_text(_pem(*chain))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    for extra in ([], ["-noattr"], ["-keyopt", "rsa_padding_mode:pss"]):
        subprocess.run(["openssl", "cms", "-sign", "-binary", "-in", str(tmp_path / "content"),
                        "-signer", str(tmp_path / "cert.pem"), "-inkey", str(tmp_path / "key.pem"),
                        "-certfile", str(tmp_path / "chain.pem"), "-outform", "DER",
                        "-out", str(tmp_path / "sig.der"), *extra], check=True, capture_output=True)
        signed = {**envelope, "cms": base64.b64encode((tmp_path / "sig.der").read_bytes()).decode()}
        assert cms.verify_manifest(signed, _policy(pki)) is not None, extra


def test_rsa_pss_from_cryptography(pki: Pki) -> None:
    cert, key, chain = pki.signers["good_rsa"]
    envelope = _manifest()
    der = cms_signing.sign_detached(canonical_bytes(envelope["signed"]), cert, key, chain,
                            rsa_padding=padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH))
    assert cms.verify_manifest({**envelope, "cms": base64.b64encode(der).decode()}, _policy(pki)) is not None


def test_client_accept_manifest_and_config(pki: Pki) -> None:
    release = generate_key()
    root = Root(1, {"release": Role({key_id(release.public_key()): release.public_key()}, 1)}, {})
    signed = _manifest()["signed"]
    plain = sign(signed, [release])
    good = _signed_by(pki, "good", plain)
    digest = document_digest(signed)
    config = ClientConfig.from_dict({"servers": ["http://x"], "product": "app", "channel": "stable",
                                     "client_id": "c", "cms_trust_anchors": _pem(pki.root), "require_cms": True})
    policy = config.cms_policy()
    assert trust.accept_manifest(root, good, digest, policy)["version"] == "1.0.0"
    assert trust.accept_manifest(root, plain, digest)["version"] == "1.0.0"  # not configured: unchanged
    for bad in (plain, _signed_by(pki, "no_codesign_eku", plain), _signed_by(pki, "other_ca", plain)):
        with pytest.raises(cms.CmsSignatureError):
            trust.accept_manifest(root, bad, digest, policy)
    assert ClientConfig.from_dict(config.to_dict()).cms_trust_anchors == _pem(pki.root)


def test_manifest_delta_carries_cms(pki: Pki) -> None:
    base, target = _manifest("1.0.0"), _signed_by(pki, "good", _manifest("1.1.0"))
    delta = manifest_delta("app", "1.0.0", base["signed"], target, document_digest(target["signed"]), {}, True,
                           document_digest(base["signed"]))
    assert delta["to"]["cms"] == target["cms"]
    assert "cms" not in manifest_delta("app", "1.0.0", base["signed"], base, "d", {}, True, "d")["to"]


def test_server_hook_configurations(pki: Pki, tmp_path: Path) -> None:
    from cas.cms_signing import check_manifest
    from cas.config import Config
    from cas.errors import Invalid
    good, plain = _signed_by(pki, "good"), _manifest()
    (tmp_path / "roots.pem").write_text(_pem(pki.root))
    off = Config(store=tmp_path)
    assert check_manifest(off, plain) is None and check_manifest(off, good) is None  # not configured
    optional = Config(store=tmp_path, cms_trust_anchors="roots.pem")
    inline = Config(store=tmp_path, cms_trust_anchors=_pem(pki.root), require_cms=True)
    assert check_manifest(optional, plain) is None
    assert check_manifest(optional, good) is not None and check_manifest(inline, good) is not None
    refusals = [(off, {**plain, "cms": "%%%"}, "not valid base64"),
                (optional, _signed_by(pki, "leaf_is_ca"), "is a CA"),
                (inline, plain, "no CMS signature"),
                (Config(store=tmp_path, require_cms=True), good, "no CMS trust anchors"),
                (Config(store=tmp_path, cms_trust_anchors="missing.pem"), good, "cannot read CMS trust anchors")]
    for config, envelope, why in refusals:
        with pytest.raises(Invalid, match=why) as info:
            check_manifest(config, envelope)
        assert info.value.status == 422 and info.value.code == "bad_cms_signature"


# --------------------------------------------------------------------------- end to end

def _write_signer(pki: Pki, which: str, directory: Path) -> list[str]:
    cert, key, chain = pki.signers[which]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_text(_pem(cert))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    args = ["--cms-cert", str(directory / "cert.pem"), "--cms-key", str(directory / "key.pem")]
    if chain:
        (directory / "chain.pem").write_text(_pem(*chain))
        args += ["--cms-chain", str(directory / "chain.pem")]
    return args


def test_server_requires_cms_end_to_end(pki: Pki, tmp_path: Path, release_trees: list[Path]) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "cms-roots.pem").write_text(_pem(pki.root))
    server = start_server(store, config='cms_trust_anchors = "cms-roots.pem"\nrequire_cms = true\n')
    try:
        key = str(store / "keys" / "release.pem")
        publish = ("publish", str(release_trees[0]), "--product", "app", "--version", "1.0.0", "--key", key)

        # No CMS signature: refused (422 bad_cms_signature), no release recorded.
        result = server.cas(*publish, check=False)
        assert result.returncode != 0 and "no CMS signature" in result.stderr, result.stderr
        with server.client() as http:
            assert http.get("/v1/products/app/releases/1.0.0/manifest").status_code == 404
        before = store_snapshot(store)  # the objects are uploaded by now; nothing else may change

        # Bad CMS signatures (expired leaf, leaf of another CA): refused, the store unchanged.
        for which, why in (("expired", "expired at"), ("other_ca", "not trusted")):
            result = server.cas(*publish, *_write_signer(pki, which, tmp_path / which), check=False)
            assert result.returncode != 0 and "CMS signature refused" in result.stderr and why in result.stderr
            assert store_snapshot(store) == before

        # A tampered manifest (good signature, changed content) PUT directly: 422, unchanged.
        manifest_key = (store / "keys" / "release.pem").read_bytes()
        from cas.signing import private_from_pem
        from cas.trees import manifest_signed, scan_tree
        signed = manifest_signed("app", "1.0.0", scan_tree(release_trees[0]))
        envelope = _signed_by(pki, "good", sign(signed, [private_from_pem(manifest_key)]))
        tampered_signed = json.loads(json.dumps(signed))
        tampered_signed["created"] = "2020-01-01T00:00:00Z"
        tampered = {**sign(tampered_signed, [private_from_pem(manifest_key)]), "cms": envelope["cms"]}
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {PUBLISH}"}) as http:
            for body, why in ((tampered, "message digest"), (sign(signed, [private_from_pem(manifest_key)]),
                                                              "no CMS signature")):
                answer = http.put("/v1/products/app/releases/1.0.0", content=canonical_bytes(body))
                assert answer.status_code == 422 and answer.json()["error"]["code"] == "bad_cms_signature"
                assert why in answer.json()["error"]["message"]
        assert store_snapshot(store) == before

        # A good CMS signature: accepted, stored and served with the manifest.
        server.cas(*publish, *_write_signer(pki, "good", tmp_path / "good"))
        with server.client() as http:
            served = http.get("/v1/products/app/releases/1.0.0/manifest").json()
        assert set(served) == {"signed", "signatures", "cms"}
        signer = cms.verify_manifest(served, _policy(pki))
        assert signer is not None and signer.subject.startswith("CN=Release Signing,")
    finally:
        server.stop()
