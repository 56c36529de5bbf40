"""The static document tree: the public documents as files, for nginx to serve (issue 17, item 5).

With ``static_tree = "/path"`` (and anonymous reads on) deltacas keeps, under that directory,
the exact bytes ``cas serve`` answers for the documents a client fetches anonymously, in
the layout of the mirror export (``cas.mirror.relpath_for``, docs/nginx-mirror.conf):

    v1/root.json, v1/roots/N.json                 the trust root and its rotations
    v1/products/P/channels/C                      every channel document
    v1/products/P/releases/V/manifest             manifests of released and deprecated releases
    v1/products/P/releases/V/delta/from-B         final delta documents (complete, target
    v1/products/P/releases/V/delta/from-          released or deprecated) to every release a
                                                  channel offers (its release, its rollout's,
                                                  its pins'), from nothing and from each base
                                                  a publish plans (``deltas.bases_for``)

Each document has one Cache-Control in ``cas serve`` whatever its bytes (channels: max-age,
root.json: no-cache, the rest: immutable), so nginx can add it per location
(docs/nginx-production.conf).  Documents that would answer ``no-cache`` from ``cas serve``
(testing manifests, deltas still building) are left out: nginx falls back to ``cas serve``.

``export`` writes the whole tree idempotently: a file is rewritten only when its bytes
changed, atomically (``deltagen.output.atomic_output``: a temp file renamed over it, so a
reader or a crash never sees half a document), and whatever no longer exists (a deleted
release, a channel that moved off a release, everything when anonymous reads are off) is
removed.  A file's mtime is derived from its BLAKE3, so nginx's ETag (mtime-size) is the same
for the same bytes on every host and after every rewrite.  ``cas serve`` calls it after
every change it makes and whenever the metadata moves (``cas/http/statictree.py``);
``cas static export`` calls it by hand.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from casformat.canonical import canonical_bytes, parse_json
from casformat.errors import DocumentError
from deltagen.digests import blake3_bytes
from deltagen.output import atomic_output

from . import deltas
from .errors import CasError
from .metadata import Release
from .mirror import relpath_for
from .repo import Repo

log = logging.getLogger("cas.static")

FINAL = ("released", "deprecated")
TMP_MAX_AGE_SECONDS = 60.0   # a temp file older than this is a crashed writer's: removed
# mtimes between 2001 and 2137, from the digest: nginx's ETag is mtime-size, so two documents of
# one size share an ETag (and a poller with the old one gets a wrong 304) only when 32 bits of
# their BLAKE3 agree, 1 in 4.3e9 per change
_EPOCH, _SPAN = 1_000_000_000, 1 << 32


class StaticTreeError(CasError):
    status, code = 400, "static_tree"


@dataclass
class ExportStats:
    written: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: list[str] = field(default_factory=list)   # documents whose names cannot be files

    def to_dict(self) -> dict[str, Any]:
        return {"written": self.written, "unchanged": self.unchanged, "removed": self.removed,
                "skipped": self.skipped}


def mtime_of(data: bytes) -> int:
    """The mtime a document's file gets: a function of its bytes (so of its nginx ETag)."""
    return _EPOCH + int(blake3_bytes(data)[:12], 16) % _SPAN


def _offered(document: bytes) -> set[str]:
    """The versions a channel document offers: its release, its rollout's, its pins'."""
    signed = parse_json(document)["signed"]
    versions = {signed["release"]}
    if signed.get("rollout"):
        versions.add(signed["rollout"]["release"])
    versions.update(pin["release"] for pin in signed.get("pins") or ())
    return versions


def documents(repo: Repo, skipped: list[str]) -> Iterator[tuple[str, bytes]]:
    """(path in the tree, bytes) of every document the tree holds; a name that is not a safe
    file name (``casformat.paths.check_name``) is left out and listed in ``skipped``."""
    meta = repo.meta
    for product in meta.list_products():
        name = product["name"]
        releases = {r.version: r for r in meta.list_releases(name)}
        for release in releases.values():
            if release.status in FINAL:
                yield from _one(skipped, ("manifest", name, release.version), release.manifest)
        channels = meta.list_channels(name)
        offered: set[str] = set()
        for ch in channels:
            try:
                offered |= _offered(ch.document)
            except (DocumentError, KeyError, TypeError):
                skipped.append(f"channel {name}/{ch.channel}: unreadable document")
        for version in sorted(offered):
            target = releases.get(version)
            if target is None or target.status not in FINAL:
                continue
            bases: list[Release | None] = [None, *deltas.bases_for(repo, target)]
            for base in bases:
                try:
                    document = deltas.delta_document(repo, target, base)
                except (CasError, DocumentError, KeyError, TypeError, ValueError) as exc:
                    # left to cas serve (which answers this error itself); the channels still go out
                    skipped.append(f"delta {name} {base.version if base else ''} -> {version}: {exc}")
                    continue
                if document["complete"]:
                    yield from _one(skipped, ("delta", name, version, base.version if base else None),
                                    canonical_bytes(document))
        for ch in channels:   # after the manifests and deltas they point to
            yield from _one(skipped, ("channel", name, ch.channel), ch.document)
    latest = meta.get_root()
    if latest is not None:
        for n in range(1, latest[0] + 1):
            row = meta.get_root(n)
            if row is not None:
                yield from _one(skipped, ("roots", "", str(n)), row[1])
        yield "v1/root.json", latest[1]


def _one(skipped: list[str], key: tuple[Any, ...], data: bytes) -> Iterator[tuple[str, bytes]]:
    try:
        rel = relpath_for(*key)
    except DocumentError as exc:   # a hostile or broken name in the metadata: never a path
        skipped.append(f"{key[0]}: {exc.message}")
        return
    yield rel, data


def _inside(tree: Path, rel: str) -> Path:
    path = tree / rel
    if os.path.commonpath([tree, os.path.realpath(path.parent)]) != str(tree):
        raise StaticTreeError(f"{rel} would be written outside the static tree {tree}")
    return path


def _write(path: Path, data: bytes) -> bool:
    """Write ``data`` at ``path`` unless it holds those bytes already; True when written."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    for attempt in range(2):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_output(path, 0o644) as fh:
                fh.write(data)
                fh.flush()
                stamp = mtime_of(data)
                os.utime(fh.fileno(), (stamp, stamp))   # before the rename: one ETag from the start
            return True
        except FileNotFoundError:   # another exporter removed the (then empty) directory
            if attempt:
                raise
    return True


def _sweep(tree: Path, wanted: set[str], stats: ExportStats) -> None:
    """Remove files of the tree that are not ``wanted`` (and crashed writers' temp files), then
    empty directories."""
    top = tree / "v1"
    if not top.is_dir():
        return
    now = time.time()
    for dirpath, _dirs, filenames in os.walk(top, topdown=False):
        here = Path(dirpath)
        for name in filenames:
            path = here / name
            rel = str(path.relative_to(tree))
            if rel in wanted:
                continue
            if name.startswith(".") and name.endswith(".tmp"):
                try:
                    if now - path.lstat().st_ctime < TMP_MAX_AGE_SECONDS:
                        continue   # another exporter's write in progress
                except FileNotFoundError:
                    continue
            path.unlink(missing_ok=True)
            stats.removed += 1
        if here != top:
            try:
                here.rmdir()
            except OSError:
                pass   # not empty


def tree_of(repo: Repo) -> Path:
    if not repo.config.static_tree:
        raise StaticTreeError("no static tree is configured (static_tree in config.toml)",
                              code="no_static_tree")
    return Path(repo.config.static_tree)


def export(repo: Repo, tree: Path | None = None) -> ExportStats:
    """Bring the static tree up to date (see the module's docstring); idempotent."""
    tree = Path(os.path.realpath(tree if tree is not None else tree_of(repo)))
    tree.mkdir(parents=True, exist_ok=True)
    stats = ExportStats()
    wanted: set[str] = set()
    if repo.config.anonymous_read:   # else every document needs a token: none may stay public
        for rel, data in documents(repo, stats.skipped):
            wanted.add(rel)
            if _write(_inside(tree, rel), data):
                stats.written += 1
            else:
                stats.unchanged += 1
    _sweep(tree, wanted, stats)
    for problem in stats.skipped:
        log.warning("static tree: left out %s", problem)
    return stats


def render_nginx_site(template: str, *, listen: str, upstreams: list[str], store: Path,
                      tree: Path | None = None, channel_max_age: int = 60) -> str:
    """docs/nginx-production.conf (or -tokens.conf) with its example addresses and paths
    replaced: what the tests and benchmarks/serve.py start, so the documented file is the
    tested one.  A replacement that finds nothing (the template changed) is an error."""
    def swap(text: str, old: str, new: str) -> str:
        if old not in text:
            raise ValueError(f"nginx template: {old!r} not found")
        return text.replace(old, new)

    servers = "".join(f"    server {u} max_fails=2 fail_timeout=5s;\n" for u in upstreams)
    out = swap(template, "    server 127.0.0.1:8081 max_fails=2 fail_timeout=5s;\n"
                         "    server 127.0.0.1:8082 max_fails=2 fail_timeout=5s;\n", servers)
    out = swap(out, "listen 8080;", f"listen {listen};")
    out = swap(out, "root /var/lib/deltacas;", f"root {store};")
    if tree is not None:
        out = swap(out, "root /var/lib/deltacas-static;", f"root {tree};")
        out = swap(out, '"public, max-age=60"', f'"public, max-age={channel_max_age}"')
    return out
