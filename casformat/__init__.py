"""The wire format of deltacas, imported by both the server (``cas``) and the client (``client``).

Pure functions and small dataclasses over bytes and JSON values; no disk, no network:

- ``canonical``: canonical JSON bytes, document digests, bounded parsing of untrusted JSON
- ``times``: the one timestamp format
- ``signatures``: Ed25519 envelopes, roles, thresholds, expiry (verification only)
- ``paths``: manifest paths, names, symlink targets, collisions
- ``manifests``: manifest and channel document structure
- ``roots``: root documents and their rotation
- ``trust``: what a client (or a mirror) accepts given what it already trusts
- ``manifest_delta``: the manifest delta, producer and rebuilder side by side
- ``cms``: verification of detached CMS (X.509) signatures
- ``errors``: ``DocumentError`` and its subclasses, each with a stable code

Dependency rule (checked by ``tests/test_import_rules.py`` and the import-linter
contracts in ``pyproject.toml``): ``deltagen <- casformat <- {cas, client}``;
``casformat`` imports neither ``cas`` nor ``client``, and ``client`` never imports ``cas``.
Signing and key generation belong to the server (``cas/signing.py``, ``cas/cms_signing.py``).
"""
