"""Server keys on disk and the root document they make.

``STORE/keys/{root,release,channel}.pem`` (0600, directory 0700).  The root key
signs root documents, the release key (kept by CI; offline in production)
signs release manifests, the channel key (online) signs channel documents.
``init_keys`` writes the first root to the metadata and to ``STORE/root.json``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from casformat.canonical import canonical_bytes, parse_json
from casformat.roots import Root, verify_first_root, verify_next_root
from casformat.signatures import key_id
from casformat.times import format_time, utc_now
from deltagen.output import write_atomic

from .errors import Conflict, NotFound
from .metadata import Metadata
from .signing import generate_key, private_from_pem, private_to_pem, public_entry, sign

ROOT_TTL = timedelta(days=365)
KEY_ROLES = ("root", "release", "channel")


def key_path(store: Path, role: str) -> Path:
    return Path(store) / "keys" / f"{role}.pem"


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_to_pem(key))
        fh.flush()
        os.fsync(fh.fileno())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        return private_from_pem(Path(path).read_bytes())
    except FileNotFoundError:
        raise NotFound(f"key file {path} not found (run `cas keys init`)", code="no_key") from None


def root_signed(version: int, keys: dict[str, list[Ed25519PrivateKey]],
                thresholds: dict[str, int] | None = None) -> dict[str, Any]:
    thresholds = thresholds or {}
    all_keys: dict[str, Any] = {}
    roles: dict[str, Any] = {}
    for role, members in keys.items():
        ids = []
        for k in members:
            kid = key_id(k.public_key())
            all_keys[kid] = public_entry(k)
            ids.append(kid)
        roles[role] = {"keyids": sorted(ids), "threshold": thresholds.get(role, 1)}
    return {"schema": 1, "type": "root", "version": version,
            "expires": format_time(utc_now() + ROOT_TTL), "keys": all_keys, "roles": roles}


@dataclass(frozen=True)
class ServerKeys:
    channel: Ed25519PrivateKey | None
    release: Ed25519PrivateKey | None


def init_keys(store: Path, meta: Metadata) -> dict[str, Any]:
    """Make root, release and channel keys and the signed root v1."""
    if meta.get_root() is not None or any(key_path(store, r).exists() for r in KEY_ROLES):
        raise Conflict(f"keys already exist in {store}/keys", code="keys_exist")
    made = {role: generate_key() for role in KEY_ROLES}
    for role, key in made.items():
        write_private_key(key_path(store, role), key)
    envelope = sign(root_signed(1, {r: [k] for r, k in made.items()}), [made["root"]])
    verify_first_root(envelope)
    document = canonical_bytes(envelope)
    meta.put_root(1, document)
    publish_root_file(store, document)
    return envelope


def publish_root_file(store: Path, document: bytes) -> None:
    write_atomic(Path(store) / "root.json", document)


def trusted_root(meta: Metadata) -> Root | None:
    """Walk the stored chain from version 1 so a corrupted row is noticed."""
    first = meta.get_root(1)
    if first is None:
        return None
    root = verify_first_root(parse_json(first[1]))
    version = 2
    while (row := meta.get_root(version)) is not None:
        root = verify_next_root(root, parse_json(row[1]))
        version += 1
    return root


def load_server_keys(store: Path) -> ServerKeys:
    def optional(role: str) -> Ed25519PrivateKey | None:
        path = key_path(store, role)
        return load_private_key(path) if path.exists() else None
    return ServerKeys(channel=optional("channel"), release=optional("release"))


def channel_signing_keys(store: Path) -> list[Ed25519PrivateKey]:
    """Every channel key on disk (enough for a channel role with a threshold)."""
    return load_role_keys(store, "channel")


def role_key_files(store: Path, role: str) -> list[Path]:
    keys_dir = Path(store) / "keys"
    return sorted([p for p in keys_dir.glob(f"{role}.pem")] + [p for p in keys_dir.glob(f"{role}-*.pem")])


def load_role_keys(store: Path, role: str) -> list[Ed25519PrivateKey]:
    return [load_private_key(p) for p in role_key_files(store, role)]


def rotate_keys(store: Path, meta: Metadata, role: str, count: int = 1, threshold: int = 1,
                keep_old: bool = False) -> dict[str, Any]:
    """Make new keys for ``role`` and the next root, signed by the old and new root keys.

    The old private keys move to ``keys/retired/``.  With ``keep_old`` the role trusts
    the old and the new keys (a transition); without it the old keys are revoked:
    clients refuse anything signed only by them.
    """
    if role not in KEY_ROLES:
        raise Conflict(f"role must be one of {KEY_ROLES}", code="bad_role")
    if count < 1 or not 1 <= threshold <= count + (0 if not keep_old else 1000):
        raise Conflict("need count >= 1 and 1 <= threshold <= number of keys", code="bad_threshold")
    current = trusted_root(meta)
    if current is None:
        raise NotFound("no root yet (run `cas keys init`)", code="no_root")
    old_root_keys = load_role_keys(store, "root")
    old_files = role_key_files(store, role)
    new_keys = [generate_key() for _ in range(count)]
    signed = json_copy(current.signed)
    version = current.version + 1
    old_ids = list(signed["roles"][role]["keyids"])
    new_ids = [key_id(k.public_key()) for k in new_keys]
    ids = sorted(set(old_ids + new_ids)) if keep_old else sorted(new_ids)
    if threshold > len(ids):
        raise Conflict(f"threshold {threshold} exceeds the {len(ids)} keys of {role}", code="bad_threshold")
    signed["roles"][role] = {"keyids": ids, "threshold": threshold}
    for k in new_keys:
        signed["keys"][key_id(k.public_key())] = public_entry(k)
    used = {kid for spec in signed["roles"].values() for kid in spec["keyids"]}
    signed["keys"] = {kid: entry for kid, entry in signed["keys"].items() if kid in used}
    signed["version"] = version
    signed["expires"] = format_time(utc_now() + ROOT_TTL)
    signers = old_root_keys + (new_keys if role == "root" else [])
    envelope = sign(signed, signers)
    verify_next_root(current, envelope)  # never publish a root clients would refuse
    # Retire the old private keys, then write the new ones.
    retired = Path(store) / "keys" / "retired"
    retired.mkdir(parents=True, exist_ok=True)
    if not keep_old:
        for path in old_files:
            os.replace(path, retired / f"{path.stem}.v{current.version}.pem")
    else:
        for i, path in enumerate(old_files):
            os.replace(path, Path(store) / "keys" / f"{role}-old{current.version}-{i}.pem")
    for i, key in enumerate(new_keys):
        write_private_key(key_path(store, role) if i == 0 else Path(store) / "keys" / f"{role}-{i}.pem", key)
    document = canonical_bytes(envelope)
    meta.put_root(version, document)
    publish_root_file(store, document)
    return envelope


def json_copy(value: Any) -> Any:
    return parse_json(canonical_bytes(value))
