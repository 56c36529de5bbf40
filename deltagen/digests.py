"""The one place that hashes bytes and files.

Everything in deltacas (server, client, deltagen) addresses content by BLAKE3-256
in lowercase hex; manifests also carry SHA-256.  Files are always hashed in
bounded chunks, never read whole.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import BinaryIO

import blake3 as _blake3

CHUNK = 1 << 20  # 1 MiB reads
_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_digest(value: object) -> bool:
    """True for a lowercase 64-hex-character digest."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def blake3_bytes(data: bytes) -> str:
    return _blake3.blake3(data).hexdigest()


def blake3_raw(data: bytes | memoryview) -> bytes:
    """The 32-byte BLAKE3 of ``data`` (chunk indexes store digests raw)."""
    return _blake3.blake3(data).digest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class FileDigest:
    blake3: str
    sha256: str
    size: int


class StreamHasher:
    """BLAKE3 (and optionally SHA-256) of a stream fed in pieces."""

    def __init__(self, sha256: bool = False) -> None:
        self._b3 = _blake3.blake3()
        self._sha = hashlib.sha256() if sha256 else None
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._b3.update(data)
        if self._sha is not None:
            self._sha.update(data)
        self.size += len(data)

    @property
    def blake3(self) -> str:
        return self._b3.hexdigest()

    @property
    def sha256(self) -> str:
        if self._sha is None:
            raise ValueError("this hasher was made without sha256")
        return self._sha.hexdigest()


def hash_stream(fh: BinaryIO, sha256: bool = False) -> StreamHasher:
    h = StreamHasher(sha256=sha256)
    while True:
        chunk = fh.read(CHUNK)
        if not chunk:
            return h
        h.update(chunk)


def blake3_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as fh:
        return hash_stream(fh).blake3


def file_digest(path: str | os.PathLike[str]) -> FileDigest:
    with open(path, "rb") as fh:
        h = hash_stream(fh, sha256=True)
    return FileDigest(h.blake3, h.sha256, h.size)
