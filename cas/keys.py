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

from client.documents import (canonical_bytes, format_time, generate_key, key_id, parse_json,
                              private_from_pem, private_to_pem, public_entry, sign, utc_now)
from client.roots import Root, verify_first_root, verify_next_root

from .errors import Conflict, NotFound
from .metadata import SqliteMetadata

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


def init_keys(store: Path, meta: SqliteMetadata) -> dict[str, Any]:
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
    target = Path(store) / "root.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_bytes(document)
    os.replace(tmp, target)


def trusted_root(meta: SqliteMetadata) -> Root | None:
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
