"""Garbage collection of an install root: versions no link needs, and spent downloads.

``current``, ``previous`` and ``factory`` are always kept, and so is the target of an
unfinished update (its journal; for an unfinished rollback also the version it started
from, which it returns to if its target fails); downloads and staging are emptied only when no update
is in progress (a resumed update reuses them).
"""
from __future__ import annotations

from .install import remove_tree
from .installroot import LINKS, InstallRoot
from .journal import read_journal


def clean_downloads(layout: InstallRoot) -> None:
    """Empty ``.cas/downloads/`` and ``.cas/staging/``."""
    for path in layout.downloads.iterdir():
        path.unlink(missing_ok=True)
    remove_tree(layout.staging)
    layout.staging.mkdir(exist_ok=True)


def collect(layout: InstallRoot) -> dict[str, list[str]]:
    """Remove unneeded versions (and, with no update in progress, downloads); call under the lock."""
    keep = {v for v in (layout.link(n) for n in LINKS) if v is not None}
    journal = read_journal(layout)
    if journal is not None and journal.target:
        keep.add(journal.target)
    if journal is not None and journal.kind == "rollback" and journal.from_version:
        keep.add(journal.from_version)
    removed = []
    for version in layout.installed():
        if version not in keep:
            layout.remove_version(version)
            removed.append(version)
    if journal is None:
        clean_downloads(layout)
    return {"removed": removed, "kept": sorted(keep)}
