"""The dashboard's four JSON views, computed from the metadata and object store.

* overview: products, releases (status, lifecycle history, size, files) with
  dedup figures per release -- ``logical_bytes`` (what a full download is),
  ``unique_bytes`` (distinct contents within the release) and ``new_bytes``
  (contents no release published before it had: what it added to the store);
* deltas: per release, the bases a delta was planned from, the bytes a client
  holding each base downloads by recipe kind, the saving versus a full
  download, and the build jobs (queued, running, done, failed with the error);
* channels: current release, rollout candidate, stage and percent, reports per
  stage and per time bucket (for the chart), the actions the rollout's state
  allows;
* health: objects and bytes stored, the last ``cas fsck`` (``STORE/fsck-last.json``),
  garbage collection status, delta and webhook queues, and request and error
  rates from the server's Prometheus counters.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from casformat.times import format_epoch, parse_time

from .. import rollouts
from ..clock import Clock
from ..deltas import chunk_bytes, delta_document, pairs_of
from ..metadata import STATUSES, Release
from ..releases import TRANSITIONS
from ..repo import Repo
from .figures import Figures, store_stats
from .fsck import last_fsck
from .rates import RequestRates

TIMELINE_BUCKETS = 24
_BUCKET_SIZES = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400)
ROLLOUT_END_EVENTS = ("finished", "aborted", "flipped_back")
JOB_STATES = ("queued", "running", "done", "failed", "not_queued")


def _epoch(text: str) -> float:
    """An event time of the metadata (wire format) as seconds since the epoch."""
    return parse_time(text).timestamp()


# --------------------------------------------------------------------------- overview

def overview(repo: Repo, figures: Figures) -> dict[str, Any]:
    """Products, their releases (dedup figures, history, channels, allowed moves) and store statistics."""
    meta = repo.meta
    products = meta.list_products()
    by_product = {p["name"]: meta.list_releases(p["name"]) for p in products}
    dedup = figures.dedup(repo, [r for rels in by_product.values() for r in rels])
    out = []
    for p in products:
        name = p["name"]
        chans = meta.list_channels(name)
        active = meta.active_rollouts(name)
        releases = []
        for r in by_product[name]:
            releases.append({
                **r.summary(), **dedup[(name, r.version)],
                "history": meta.release_history(name, r.version),
                "channels": [c.channel for c in chans if c.release == r.version],
                "rollouts": [a["channel"] for a in active if a["release"] == r.version],
                "moves": sorted((t for f, t in TRANSITIONS if f == r.status), key=STATUSES.index)})
        out.append({
            "name": name, "created": p["created"], "releases": releases,
            "logical_bytes": sum(r["logical_bytes"] for r in releases),
            "new_bytes": sum(r["new_bytes"] for r in releases),
            "channels": [{"channel": c.channel, "release": c.release, "sequence": c.sequence,
                          "min_status": c.min_status, "updated": format_epoch(c.updated),
                          "candidate": next((a["release"] for a in active if a["channel"] == c.channel), None)}
                         for c in chans]})
    return {"generated": format_epoch(time.time()), "statuses": list(STATUSES), "products": out,
            "stats": store_stats(repo, figures)}


# --------------------------------------------------------------------------- deltas

def _pair_figures(repo: Repo, figures: Figures, base: Release, target: Release,
                  failed_jobs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """One planned (base, target) pair: job states, bytes by recipe kind, saving.

    The figures come from the manifest delta a client gets (``deltas.delta_document``,
    which has no side effect for a pair already planned), so they always agree with it."""
    base_env, target_env = figures.manifest(base), figures.manifest(target)
    pairs = pairs_of(base_env["signed"]["files"], target_env["signed"]["files"], repo.config.delta_tiny_bytes)
    if repo.config.delta_bundles:
        pairs.append((base.manifest_digest, target.manifest_digest))  # the pair's bundle job
    states = repo.meta.job_states(pairs)
    jobs = Counter(states.get(p, "not_queued") for p in pairs)
    paths = {f["blake3"]: f["path"] for f in target_env["signed"]["files"] if f["type"] == "file"}
    failed = [{"base": b, "target": t, "path": paths.get(t, "(bundle)" if t == target.manifest_digest else None),
               "kind": "patch" if b and t in paths else "bundle" if b else "compress",
               "error": failed_jobs.get((b, t), {}).get("error"),
               "attempts": failed_jobs.get((b, t), {}).get("attempts")}
              for (b, t) in pairs if states.get((b, t)) == "failed"]

    def compute() -> dict[str, Any]:
        doc = delta_document(repo, target, base)
        have = set(figures.blobs(base))
        chunked = chunk_bytes(repo, figures.manifest(base)["signed"]["files"],
                              figures.manifest(target)["signed"]["files"])
        index_sizes = {f["blake3"]: f["chunks"]["size"] for f in figures.manifest(target)["signed"]["files"]
                       if "chunks" in f}
        by_kind: dict[str, int] = {}
        files_by_kind: dict[str, int] = {}
        counted: set[str] = set()
        for digest, offers in doc["recipes"].items():
            if digest in have or not offers:
                continue
            first = offers[0]
            kind = first["kind"]
            if digest in chunked:   # a chunked file: its index and the chunks the base lacks, or its pack
                packs = [o["size"] for o in offers if o["kind"] == "chunks"]
                kind, first = "chunks", {**first, "size": min([chunked[digest]]
                                                              + [index_sizes[digest] + p for p in packs])}
            files_by_kind[kind] = files_by_kind.get(kind, 0) + 1
            if kind == "bundle":   # one object for several files: fetched (and counted) once
                if first["object"] in counted:
                    continue
                counted.add(first["object"])
            by_kind[kind] = by_kind.get(kind, 0) + first["size"]
        full, download = doc["bytes"]["full"], doc["bytes"]["recipes"]
        return {"complete": doc["complete"], "bytes": {**doc["bytes"], "by_kind": by_kind},
                "files_by_kind": files_by_kind, "savings_bytes": full - download,
                "savings_percent": round(100 * (full - download) / full, 1) if full else 0.0,
                "removed": len(doc["removed"]), "upserted": len(doc["upserted"])}

    complete = all(states.get(p) in ("done", "failed") for p in pairs)
    key = (base.manifest_digest, target.manifest_digest)
    data = figures.deltas.get(key, compute) if complete else compute()
    return {"from": base.version, "from_status": base.status,
            "jobs": {s: jobs.get(s, 0) for s in JOB_STATES},
            **data, "failed": failed}


def deltas(repo: Repo, figures: Figures, product: str | None = None) -> dict[str, Any]:
    """Per release and planned base: download bytes by recipe kind, savings, builds; and the build queue."""
    meta = repo.meta
    summary = meta.jobs_summary(limit=10_000)
    failed_jobs = {(j["base"], j["target"]): j for j in summary["failed"]}
    names = [product] if product is not None else [p["name"] for p in meta.list_products()]
    out = []
    for name in names:
        rels = meta.list_releases(name)
        entries = []
        for target in rels:
            bases = [b for b in rels if b.version != target.version and meta.planned(name, b.version, target.version)]
            figures_ = [_pair_figures(repo, figures, b, target, failed_jobs) for b in bases]
            totals: Counter[str] = Counter()
            for f in figures_:
                totals.update(f["jobs"])
            entries.append({"version": target.version, "status": target.status,
                            "full_bytes": sum(figures.blobs(target).values()),
                            "bases": figures_, "jobs": {s: totals.get(s, 0) for s in JOB_STATES}})
        out.append({"name": name, "releases": entries})

    def job(j: dict[str, Any]) -> dict[str, Any]:
        return {"base": j["base"], "target": j["target"], "state": j["state"], "attempts": j["attempts"],
                "error": j["error"], "owner": j["owner"],
                **{k: format_epoch(j[k]) if j[k] else None for k in ("queued", "started", "finished")}}
    return {"generated": format_epoch(time.time()), "products": out,
            "queue": {"counts": summary["counts"], "running": [job(j) for j in summary["running"][:50]],
                      "failed": [job(j) for j in summary["failed"][:50]],
                      "queued": [job(j) for j in summary["queued"][:50]]}}


# --------------------------------------------------------------------------- channels and rollouts

def allowed_actions(r: rollouts.Rollout, channel_release: str) -> list[str]:
    """The operator steps the rollout's state allows (the page's buttons)."""
    actions: list[str] = []
    if r.state == "running":
        actions += ["promote", "halt", "abort"]
    elif r.state == "halted":
        actions += ["resume", "abort"]
    if r.strategy == "all-at-once" and r.state in ("running", "halted", "finished") and channel_release == r.release:
        actions.append("flip-back")
    return actions


def _bucket_seconds(span: float) -> int:
    for size in _BUCKET_SIZES:
        if span / size <= TIMELINE_BUCKETS:
            return size
    return int(-(-span // (TIMELINE_BUCKETS * 86400))) * 86400


def rollout_reports(repo: Repo, r: rollouts.Rollout, events: list[dict[str, Any]], now: float
                    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Reports per stage and per time bucket of a rollout (its target release only).

    A stage runs from its ``started``/``stage`` event to the next stage or the end of
    the rollout (or now).  Event times are kept to the second, so a report within the
    second a stage changed may count in the next stage."""
    meta = repo.meta
    ends = [_epoch(e["at"]) for e in events if e["event"] in ROLLOUT_END_EVENTS]
    end = max(ends[-1], r.started) if ends else max(now, r.started)
    starts = [(_epoch(e["at"]), e["percent"]) for e in events if e["event"] in ("started", "stage")]
    if not starts:
        starts = [(r.started, r.percent)]
    stages = []
    for i, (t0, percent) in enumerate(starts):
        last = i + 1 == len(starts)
        t1 = end if last else starts[i + 1][0]
        counts = meta.report_outcomes(r.product, r.release, t0, t1 if last else t1 - 1e-6)
        stages.append({"stage": i, "percent": percent, "started": format_epoch(t0),
                       "ended": format_epoch(t1) if not last or ends else None,
                       **{k: counts.get(k, 0) for k in ("success", "failed", "rolled_back")},
                       "reports": sum(counts.values())})
    start = starts[0][0]
    size = _bucket_seconds(max(end - start, 1.0))
    first = start - start % size
    buckets = []
    t = first
    while t <= end:
        counts = meta.report_outcomes(r.product, r.release, t, t + size - 1e-6)
        percent = next((p for s, p in reversed(starts) if s < t + size), starts[0][1])
        buckets.append({"start": format_epoch(t), "offset": int(t - first), "percent": percent,
                        **{k: counts.get(k, 0) for k in ("success", "failed", "rolled_back")}})
        t += size
    marks = [{"at": e["at"], "offset": int(_epoch(e["at"]) - first), "event": e["event"],
              "percent": e["percent"]} for e in events]
    timeline = {"start": format_epoch(first), "end": format_epoch(end), "bucket_seconds": size,
                "span_seconds": len(buckets) * size,
                "buckets": buckets, "marks": marks}
    return stages, timeline


def channels_view(repo: Repo, clock: Clock, product: str | None = None) -> dict[str, Any]:
    """Channels, their releases and rollout candidates; each rollout with reports per stage and over time."""
    meta = repo.meta
    names = [product] if product is not None else [p["name"] for p in meta.list_products()]
    now = clock.now()
    out = []
    for name in names:
        entries = []
        for ch in meta.list_channels(name):
            row = meta.latest_rollout(name, ch.channel)
            rollout = None
            candidate = None
            if row is not None:
                r = rollouts.Rollout.from_row(row)
                rollout = rollouts.describe(repo, clock, r)
                rollout["stage_reports"], rollout["timeline"] = rollout_reports(repo, r, rollout["events"], now)
                rollout["actions"] = allowed_actions(r, ch.release)
                if r.state in rollouts.ACTIVE:
                    candidate = r.release
            entries.append({"channel": ch.channel, "release": ch.release, "candidate": candidate,
                            "sequence": ch.sequence, "min_status": ch.min_status,
                            "updated": format_epoch(ch.updated), "expires": format_epoch(ch.expires), "rollout": rollout})
        out.append({"name": name, "channels": entries,
                    "releases": [{"version": r.version, "status": r.status} for r in meta.list_releases(name)]})
    return {"generated": format_epoch(time.time()), "now": format_epoch(now), "products": out}


# --------------------------------------------------------------------------- health

def _count_entries(path: Path) -> int:
    try:
        return sum(1 for _ in path.iterdir())
    except FileNotFoundError:
        return 0


def gc_status(repo: Repo) -> dict[str, Any]:
    """The last ``cas gc`` run (its result parsed) and the tombstones by state."""
    last = repo.meta.last_gc_run()
    if last is not None and isinstance(last.get("result"), str):
        try:
            last = {**last, "result": json.loads(last["result"])}
        except ValueError:
            pass
    tombs = repo.meta.tombstones()
    states = Counter(state for state, _ in tombs.values())
    message = ("never run: `cas gc` (or POST /v1/admin/gc) marks unreferenced objects and deletes them "
               "on a later run" if last is None else
               f"last run finished {last['finished']}{' (dry run)' if last.get('dry_run') else ''}")
    return {"implemented": True, "last_run": last, "tombstones": len(tombs), "tombstone_states": dict(states),
            "message": message}


def health(repo: Repo, figures: Figures, rates: RequestRates | None = None, metrics: Any = None
           ) -> dict[str, Any]:
    """Store, last fsck, GC, delta and webhook queues, and request rates (when the server's are given)."""
    store = Path(repo.config.store)
    jobs = repo.meta.jobs_summary(limit=0)
    hooks = repo.meta.webhook_summary(limit=0)
    return {"generated": format_epoch(time.time()),
            # No file system path: every token may read this view (D14).
            "store": {**store_stats(repo, figures),
                      "quarantined": _count_entries(store / "quarantine"),
                      "temp_files": _count_entries(store / "tmp"),
                      "uploads_in_progress": len(repo.meta.all_uploads())},
            "fsck": last_fsck(store), "gc": gc_status(repo),
            "deltas": jobs["counts"], "webhooks": hooks["counts"],
            "requests": rates.snapshot(metrics) if rates is not None and metrics is not None else None}
