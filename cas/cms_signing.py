"""Enterprise (X.509 / CMS) signing of release manifests: the publisher's and the server's side.

* ``cas publish --cms-cert CERT.pem --cms-key KEY.pem [--cms-chain CHAIN.pem]`` adds a
  detached CMS signature (``"cms"``) to the manifest envelope: ``add_cms``.
* ``releases.publish`` calls ``check_manifest`` before anything is recorded: when the
  server is configured with ``cms_trust_anchors`` a CMS signature present on a
  manifest must verify (signature, chain, code-signing EKU, validity); with
  ``require_cms = true`` a manifest without one is refused too.  Refusals are 422
  ``bad_cms_signature``.

The verification itself lives in ``client/cms.py`` so that the server and the
client apply the very same checks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .config import Config
from .errors import CasError, Invalid

if TYPE_CHECKING:
    from client.cms import CmsPolicy, CmsSigner

# client.cms (pyasn1-modules) is imported only when CMS signing or checking is used, so a
# server that does not use it keeps working without that dependency.

CODE = "bad_cms_signature"


def add_cms(envelope: Mapping[str, Any], cert_file: str, key_file: str, chain_file: str | None = None
            ) -> dict[str, Any]:
    """The envelope with a detached CMS signature by the certificate's key.

    A passphrase-protected key reads its passphrase from ``CAS_CMS_KEY_PASSWORD``.
    """
    try:
        from client.cms import CmsSignatureError, load_signing_material, sign_manifest
    except ImportError as exc:
        raise CasError(f"CMS signing is not installed ({exc})", code="cms_signing_failed") from None
    password = os.environ.get("CAS_CMS_KEY_PASSWORD")
    try:
        cert, key, chain = load_signing_material(cert_file, key_file, chain_file,
                                                 password.encode() if password else None)
        return sign_manifest(envelope, cert, key, chain)
    except CmsSignatureError as exc:
        raise CasError(f"cannot make the CMS signature: {exc.message}", code="cms_signing_failed") from None
    except (OSError, ValueError, TypeError) as exc:
        raise CasError(f"cannot make the CMS signature: {exc}", code="cms_signing_failed") from None


def server_policy(config: Config) -> "CmsPolicy | None":
    """The server's CMS policy; relative anchor paths are taken from the store directory."""
    from client.cms import policy_from_settings
    return policy_from_settings(config.cms_trust_anchors, config.require_cms, Path(config.store))


def check_manifest(config: Config, envelope: Mapping[str, Any]) -> "CmsSigner | None":
    """Fail closed: raise ``Invalid`` (422 ``bad_cms_signature``) unless the manifest passes."""
    if "cms" not in envelope and not config.cms_trust_anchors and not config.require_cms:
        return None  # CMS signing not in use here
    try:
        from client.cms import CmsSignatureError, cms_of, verify_manifest
    except ImportError as exc:
        raise Invalid(f"CMS signature refused: CMS support is not installed ({exc})", code=CODE) from None
    try:
        policy = server_policy(config)
        if policy is None:
            cms_of(envelope)  # not configured: keep only well-formed base64 of a bounded size
            return None
        return verify_manifest(envelope, policy)
    except CmsSignatureError as exc:
        raise Invalid(f"CMS signature refused: {exc.message}", code=CODE) from None
    except Exception as exc:  # fail closed on anything unexpected  # noqa: BLE001
        raise Invalid(f"CMS signature refused: {type(exc).__name__}: {exc}"[:300], code=CODE) from None
