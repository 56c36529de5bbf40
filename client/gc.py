"""Garbage collection of an install root: versions no link needs, and spent downloads.

``current``, ``previous`` and ``factory`` (the rollback points) are always kept, and so is
the target of an unfinished update (its journal; for an unfinished rollback also the
version it started from, which it returns to if its target fails); downloads and staging
are emptied only when no update is in progress (a resumed update reuses them).

``cas-client gc`` keeps only those.  After every successful update the client collects by
itself with ``keep_recent`` = the ``keep_versions`` setting (3): the most recently
installed versions (by ``state.json`` ``installed`` time) are kept as well.  After a
failed health check and the rollback, the release that failed is removed (``drop``) unless
a link still points at it.
"""
from __future__ import annotations

from .install import remove_tree
from .installroot import LINKS, InstallRoot
from .journal import read_journal


def clean_downloads(layout: InstallRoot) -> None:
    """Empty ``.cas/downloads/`` and ``.cas/staging/``: files, and the scratch directories a
    killed patch apply can leave beside its patch (deltagen's gzip-inner makes one)."""
    for path in layout.downloads.iterdir():
        if path.is_dir() and not path.is_symlink():
            remove_tree(path)
        else:
            path.unlink(missing_ok=True)
    remove_tree(layout.staging)
    layout.staging.mkdir(exist_ok=True)


def collect(layout: InstallRoot, keep_recent: int = 0, drop: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """Remove unneeded versions (and, with no update in progress, downloads); call under the lock.

    ``keep_recent`` > 0: also keep that many most recently installed versions, and remove
    only versions older than those or named in ``drop``; 0: keep only what the links and
    the journal need."""
    keep = {v for v in (layout.link(n) for n in LINKS) if v is not None}
    installed_at: dict[str, float] = {v: float(t) for v, t in (layout.state().get("installed") or {}).items()
                                      if isinstance(t, int | float)}
    if keep_recent > 0:
        recent = [v for v in sorted(layout.installed(), key=lambda v: installed_at.get(v, 0.0), reverse=True)
                  if v not in drop]
        keep.update(recent[:keep_recent])
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
    if removed and installed_at:
        layout.save_state(installed={v: t for v, t in installed_at.items() if v not in removed})
    if journal is None:
        clean_downloads(layout)
    return {"removed": removed, "kept": sorted(keep)}
