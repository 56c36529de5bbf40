"""Ahead-of-time delta builds and the manifest delta service.

When a release reaches a status in ``delta_build_on`` its file pairs against
the last ``delta_bases`` released versions and the factory (first) release are
queued in the metadata store.  ``DeltaBuilder`` claims jobs with a lease and
runs them on a bounded pool; each build runs ``deltagen`` (whose patch builds
run in killable worker processes under a time budget), stores the verified
objects, then records the recipes and marks the job done in one transaction.
A builder killed mid-job leaves no recipe; its job is re-queued when the
builder restarts (dead owner) or its lease runs out.

Every object a build writes is pinned first (``store_built``): garbage
collection keeps a pinned object until the job records it (or the pin's lease
runs out), and recording an object GC deleted anyway is refused
(``ObjectsBeingDeleted``) and the job queued again.

One ``DeltaBuilder`` runs per store at a time (``worker_lock``: an flock on
``STORE/deltas.lock``; a second worker waits).  Stopping it (SIGTERM) kills its
build workers (``deltagen.budget.cancel_builds``): each build ends with
``BuildCancelled``, removes its temp directory, records nothing, and its job goes
back to the queue.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Iterator

from casformat.canonical import parse_json
from casformat.manifest_delta import manifest_delta, offered, with_bundles
from deltagen import (
    DeltaError,
    DeltaLimits,
    best_recipes,
    build_bundle,
    bundle_candidates,
    verify_compressed,
)
from deltagen.budget import (
    build_before,
    build_memory,
    builds_cancelled,
    cancel_builds,
    memory_gate,
    return_freed_memory,
)
from deltagen.bundles import MACHINE_CODE_PATCHES, is_machine_code
from deltagen.digests import blake3_file
from deltagen.errors import BuildCancelled
from deltagen.policy import classify
from deltagen.recipes import compress_level_for

from .chunked import build_chunk_pack, chunk_pairs, verify_chunk_pack
from .deltaplan import bundle_inputs, plan_pairs
from .errors import NotFound
from .metadata import ObjectsBeingDeleted, Release
from .metadata.errors import metadata_unavailable
from .objectstore import Ingested
from .repo import Repo

log = logging.getLogger("cas.deltas")


def limits_for(repo: Repo) -> DeltaLimits:
    return repo.config.delta_limits()


def lease_seconds(repo: Repo) -> float:
    """How long a claimed job (and the pins of the objects it writes) stays its builder's
    without a renewal (``DeltaBuilder`` renews every third of it while it lives)."""
    if repo.config.delta_lease_seconds > 0:
        return repo.config.delta_lease_seconds
    return repo.config.delta_time_budget_s * 3 + 60


def store_built(repo: Repo, job: tuple[str, str], path: Path, digest: str) -> Ingested:
    """Store an object a build of ``job`` made, pinned before it is written so that
    garbage collection cannot mark or sweep it before the job records it."""
    repo.meta.pin_build_objects(job[0], job[1], [digest], time.time() + lease_seconds(repo))
    return repo.ingest_file(path, expected=digest)


def worker_count(repo: Repo) -> int:
    """Concurrent builds: ``delta_workers``, else one per CPU.  Memory is bounded apart:
    each build reserves its estimated peak from ``delta_memory_bytes`` first
    (``deltagen.budget.memory_gate``), so large builds wait for each other."""
    return repo.config.delta_workers or max(1, os.cpu_count() or 1)


def _signed(release: Release) -> dict[str, Any]:
    return parse_json(release.manifest)["signed"]


def patchable_files(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries deltas are built for: chunked files (cas/chunked.py) are not stored whole and
    travel as chunks instead, so they are neither targets nor bases of a patch or bundle."""
    return [e for e in files if "chunks" not in e]


def bases_for(repo: Repo, target: Release) -> list[Release]:
    """The last K released versions before ``target`` and the factory release."""
    history = repo.meta.list_releases(target.product)
    earlier = [r for r in history if r.version != target.version and r.created <= target.created]
    shipped = [r for r in earlier if r.status in ("released", "deprecated")]
    chosen = list(reversed(shipped))[:repo.config.delta_bases]
    if earlier and earlier[0] not in chosen:
        chosen.append(earlier[0])  # the factory release
    return chosen


def planned_pairs(repo: Repo, base: Release | None, target: Release) -> list[tuple[str, str]]:
    """The (base object, target object) pairs of a release pair, planned once per process."""
    tiny = repo.config.delta_tiny_bytes
    key = (base.manifest_digest if base is not None else "", target.manifest_digest, tiny)
    return repo.plans.get(key, lambda: pairs_of(_signed(base)["files"] if base is not None else [],
                                                _signed(target)["files"], tiny))


def pairs_of(base_files: list[dict[str, Any]], target_files: list[dict[str, Any]], tiny: int) -> list[tuple[str, str]]:
    """The jobs of a release pair: file pairs (patches, compressed forms) of the files stored
    whole, and (base file, target file) chunk packs of chunked files (cas/chunked.py)."""
    return (plan_pairs(patchable_files(base_files), patchable_files(target_files), tiny)
            + chunk_pairs(base_files, target_files))


def queue_pair(repo: Repo, base: Release, target: Release) -> int:
    pairs = planned_pairs(repo, base, target)
    added = repo.meta.enqueue_jobs(pairs)
    if repo.config.delta_bundles:
        added += repo.meta.enqueue_bundle_job(base.manifest_digest, target.manifest_digest)
    repo.meta.record_plan(target.product, base.version, target.version)
    return added


def queue_release(repo: Repo, target: Release) -> int:
    """Queue the builds for a release reaching testing/released."""
    # Compressed forms of every file, for clients installing this release from nothing.
    added = repo.meta.enqueue_jobs(planned_pairs(repo, None, target))
    repo.meta.record_plan(target.product, "", target.version)
    for base in bases_for(repo, target):
        added += queue_pair(repo, base, target)
    return added


def on_status_change(repo: Repo, release: Release) -> None:
    if release.status in repo.config.delta_build_on:
        queue_release(repo, release)


SHIPPED = ("testing", "released", "deprecated")


def read_may_queue(repo: Repo, target: Release, base: Release | None) -> bool:
    """Whether a read of the delta (anyone may read) may queue its builds: only for a target
    that is testing or released, from nothing or from one of the bases a publish would plan
    (``bases_for``: the last ``delta_bases`` shipped releases and the factory release), and
    only once per pair (``delta_plans``).  Drafts, reversed pairs (a newer base), other bases
    and pairs planned before queue nothing, so anonymous reads queue at most what publishing
    the target would have queued."""
    if target.status not in ("testing", "released"):
        return False
    if base is not None and (base.product != target.product or base.status not in SHIPPED
                             or base.version == target.version or base.created > target.created
                             or base.version not in {b.version for b in bases_for(repo, target)}):
        return False
    return not repo.meta.planned(target.product, base.version if base is not None else "", target.version)


def chunk_bytes(repo: Repo, base_files: list[dict[str, Any]], target_files: list[dict[str, Any]]) -> dict[str, int]:
    """For each chunked target file: its index size plus its chunks that no chunked file of the
    base holds (what a client with the base fetches; cas/chunked.py)."""
    targets = [e for e in target_files if e["type"] == "file" and "chunks" in e]
    if not targets:
        return {}
    base_chunks: set[str] = set()
    for entry in base_files:
        if entry["type"] == "file" and "chunks" in entry:
            base_chunks.update(repo.meta.index_chunk_sizes(entry["chunks"]["index"]))
    out = {}
    for entry in targets:
        chunks = repo.meta.index_chunk_sizes(entry["chunks"]["index"])
        out[entry["blake3"]] = entry["chunks"]["size"] + sum(n for d, n in chunks.items() if d not in base_chunks)
    return out


def delta_document(repo: Repo, target: Release, base: Release | None) -> dict[str, Any]:
    """The manifest delta from ``base`` (None: from nothing, a fresh install) to ``target``;
    queues the builds when ``read_may_queue`` allows it."""
    base_signed = _signed(base) if base is not None else {"files": []}
    target_envelope = parse_json(target.manifest)
    pairs = planned_pairs(repo, base, target)
    if read_may_queue(repo, target, base):
        if base is None:
            repo.meta.enqueue_jobs(pairs)
            repo.meta.record_plan(target.product, "", target.version)
        else:
            queue_pair(repo, base, target)
    jobs = list(pairs)
    if base is not None and repo.config.delta_bundles:
        jobs.append((base.manifest_digest, target.manifest_digest))
    states = repo.meta.job_states(jobs)
    complete = all(states.get(p) in ("done", "failed") for p in jobs)
    targets = {t for _, t in pairs}
    recipes = repo.meta.recipes_for(targets)
    document = manifest_delta(target.product, base.version if base else None, base_signed, target_envelope,
                              target.manifest_digest, recipes, complete, base.manifest_digest if base else None,
                              chunk_bytes(repo, base_signed["files"], target_envelope["signed"]["files"]))
    if base is None:
        return document
    have = {e["blake3"] for e in base_signed["files"] if e["type"] == "file"}
    return with_bundles(document, repo.meta.bundles_for(base.manifest_digest, target.manifest_digest), have)


# --------------------------------------------------------------------------- building

def build_chunk_job(repo: Repo, base: str, target: str, limits: DeltaLimits) -> list[dict[str, Any]]:
    """The chunk pack of two chunked files (cas/chunked.py), verified, stored when smaller
    than the chunks it holds; returns the recipe row to record (kind ``chunks``)."""
    store = repo.objects
    base_index = repo.chunk_indexes.get(store, repo.meta, base)
    target_index = repo.chunk_indexes.get(store, repo.meta, target)
    if base_index is None or target_index is None:
        raise NotFound(f"chunk index of {target if target_index is None else base} is missing")
    workdir = Path(tempfile.mkdtemp(prefix="delta-", dir=store.tmp_dir))
    started = time.monotonic()
    try:
        out = workdir / "chunks.pack"
        raw = build_chunk_pack(store, base_index, target_index, out, deadline=started + limits.time_budget_s)
        verify_chunk_pack(store, out)
        if builds_cancelled():
            raise BuildCancelled("stopping")
        size = out.stat().st_size
        if size >= raw:
            return []
        ingested = store_built(repo, (base, target), out, blake3_file(out))
        return [{"base": base, "kind": "chunks", "algorithm": "zstd", "object": ingested.digest,
                 "size": ingested.size, "build_seconds": time.monotonic() - started}]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def build_job(repo: Repo, base: str, target: str, limits: DeltaLimits) -> list[dict[str, Any]]:
    """Build, verify and store the recipes of one pair; returns rows to record."""
    store = repo.objects
    if base and not store.exists(target) and repo.meta.chunk_index_of(target) is not None:
        return build_chunk_job(repo, base, target, limits)
    if not store.exists(target) or (base and not store.exists(base)):
        raise NotFound(f"object {'base ' + base if base and not store.exists(base) else target} is missing")
    workdir = Path(tempfile.mkdtemp(prefix="delta-", dir=store.tmp_dir))
    rows: list[dict[str, Any]] = []
    try:
        if base:
            # local_copy: the object's own file (filesystem) or a verified download (S3).
            # A planned pair comes with a ("", target) job that builds the compressed form:
            # build it here too only if that job does not exist (never twice).
            compressed = ("", target) not in repo.meta.job_states([("", target)])
            with store.local_copy(base) as base_file, store.local_copy(target) as target_file:
                made = best_recipes(base_file, target_file, workdir, limits, compressed=compressed)
            if builds_cancelled():  # a cancelled attempt looks like a dropped one: record nothing
                raise BuildCancelled("stopping")
            for recipe in made:
                if recipe.kind == "raw":
                    continue
                store_built(repo, (base, target), recipe.path, recipe.object)
                rows.append({"base": base if recipe.kind == "patch" else "", "kind": recipe.kind,
                             "algorithm": recipe.algorithm, "object": recipe.object, "size": recipe.size,
                             "build_seconds": recipe.build_s})
        else:
            size = store.size(target) or 0
            out = workdir / "compressed.zst"
            started = time.monotonic()
            # The same budget as a patch build: a worker process under the time budget
            # (in this process only when small, limits.inprocess_max_bytes).
            with store.local_copy(target) as target_file, memory_gate.reserve(build_memory("compressed", 0, size)):
                level = compress_level_for(classify(target_file), size, limits)
                build_before("compressed", None, target_file, out, dataclasses.replace(limits, compress_level=level),
                             started + limits.time_budget_s)
            verify_compressed(out, size, target, limits)
            if out.stat().st_size < size:
                ingested = store_built(repo, (base, target), out, blake3_file(out))
                rows.append({"base": "", "kind": "compressed", "algorithm": "zstd", "object": ingested.digest,
                             "size": ingested.size, "build_seconds": time.monotonic() - started})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def requeue_dead(repo: Repo) -> int:
    """Jobs left running by a killed builder on this host go back to the queue."""
    host = socket.gethostname()
    requeued = 0
    for job in repo.meta.jobs_summary(limit=10_000)["running"]:
        owner_host, _, pid = (job["owner"] or "").rpartition(":")
        if owner_host != host or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still alive: its lease protects the job
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        repo.meta.release_jobs(job["owner"])
        requeued += 1
    return requeued


def build_bundles(repo: Repo, base: Release, target: Release, limits: DeltaLimits) -> list[dict[str, Any]]:
    """The bundles worth building for a release pair (deltagen.bundle_candidates), built,
    verified and stored.  Each changed target brings the base of its best patch, else
    the first base the planner chose for it."""
    base_files, target_files = patchable_files(_signed(base)["files"]), patchable_files(_signed(target)["files"])
    have = {e["blake3"] for e in base_files if e["type"] == "file"}
    pairs = planned_pairs(repo, base, target)
    recipes = repo.meta.recipes_for({t for _, t in pairs})
    offers = {e["blake3"]: offered(recipes.get(e["blake3"], []), e["blake3"], e["size"], have)
              for e in target_files if e["type"] == "file" and e["blake3"] not in have}
    files = bundle_inputs(base_files, target_files, pairs, offers)
    for f in files:
        if f["best_algorithm"] in MACHINE_CODE_PATCHES and not is_machine_code(f):
            # an executable without a library's name (an ELF program) stays out of bundles
            # like a library: its content class says so (three small samples of the file)
            with repo.objects.local_copy(f["target"]) as path:
                f["class"] = classify(path)
    rows: list[dict[str, Any]] = []
    for candidate in bundle_candidates(files, limits):
        if len(candidate.targets) < 2:
            continue
        workdir = Path(tempfile.mkdtemp(prefix="bundle-", dir=repo.objects.tmp_dir))
        try:
            with contextlib.ExitStack() as stack:
                bases = [stack.enter_context(repo.objects.local_copy(d)) for d in candidate.bases]
                targets = [stack.enter_context(repo.objects.local_copy(d)) for d in candidate.targets]
                info = build_bundle(bases, targets, workdir / "bundle.zst", limits)
            store_built(repo, (base.manifest_digest, target.manifest_digest), info.path, info.object)
            rows.append({**info.to_dict(), "build_seconds": info.build_s})
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return rows


def _run_bundle_job(repo: Repo, owner: str, base_manifest: str, target_manifest: str,
                    limits: DeltaLimits) -> bool:
    base, target = repo.meta.release_by_manifest(base_manifest), repo.meta.release_by_manifest(target_manifest)
    if base is None or target is None:
        repo.meta.finish_bundle_job(base_manifest, target_manifest, owner, [], error="release deleted")
        return True
    pairs = planned_pairs(repo, base, target)
    if any(state in ("queued", "running") for state in repo.meta.job_states(pairs).values()):
        # Bundles use each file's best patch base: wait for the per-file builds.
        repo.meta.defer_job(base_manifest, target_manifest, owner)
        return False
    try:
        rows = build_bundles(repo, base, target, limits)
        if builds_cancelled():
            return True
    except BuildCancelled:
        return True
    except (DeltaError, NotFound, OSError) as exc:
        log.warning("bundle build %s -> %s failed: %s", base.version, target.version, exc)
        repo.meta.finish_bundle_job(base_manifest, target_manifest, owner, [], error=f"{type(exc).__name__}: {exc}")
        return True
    try:
        repo.meta.finish_bundle_job(base_manifest, target_manifest, owner, rows)
    except ObjectsBeingDeleted as exc:
        _retry(repo, owner, base_manifest, target_manifest, exc)
    return True


def _retry(repo: Repo, owner: str, base: str, target: str, exc: ObjectsBeingDeleted) -> None:
    """GC deleted an object the build wrote before it was recorded: build again."""
    log.warning("delta build %s -> %s not recorded: %s; retrying", base[:12], target[:12], exc)
    repo.meta.retry_job(base, target, owner, repo.config.delta_max_attempts, f"{type(exc).__name__}: {exc}")


def run_one(repo: Repo, owner: str, limits: DeltaLimits, stop: threading.Event | None = None) -> bool:
    """Claim and build one job; False when the queue is empty (or only waits).

    A database outage (``MetadataUnavailable``) while the claimed job is built or recorded
    gives the job back to the queue, uncounted, as soon as the database answers again
    (``_give_back``), instead of leaving it ``running`` for its whole lease; False then.
    An outage before a job is claimed raises, and ``DeltaBuilder`` backs off.  Recording an
    object GC deleted meanwhile is refused (``ObjectsBeingDeleted``) and the job is queued
    again (``_retry``).  ``stop`` (the builder's) cuts the waits of ``_give_back`` short."""
    job = repo.meta.claim_job(owner, lease_seconds(repo), repo.config.delta_max_attempts)
    if job is None:
        return False
    base, target = job
    try:
        if repo.meta.job_kind(base, target) == "bundle":
            return _run_bundle_job(repo, owner, base, target, limits)
        try:
            rows = build_job(repo, base, target, limits)
        except BuildCancelled:
            return True  # the builder is stopping: it hands its running jobs back (release_jobs)
        except (DeltaError, NotFound, OSError) as exc:
            log.warning("delta build %s -> %s failed: %s", base[:12], target[:12], exc)
            repo.meta.finish_job(base, target, owner, [], error=f"{type(exc).__name__}: {exc}")
            return True
        try:
            repo.meta.finish_job(base, target, owner, rows)
        except ObjectsBeingDeleted as exc:
            _retry(repo, owner, base, target, exc)
        return True
    except Exception as exc:
        if metadata_unavailable(exc) is None:
            raise
        log.warning("delta build %s -> %s: the metadata database is unavailable (%s); giving the job back",
                    base[:12], target[:12], exc)
        _give_back(repo, owner, base, target, stop)
        return False


def _give_back(repo: Repo, owner: str, base: str, target: str, stop: threading.Event | None = None) -> None:
    """Put a claimed job back in the queue, retrying with backoff while the database is down
    (``delta_db_backoff_seconds``, doubled up to ``delta_db_max_backoff_seconds``, at most
    ``delta_db_attempts`` tries); past that the job's lease returns it to the queue.  The
    waits end when ``stop`` is set (the builder is stopping): the job then stays with its
    lease, and ``release_jobs`` on the way out or ``requeue_dead`` at the next start returns it."""
    stop = stop if stop is not None else threading.Event()
    delay = repo.config.delta_db_backoff_seconds
    for attempt in range(repo.config.delta_db_attempts):
        try:
            repo.meta.defer_job(base, target, owner)
            return
        except Exception as exc:
            if metadata_unavailable(exc) is None or attempt == repo.config.delta_db_attempts - 1:
                log.warning("could not give back delta job %s -> %s: %s (its lease will)", base[:12],
                            target[:12], exc)
                return
        if stop.wait(delay):
            log.warning("delta job %s -> %s not given back: the builder is stopping", base[:12], target[:12])
            return
        delay = min(delay * 2, repo.config.delta_db_max_backoff_seconds)


def drain(repo: Repo) -> int:
    """Build every queued job in this process (``cas deltas build``)."""
    requeue_dead(repo)
    owner = owner_id()
    limits = limits_for(repo)
    done = 0
    while True:
        if run_one(repo, owner, limits):
            done += 1
        elif repo.meta.jobs_summary(limit=1)["counts"]["queued"] == 0:
            return done
        else:
            time.sleep(0.05)  # a bundle job waits for per-file builds someone else is running


@contextlib.contextmanager
def worker_lock(store_dir: Path, stop: threading.Event, poll: float = 1.0) -> Iterator[bool]:
    """Hold ``STORE/deltas.lock`` (flock) while a builder runs: one builder per store.

    Waits while another builder holds it; yields False if ``stop`` was set first.  The
    kernel drops the lock when its holder dies, however it dies."""
    fd = os.open(Path(store_dir) / "deltas.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if stop.wait(poll):
                    yield False
                    return
        os.ftruncate(fd, 0)
        os.write(fd, f"{owner_id()}\n".encode())
        yield True
    finally:
        os.close(fd)  # releases the lock


class DeltaBuilder:
    """A bounded pool of builds fed from the queue (``cas deltas worker``).

    The server runs this in a child process of its own so that building never
    competes with request handling inside the server's event loop.
    """

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.owner = owner_id()
        self.workers = worker_count(repo)
        self.limits = limits_for(repo)
        memory_gate.set_total(repo.config.delta_memory_bytes)
        return_freed_memory()  # freed tables and buffers go back to the system (deltagen.budget)
        self.backoff = 0.0  # seconds the builder waits after a database outage, doubled while it lasts
        self._stop = threading.Event()

    def _run_safe(self) -> bool:
        try:
            done = run_one(self.repo, self.owner, self.limits, self._stop)
        except Exception as exc:
            if metadata_unavailable(exc) is None:
                log.exception("delta build crashed")
                return False
            # The database is down (restarting): wait longer each time, up to the cap.
            c = self.repo.config
            self.backoff = min(max(self.backoff * 2, c.delta_db_backoff_seconds), c.delta_db_max_backoff_seconds)
            log.warning("metadata database unavailable (%s); delta builds pause %.1f s", exc, self.backoff)
            self._stop.wait(self.backoff)
            return False
        self.backoff = 0.0
        return done

    def run_forever(self) -> None:
        """Build until ``stop``; only one builder per store runs (the others wait)."""
        with worker_lock(self.repo.store_dir, self._stop) as held:
            if held:
                self._build_until_stopped()

    def _heartbeat(self) -> None:
        """Renew this builder's leases every third of a lease until it stops: a live builder
        keeps its jobs however long they build, a dead one's return to the queue within a lease."""
        lease = lease_seconds(self.repo)
        while not self._stop.wait(lease / 3):
            try:
                self.repo.meta.renew_leases(self.owner, time.time() + lease)
            except Exception as exc:
                if metadata_unavailable(exc) is None:
                    log.exception("renewing delta job leases failed")
                else:
                    log.warning("metadata database unavailable (%s); leases not renewed", exc)

    def _build_until_stopped(self) -> None:
        requeue_dead(self.repo)
        poll = self.repo.config.delta_poll_seconds
        running: set[Future[bool]] = set()
        heartbeat = threading.Thread(target=self._heartbeat, name="delta-leases", daemon=True)
        heartbeat.start()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="delta") as pool:
            try:
                while not self._stop.is_set():
                    while len(running) < self.workers:
                        running.add(pool.submit(self._run_safe))
                    done, running = wait(running, timeout=poll, return_when=FIRST_COMPLETED)
                    if any(f.result() is False for f in done):
                        self._stop.wait(poll)  # the queue is empty: idle a while
            finally:
                self._stop.set()
                wait(running)
                self.repo.meta.release_jobs(self.owner)

    def stop(self) -> None:
        """Stop claiming, and end the running builds now (their jobs go back to the queue)."""
        self._stop.set()
        cancel_builds()


def run_worker(repo: Repo) -> int:
    """``cas deltas worker``: build queued deltas until SIGTERM or SIGINT, which end the running
    builds (their temp directories removed) and hand their jobs back to the queue."""
    import signal

    logging.basicConfig(level=logging.WARNING, format="cas deltas worker: %(message)s")
    builder = DeltaBuilder(repo)

    def stop(signum: int, frame: Any) -> None:
        builder.stop()  # run_forever returns once the builds have cleaned up and released their jobs
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    builder.run_forever()
    return 0
