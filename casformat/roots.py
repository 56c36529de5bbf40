"""Root documents: which keys are trusted for which role, and their rotation.

The root lists Ed25519 keys and, per role (root, release, channel), the keyids
trusted and a threshold.  A new root (version n+1) must be signed by a
threshold of the previous root's root keys and of its own.  Pure functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import DocumentError, RollbackAttack, SignatureError
from .signatures import Role, key_id, public_from_hex, split_envelope, verify

ROLES = ("root", "release", "channel")


@dataclass(frozen=True)
class Root:
    version: int
    roles: Mapping[str, Role]
    signed: Mapping[str, Any]

    def role(self, name: str) -> Role:
        return self.roles[name]


def parse_root(signed: Mapping[str, Any]) -> Root:
    """Read the ``signed`` part of a root document (structure only)."""
    if signed.get("type") != "root" or signed.get("schema") != 1:
        raise DocumentError("not a schema-1 root document")
    version = signed.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DocumentError("root version must be a positive integer")
    keys_doc = signed.get("keys")
    roles_doc = signed.get("roles")
    if not isinstance(keys_doc, dict) or not isinstance(roles_doc, dict):
        raise DocumentError("root needs 'keys' and 'roles' objects")
    keys: dict[str, Ed25519PublicKey] = {}
    for kid, entry in keys_doc.items():
        if not isinstance(entry, dict) or entry.get("keytype") != "ed25519":
            raise DocumentError(f"key {kid[:16]} is not an ed25519 key")
        public = public_from_hex(entry.get("public", ""))
        if key_id(public) != kid:
            raise DocumentError(f"keyid {kid[:16]} does not match its public key")
        keys[kid] = public
    roles: dict[str, Role] = {}
    for name in ROLES:
        spec = roles_doc.get(name)
        if not isinstance(spec, dict):
            raise DocumentError(f"root lacks the role {name!r}")
        keyids, threshold = spec.get("keyids"), spec.get("threshold")
        if not isinstance(keyids, list) or not isinstance(threshold, int) or threshold < 1:
            raise DocumentError(f"role {name!r} needs keyids and a threshold >= 1")
        missing = [k for k in keyids if k not in keys]
        if missing:
            raise DocumentError(f"role {name!r} names unknown keys")
        if threshold > len(keyids):
            raise DocumentError(f"role {name!r} threshold {threshold} exceeds its {len(keyids)} keys")
        roles[name] = Role({k: keys[k] for k in keyids}, threshold)
    return Root(version, roles, signed)


def verify_first_root(envelope: Any) -> Root:
    """A root given out of band: self-consistent and signed by its own root keys."""
    signed, _ = split_envelope(envelope)
    root = parse_root(signed)
    verify(envelope, root.role("root"))
    return root


def verify_next_root(trusted: Root, envelope: Any) -> Root:
    """Accept root version n+1 only if both the old and the new root keys signed it."""
    signed, _ = split_envelope(envelope)
    candidate = parse_root(signed)
    if candidate.version != trusted.version + 1:
        raise RollbackAttack(
            f"root version {candidate.version} does not follow trusted version {trusted.version}")
    try:
        verify(envelope, trusted.role("root"))
    except SignatureError as exc:
        raise SignatureError(f"root v{candidate.version} is not signed by the v{trusted.version} root keys: {exc}") from exc
    verify(envelope, candidate.role("root"))
    return candidate


def rotated_roles(old: Root, new: Root) -> frozenset[str]:
    """Roles whose trusted keys or threshold differ between ``old`` and ``new``.

    TUF's client workflow (spec 5.3.11): when a new root rotates a role's keys, the
    client forgets what it trusted of that role (its sequence or version), so an
    operator recovers from a stolen key that signed a far-future sequence (a
    fast-forward attack) by rotating that role's keys through a new root.
    """
    changed = set()
    for name in ROLES:
        a, b = old.role(name), new.role(name)
        if set(a.keys) != set(b.keys) or a.threshold != b.threshold:
            changed.add(name)
    return frozenset(changed)
