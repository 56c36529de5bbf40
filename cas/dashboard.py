"""The operator dashboard's figures, computed from the metadata and object store.

Every view of the dashboard page (``cas/http/static/dashboard.*``) is one JSON
document built here and served under ``/v1/admin/dashboard/...``
(``cas/http/dashboard.py``); ``cas stats`` and ``cas dashboard`` print the same
documents.  Nothing here writes to the metadata: only read methods of the
metadata interface are used, so another backend serves the same figures.

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

import calendar
import json
import threading
import time
from collections import Counter, OrderedDict, deque
from pathlib import Path
from typing import Any, Callable

from casformat.canonical import parse_json
from deltagen.output import write_atomic

from . import rollouts
from .clock import Clock
from .deltaplan import plan_pairs
from .deltas import delta_document
from .metadata import STATUSES, Release
from .releases import TRANSITIONS
from .repo import Repo

FSCK_FILE = "fsck-last.json"
GC_STATUS = {"implemented": False, "last_run": None,
             "message": "garbage collection is not implemented yet: there is no `cas gc` command and no "
                        "GC endpoint; unreferenced objects (old patches, abandoned uploads' objects) stay "
                        "in the store"}
TIMELINE_BUCKETS = 24
_BUCKET_SIZES = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400)
ROLLOUT_END_EVENTS = ("finished", "aborted", "flipped_back")


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def parse_iso(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


# --------------------------------------------------------------------------- caches

class _Lru:
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


class Figures:
    """Per-process caches of figures that only change when releases or objects do.

    Releases are immutable, so dedup figures are cached under the list of every
    release (name and manifest digest) and recomputed when it changes; a
    complete delta's figures are cached under its (base, target) manifests;
    the store walk (objects and bytes) is cached for ``usage_seconds``."""

    def __init__(self, usage_seconds: float = 5.0) -> None:
        self.usage_seconds = usage_seconds
        self._manifests = _Lru(64)
        self._blobs = _Lru(4096)
        self._deltas = _Lru(4096)
        self._dedup: tuple[Any, dict[tuple[str, str], dict[str, int]]] | None = None
        self._usage: tuple[float, tuple[int, int]] | None = None
        self._lock = threading.Lock()

    def manifest(self, release: Release) -> dict[str, Any]:
        return self._manifests.get(release.manifest_digest, lambda: parse_json(release.manifest))

    def blobs(self, release: Release) -> dict[str, int]:
        """Distinct contents of a release: blake3 -> size."""
        def make() -> dict[str, int]:
            return {f["blake3"]: f["size"] for f in self.manifest(release)["signed"]["files"]
                    if f["type"] == "file"}
        return self._blobs.get(release.manifest_digest, make)

    def usage(self, repo: Repo) -> tuple[int, int]:
        now = time.monotonic()
        with self._lock:
            if self._usage is not None and now - self._usage[0] < self.usage_seconds:
                return self._usage[1]
        value = repo.objects.usage()
        with self._lock:
            self._usage = (now, value)
        return value

    def dedup(self, repo: Repo, every: list[Release]) -> dict[tuple[str, str], dict[str, int]]:
        """Dedup figures of every release, in publication order across products."""
        order = sorted(every, key=lambda r: (r.created, r.product, r.version))
        key = tuple((r.product, r.version, r.manifest_digest) for r in order)
        with self._lock:
            if self._dedup is not None and self._dedup[0] == key:
                return self._dedup[1]
        seen: set[str] = set()
        out: dict[tuple[str, str], dict[str, int]] = {}
        for r in order:
            blobs = self.blobs(r)
            new = {d: s for d, s in blobs.items() if d not in seen}
            seen.update(blobs)
            unique, added = sum(blobs.values()), sum(new.values())
            out[(r.product, r.version)] = {
                "logical_bytes": r.logical_bytes, "unique_bytes": unique, "new_bytes": added,
                "objects": len(blobs), "new_objects": len(new),
                "deduplicated_bytes": r.logical_bytes - added,
                "dedup_within_bytes": r.logical_bytes - unique}
        with self._lock:
            self._dedup = (key, out)
        return out


# --------------------------------------------------------------------------- store statistics

def store_stats(repo: Repo, figures: Figures | None = None) -> dict[str, Any]:
    """Objects, stored, logical and unique bytes, dedup ratio (``cas stats``)."""
    count, stored = figures.usage(repo) if figures else repo.objects.usage()
    logical = repo.meta.logical_bytes()
    referenced = sum(size for _, size in repo.meta.referenced_objects())
    return {"objects": count, "stored_bytes": stored, "logical_bytes": logical,
            "unique_referenced_bytes": referenced,
            "dedup_ratio": round(logical / referenced, 3) if referenced else None,
            "releases": sum(p["releases"] for p in repo.meta.list_products())}


# --------------------------------------------------------------------------- overview

def overview(repo: Repo, figures: Figures) -> dict[str, Any]:
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
                          "min_status": c.min_status, "updated": iso(c.updated),
                          "candidate": next((a["release"] for a in active if a["channel"] == c.channel), None)}
                         for c in chans]})
    return {"generated": iso(time.time()), "statuses": list(STATUSES), "products": out,
            "stats": store_stats(repo, figures)}


# --------------------------------------------------------------------------- deltas

def _pair_figures(repo: Repo, figures: Figures, base: Release, target: Release,
                  failed_jobs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """One planned (base, target) pair: job states, bytes by recipe kind, saving.

    The figures come from the manifest delta a client gets (``deltas.delta_document``,
    which has no side effect for a pair already planned), so they always agree with it."""
    base_env, target_env = figures.manifest(base), figures.manifest(target)
    pairs = plan_pairs(base_env["signed"]["files"], target_env["signed"]["files"], repo.config.delta_tiny_bytes)
    if getattr(repo.config, "delta_bundles", False):
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
        by_kind: dict[str, int] = {}
        files_by_kind: dict[str, int] = {}
        counted: set[str] = set()
        for digest, offers in doc["recipes"].items():
            if digest in have or not offers:
                continue
            first = offers[0]
            kind = first["kind"]
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
    data = figures._deltas.get(key, compute) if complete else compute()
    return {"from": base.version, "from_status": base.status,
            "jobs": {s: jobs.get(s, 0) for s in ("queued", "running", "done", "failed", "not_queued")},
            **data, "failed": failed}


def deltas(repo: Repo, figures: Figures, product: str | None = None) -> dict[str, Any]:
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
            totals = Counter()
            for f in figures_:
                totals.update(f["jobs"])
            entries.append({"version": target.version, "status": target.status,
                            "full_bytes": sum(figures.blobs(target).values()),
                            "bases": figures_, "jobs": {s: totals.get(s, 0) for s in
                                                        ("queued", "running", "done", "failed", "not_queued")}})
        out.append({"name": name, "releases": entries})

    def job(j: dict[str, Any]) -> dict[str, Any]:
        return {"base": j["base"], "target": j["target"], "state": j["state"], "attempts": j["attempts"],
                "error": j["error"], "owner": j["owner"],
                **{k: iso(j[k]) if j[k] else None for k in ("queued", "started", "finished")}}
    return {"generated": iso(time.time()), "products": out,
            "queue": {"counts": summary["counts"], "running": [job(j) for j in summary["running"][:50]],
                      "failed": [job(j) for j in summary["failed"][:50]],
                      "queued": [job(j) for j in summary["queued"][:50]]}}


# --------------------------------------------------------------------------- channels and rollouts

def allowed_actions(r: rollouts.Rollout, channel_release: str) -> list[str]:
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
    ends = [parse_iso(e["at"]) for e in events if e["event"] in ROLLOUT_END_EVENTS]
    end = max(ends[-1], r.started) if ends else max(now, r.started)
    starts = [(parse_iso(e["at"]), e["percent"]) for e in events if e["event"] in ("started", "stage")]
    if not starts:
        starts = [(r.started, r.percent)]
    stages = []
    for i, (t0, percent) in enumerate(starts):
        last = i + 1 == len(starts)
        t1 = end if last else starts[i + 1][0]
        counts = meta.report_outcomes(r.product, r.release, t0, t1 if last else t1 - 1e-6)
        stages.append({"stage": i, "percent": percent, "started": iso(t0),
                       "ended": iso(t1) if not last or ends else None,
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
        buckets.append({"start": iso(t), "offset": int(t - first), "percent": percent,
                        **{k: counts.get(k, 0) for k in ("success", "failed", "rolled_back")}})
        t += size
    marks = [{"at": e["at"], "offset": int(parse_iso(e["at"]) - first), "event": e["event"],
              "percent": e["percent"]} for e in events]
    timeline = {"start": iso(first), "end": iso(end), "bucket_seconds": size, "span_seconds": len(buckets) * size,
                "buckets": buckets, "marks": marks}
    return stages, timeline


def channels_view(repo: Repo, clock: Clock, product: str | None = None) -> dict[str, Any]:
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
                            "sequence": ch.sequence, "min_status": ch.min_status, "updated": iso(ch.updated),
                            "expires": iso(ch.expires), "rollout": rollout})
        out.append({"name": name, "channels": entries,
                    "releases": [{"version": r.version, "status": r.status} for r in meta.list_releases(name)]})
    return {"generated": iso(time.time()), "now": iso(now), "products": out}


# --------------------------------------------------------------------------- health

def fsck_path(store: Path) -> Path:
    return Path(store) / FSCK_FILE


def record_fsck(store: Path, data: dict[str, Any], started: float, finished: float) -> dict[str, Any]:
    """Keep the result of ``cas fsck`` in STORE/fsck-last.json (written atomically)."""
    record = {"started": iso(started), "finished": iso(finished),
              "duration_seconds": round(finished - started, 3),
              "ok": not data.get("corrupt") and not data.get("missing_referenced"),
              "checked": data.get("checked"), "bytes": data.get("bytes"),
              "corrupt": list(data.get("corrupt", []))[:100], "corrupt_count": len(data.get("corrupt", [])),
              "quarantined": list(data.get("quarantined", []))[:100],
              "missing_referenced": list(data.get("missing_referenced", []))[:100],
              "missing_count": len(data.get("missing_referenced", [])),
              "stray_temp": data.get("stray_temp")}
    path = fsck_path(store)
    write_atomic(path, json.dumps(record, indent=1, sort_keys=True).encode())
    return record


def last_fsck(store: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(fsck_path(store).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"ok": False, "error": f"unreadable {FSCK_FILE}: {exc}"}
    if isinstance(record, dict) and isinstance(record.get("finished"), str):
        try:
            record["age_seconds"] = int(time.time() - parse_iso(record["finished"]))
        except ValueError:
            pass
    return record


def _count_entries(path: Path) -> int:
    try:
        return sum(1 for _ in path.iterdir())
    except FileNotFoundError:
        return 0


class RequestRates:
    """Request and error rates from the server's ``cas_http_requests`` counter.

    The counter only grows; a rate needs two samples.  Each health read takes one
    (at most one a second) and keeps ``keep_seconds`` of them; a rate is the change
    against the oldest sample within ``window_seconds`` (null until there are two)."""

    def __init__(self, window_seconds: float = 60.0, keep_seconds: float = 600.0) -> None:
        self.started = time.time()
        self.window = window_seconds
        self.keep = keep_seconds
        self._samples: deque[tuple[float, dict[tuple[str, str, str], float]]] = deque()
        self._lock = threading.Lock()

    @staticmethod
    def read(metrics: Any) -> dict[tuple[str, str, str], float]:
        out: dict[tuple[str, str, str], float] = {}
        for family in metrics.requests.collect():
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[(s.labels["method"], s.labels["endpoint"], s.labels["status"])] = s.value
        return out

    def snapshot(self, metrics: Any) -> dict[str, Any]:
        now = time.monotonic()
        current = self.read(metrics)
        with self._lock:
            while self._samples and now - self._samples[0][0] > self.keep:
                self._samples.popleft()
            reference = next((s for s in self._samples if now - s[0] <= self.window and now - s[0] >= 1.0), None)
            if reference is None and self._samples and now - self._samples[-1][0] >= 1.0:
                reference = self._samples[-1]
            if not self._samples or now - self._samples[-1][0] >= 1.0:
                self._samples.append((now, current))
        uptime = max(time.time() - self.started, 1e-9)

        def classify(key: tuple[str, str, str]) -> str:
            status = key[2]
            return "5xx" if status.startswith("5") else "4xx" if status.startswith("4") else "ok"

        def totals(sample: dict[tuple[str, str, str], float]) -> dict[str, float]:
            t = {"requests": 0.0, "4xx": 0.0, "5xx": 0.0}
            for key, value in sample.items():
                t["requests"] += value
                kind = classify(key)
                if kind != "ok":
                    t[kind] += value
            return t

        now_totals = totals(current)
        rate = None
        if reference is not None:
            dt = now - reference[0]
            before = totals(reference[1])
            rate = {"window_seconds": round(dt, 1),
                    "requests_per_second": round((now_totals["requests"] - before["requests"]) / dt, 3),
                    "client_errors_per_second": round((now_totals["4xx"] - before["4xx"]) / dt, 3),
                    "server_errors_per_second": round((now_totals["5xx"] - before["5xx"]) / dt, 3)}
        endpoints: dict[str, dict[str, Any]] = {}
        for (method, endpoint, status), value in current.items():
            e = endpoints.setdefault(endpoint, {"endpoint": endpoint, "requests": 0, "4xx": 0, "5xx": 0,
                                                "statuses": {}})
            e["requests"] += int(value)
            kind = classify((method, endpoint, status))
            if kind != "ok":
                e[kind] += int(value)
            e["statuses"][status] = e["statuses"].get(status, 0) + int(value)
        if reference is not None:
            dt = now - reference[0]
            for e in endpoints.values():
                before = sum(v for k, v in reference[1].items() if k[1] == e["endpoint"])
                e["requests_per_second"] = round((e["requests"] - before) / dt, 3)
        requests = int(now_totals["requests"])
        return {"total": requests, "client_errors": int(now_totals["4xx"]),
                "server_errors": int(now_totals["5xx"]),
                "error_ratio": round((now_totals["4xx"] + now_totals["5xx"]) / requests, 4) if requests else None,
                "server_error_ratio": round(now_totals["5xx"] / requests, 4) if requests else None,
                "uptime_seconds": int(uptime),
                "average_per_second": round(requests / uptime, 3), "rate": rate,
                "endpoints": sorted(endpoints.values(), key=lambda e: (-e["requests"], e["endpoint"]))}


def gc_status(repo: Repo) -> dict[str, Any]:
    """The last `cas gc` run and the tombstones, or GC_STATUS where the metadata has no GC."""
    last_run = getattr(repo.meta, "last_gc_run", None)
    if last_run is None:
        return dict(GC_STATUS)
    last = last_run()
    if last is not None and isinstance(last.get("result"), str):
        try:
            last = {**last, "result": json.loads(last["result"])}
        except ValueError:
            pass
    tombs = repo.meta.tombstones() if hasattr(repo.meta, "tombstones") else {}
    states = Counter(state for state, _ in tombs.values())
    message = ("never run: `cas gc` (or POST /v1/admin/gc) marks unreferenced objects and deletes them "
               "on a later run" if last is None else
               f"last run finished {last['finished']}{' (dry run)' if last.get('dry_run') else ''}")
    return {"implemented": True, "last_run": last, "tombstones": len(tombs), "tombstone_states": dict(states),
            "message": message}


def health(repo: Repo, figures: Figures, rates: RequestRates | None = None, metrics: Any = None
           ) -> dict[str, Any]:
    store = Path(repo.config.store)
    jobs = repo.meta.jobs_summary(limit=0)
    hooks = repo.meta.webhook_summary(limit=0)
    return {"generated": iso(time.time()),
            "store": {**store_stats(repo, figures), "path": str(store),
                      "quarantined": _count_entries(store / "quarantine"),
                      "temp_files": _count_entries(store / "tmp"),
                      "uploads_in_progress": len(repo.meta.all_uploads())},
            "fsck": last_fsck(store), "gc": gc_status(repo),
            "deltas": jobs["counts"], "webhooks": hooks["counts"],
            "requests": rates.snapshot(metrics) if rates is not None and metrics is not None else None}
