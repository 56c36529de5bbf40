"""Garbage collection and retention: mark, tombstone, sweep.

An object is deleted only after it was found unreferenced on one run (a
'marked' tombstone is written) and is still unreferenced, with its tombstone
older than the grace period, on a later run.  Anything that starts relying on
an object in between revives it: a missing-objects query that finds it
present, an upload that writes it again, a publish that names it (in the
transaction that records the release).  The sweep of one object -- check that
nothing references it, delete it, leave a 'deleted' tombstone -- is one
transaction holding the tombstone's row, so a publish recording a release that
names the object either comes first (the object is kept) or sees 'deleted' and
is refused as missing.  A publish racing ``cas gc`` never ends up referring to
a deleted object.  Neither does a delta build: it pins each object before
writing it (``build_pins``, a reference until the job records the object or the
job's lease runs out), and its recording is refused, and the build retried, if
an object was deleted anyway.

Retention (``retain``): per product, releases beyond the last N released ones
are deleted unless a channel or a rollout offers them; drafts and testing
releases are never touched by retention.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial

from .errors import Conflict, Invalid
from .metadata import StaleWrite
from .release_lookup import get_release
from .repo import Repo

DELETABLE = ("draft", "deprecated")


@dataclass
class GcReport:
    dry_run: bool
    grace_seconds: float
    releases_deleted: list[str] = field(default_factory=list)
    recipes_pruned: int = 0
    reports_pruned: int = 0
    objects: int = 0
    referenced: int = 0
    marked: int = 0
    deleted: list[str] = field(default_factory=list)
    deleted_bytes: int = 0
    revived: int = 0
    would_mark: list[str] = field(default_factory=list)
    would_delete: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def offered_versions(repo: Repo, product: str) -> set[str]:
    """Versions a channel, an active rollout or a client pin points at."""
    versions = {ch.release for ch in repo.meta.list_channels(product)}
    versions.update(r["release"] for r in repo.meta.active_rollouts(product))
    versions.update(repo.meta.pinned_versions(product))
    return versions


def delete_release(repo: Repo, product: str, version: str, actor: str, reason: str = "",
                   allowed: tuple[str, ...] = DELETABLE) -> None:
    release = get_release(repo, product, version)
    if release.status not in allowed:
        raise Conflict(f"only {' or '.join(allowed)} releases can be deleted; {product} {version} is "
                       f"{release.status} (deprecate it first)", code="illegal_transition")
    if version in offered_versions(repo, product):
        raise Conflict(f"a channel or rollout offers {product} {version}; move it first", code="release_in_use")
    try:
        repo.meta.delete_release(product, version, allowed, actor, reason or "deleted")
    except StaleWrite as exc:
        raise Conflict(str(exc), code="concurrent_change") from None


def retention_victims(repo: Repo, keep: int) -> list[tuple[str, str]]:
    victims = []
    for product in (p["name"] for p in repo.meta.list_products()):
        shipped = [r for r in repo.meta.list_releases(product) if r.status in ("released", "deprecated")]
        offered = offered_versions(repo, product)
        for release in shipped[:-keep] if keep else shipped:
            if release.version not in offered:
                victims.append((product, release.version))
    return victims


def collect(repo: Repo, grace_seconds: float = 6 * 3600, dry_run: bool = False, retain: int | None = None,
            actor: str = "gc") -> GcReport:
    if grace_seconds < 0:
        raise Invalid("grace must not be negative", code="bad_request")
    if retain is not None and retain < 1:
        raise Invalid("retain must keep at least one release per product", code="bad_request")
    started = time.time()
    report = GcReport(dry_run, grace_seconds)
    if retain is not None:
        for product, version in retention_victims(repo, retain):
            report.releases_deleted.append(f"{product} {version}")
            if not dry_run:
                delete_release(repo, product, version, actor, f"retention: keep the last {retain} released",
                               allowed=("released", "deprecated"))
    if not dry_run:
        report.recipes_pruned = repo.meta.prune_recipes()
        if repo.config.report_retention_days:
            report.reports_pruned = repo.meta.prune_reports(started - repo.config.report_retention_days * 86400)
    live = repo.meta.live_objects()
    tombs = repo.meta.tombstones()
    report.referenced = len(live)
    now = time.time()
    # Sweep: tombstones older than the grace period whose object is still unreferenced.
    revive: list[str] = []
    for digest, (state, marked) in tombs.items():
        if state != "marked":
            continue
        if digest in live:
            revive.append(digest)
        elif marked < now - grace_seconds:
            if dry_run:
                report.would_delete.append(digest)
                continue
            size = repo.objects.size(digest) or 0
            if repo.meta.sweep_one(digest, now - grace_seconds, partial(repo.objects.delete, digest)):
                report.deleted.append(digest)
                report.deleted_bytes += size
    if not dry_run:
        if revive:
            repo.meta.revive(revive)
            report.revived = len(revive)
        repo.meta.forget_deleted(now - max(grace_seconds, 24 * 3600))
        repo.meta.forget_expired_pins(now)
    # Mark: unreferenced objects without a tombstone get one now.
    unmarked = []
    for digest in repo.objects.iter_digests():
        report.objects += 1
        if digest not in live and digest not in tombs:
            unmarked.append(digest)
    if dry_run:
        report.would_mark = unmarked
    else:
        report.marked = repo.meta.mark_tombstones(unmarked, time.time())  # the grace starts now
        summary = {k: v for k, v in report.to_dict().items() if k not in ("deleted", "would_mark", "would_delete")}
        summary["deleted"] = len(report.deleted)
        repo.meta.record_gc_run(started, time.time(), dry_run, json.dumps(summary, sort_keys=True))
    return report
