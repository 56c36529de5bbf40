"""Manifest deltas on the client side: rebuild the target manifest (pure)."""
from __future__ import annotations

from typing import Any, Mapping


def rebuild_target(base_manifest: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """The target's ``signed`` part from a base manifest and a delta (for checking)."""
    files = {e["path"]: e for e in base_manifest["files"]}
    for path in delta["removed"]:
        files.pop(path, None)
    for entry in delta["upserted"]:
        files[entry["path"]] = entry
    return {"schema": 1, "product": delta["product"], "version": delta["to"]["version"],
            "created": delta["to"]["created"], "files": [files[p] for p in sorted(files)]}
