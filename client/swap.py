"""Making a staged version live: publish its tree under ``versions/{v}``, then swap the links.

Publishing caches the verified manifest, renames the staged tree into place and fsyncs
``versions/``; swapping points ``previous`` at the old current and ``current`` at the
new version, each link replaced atomically (``InstallRoot.set_link``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from casformat.canonical import canonical_bytes
from deltagen.output import fsync_dir, write_atomic

from .faults import crash_point
from .install import remove_tree
from .installroot import InstallRoot
from .stage import StagedTree


def cache_manifest(layout: InstallRoot, version: str, envelope: Mapping[str, Any]) -> None:
    """Keep the verified manifest of ``version`` in ``.cas/manifests/``."""
    write_atomic(layout.manifest_path(version), canonical_bytes(envelope))


def publish(layout: InstallRoot, staged: StagedTree, envelope: Mapping[str, Any]) -> None:
    """Move the staged tree to ``versions/{v}`` (replacing an unfinished or damaged copy)."""
    final = layout.version_dir(staged.version)
    if final.exists():
        remove_tree(final)  # an earlier, unfinished or damaged copy
    cache_manifest(layout, staged.version, envelope)
    crash_point("after_manifest_cached")
    os.rename(staged.path, final)
    fsync_dir(layout.versions)
    crash_point("after_stage_rename")


def swap_current(layout: InstallRoot, version: str, previous: str | None) -> None:
    """``previous`` -> the version that was current, ``current`` -> ``version``."""
    if previous and previous != version:
        layout.set_link("previous", previous)
        crash_point("after_previous_link")
    layout.set_link("current", version)
    crash_point("after_current_swap")
