"""The records the metadata hands out: releases, channel documents, release statuses."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from casformat.times import format_epoch

#: a release's lifecycle, in order (a channel takes releases at or above its ``min_status``)
STATUSES = ("draft", "testing", "released", "deprecated")
STATUS_RANK = {s: i for i, s in enumerate(STATUSES)}


@dataclass(frozen=True)
class Release:
    """One published release of a product: its signed manifest and lifecycle state."""

    product: str
    version: str
    manifest_digest: str
    manifest: bytes
    status: str
    file_count: int
    logical_bytes: int
    created: float
    status_changed: float
    critical: bool = False

    def summary(self) -> dict[str, Any]:
        """The release as the API lists it (no manifest bytes)."""
        return {"version": self.version, "status": self.status, "manifest": self.manifest_digest,
                "files": self.file_count, "bytes": self.logical_bytes, "critical": self.critical,
                "created": format_epoch(self.created), "status_changed": format_epoch(self.status_changed)}


@dataclass(frozen=True)
class Channel:
    """The current signed document of one channel of a product."""

    product: str
    channel: str
    release: str
    sequence: int
    min_status: str
    document: bytes
    etag: str
    expires: float
    updated: float
