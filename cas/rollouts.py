"""Rollouts on a channel: staged (percent cohorts), all-at-once (blue/green) and batches.

A rollout is a row in the metadata (``rollouts``) plus the ``rollout`` object of the
channel document.  Every change of state that changes what clients see (start, next
stage or batch, finish, abort, flip back) writes the rollout row *and* the new signed
channel document (next sequence) in one transaction, compared-and-set on the rollout's
``revision`` and the channel's ``sequence``: concurrent evaluators (background job,
``cas rollout tick``, the report handler, an operator) cannot apply one step twice.

Strategies:

A halt (by the gate or an operator) signs a channel document without the rollout, pointing
at the previous release, so no new client installs the release while it is halted;
``resume`` signs the rollout back in (same salt and stage, so the same cohort).

* ``staged``: the channel keeps pointing at the previous release; the rollout object
  names the new one with the stage's percent and a salt fixed for the rollout, so a
  cohort only grows.  A stage advances after ``stage_seconds`` when it has at least
  ``min_reports`` reports and a failure rate within the threshold; at the last stage
  (100 %) the channel's release becomes the new one and ``rollout`` null.
* ``all-at-once``: the channel flips to the new release at once; ``flip_back`` flips it
  back (new sequence).  The same health gate halts (or, with auto-abort, flips back).
* ``batches``: a known list of client ids, admitted ``batch_size`` at a time through an
  allow-list ``clients`` in the rollout object (percent 0) -- a departure from the
  design contract documented in docs/rollouts.md.

``decide`` is the pure core: given a rollout, its health and the time it says what the
gate does.  Everything else reads state, calls it and writes the outcome.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable

from casformat.canonical import canonical_bytes, parse_json
from casformat.times import format_epoch

from . import channels, webhooks
from .clock import Clock
from .errors import Conflict, Invalid, NotFound
from .metadata import Channel, StaleWrite
from .offerable import check_offerable, check_trusted
from .release_lookup import get_release
from .repo import Repo

STRATEGIES = ("staged", "all-at-once", "batches")
ACTIVE = ("running", "halted")
ACTIONS = ("promote", "halt", "resume", "abort", "flip-back")
ATTEMPTS = 8
MAX_CLIENT_ID = 128
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SALT = re.compile(r"^[0-9a-f]{8,64}$")


# --------------------------------------------------------------------------- parsing (pure)

def parse_duration(value: Any, name: str = "duration") -> int:
    """Seconds from an integer or "90", "30s", "10m", "1h", "2d"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise Invalid(f"{name} must be a number of seconds or like 30s, 10m, 1h, 2d", code="bad_duration")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_rate(value: Any) -> int:
    """A failure-rate threshold 0..1 ("0.05" or 0/1) in basis points (no floats on the wire)."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise InvalidOperation
        rate = Decimal(str(value).strip())
    except InvalidOperation:
        raise Invalid("max_failure_rate must be a decimal 0..1 such as \"0.05\"", code="bad_rate") from None
    if not rate.is_finite() or not 0 <= rate <= 1 or (rate * 10000) % 1:
        raise Invalid("max_failure_rate must be between 0 and 1 (at most 4 decimals)", code="bad_rate")
    return int(rate * 10000)


def parse_stages(value: Any) -> tuple[int, ...]:
    """Percents, strictly increasing, each 1..100: [1, 5, 25, 100] or "1,5,25,100"."""
    if isinstance(value, str):
        try:
            value = [int(part) for part in value.split(",")]
        except ValueError:
            raise Invalid("stages are integers like 1,5,25,100", code="bad_stages") from None
    if (not isinstance(value, list) or not value
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in value)):
        raise Invalid("stages are a non-empty list of integer percents", code="bad_stages")
    if not all(1 <= p <= 100 for p in value):
        raise Invalid(f"stage percents must be within 1..100, got {value}", code="bad_stages")
    if any(b <= a for a, b in zip(value, value[1:])):
        raise Invalid(f"stage percents must increase, got {value}", code="bad_stages")
    return tuple(value)


def _count(value: Any, name: str, low: int = 0, high: int = 10**9) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Invalid(f"{name} must be an integer {low}..{high}", code="bad_rollout")
    return value


def check_clients(value: Any, limit: int) -> tuple[str, ...]:
    """A list of distinct client ids (1..128 printable characters), at most ``limit``; Invalid otherwise."""
    if not isinstance(value, list) or not value:
        raise Invalid("a non-empty list of client ids is needed (the batches strategy, pins)", code="bad_clients")
    if len(value) > limit:
        raise Invalid(f"{len(value)} client ids; at most {limit}", code="too_many_clients")
    bad = [c for c in value if not isinstance(c, str) or not 1 <= len(c) <= MAX_CLIENT_ID or not c.isprintable()]
    if bad:
        raise Invalid(f"client ids are strings of 1..{MAX_CLIENT_ID} printable characters",
                      detail=[repr(b)[:60] for b in bad[:20]], code="bad_clients")
    if len(set(value)) != len(value):
        raise Invalid("client ids must be unique", code="bad_clients")
    return tuple(value)


# --------------------------------------------------------------------------- model (pure)

@dataclass(frozen=True)
class Rollout:
    id: int
    product: str
    channel: str
    strategy: str
    release: str
    manifest: str
    previous: str
    previous_manifest: str
    salt: str
    stages: tuple[int, ...]
    stage: int
    stage_started: float
    stage_seconds: int
    max_failure_bp: int
    min_reports: int
    auto_abort: bool
    clients: tuple[str, ...]
    batch_size: int
    max_failures: int
    max_concurrent: int
    state: str
    reason: str
    revision: int
    started: float
    updated: float
    actor: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Rollout:
        return cls(row["id"], row["product"], row["channel"], row["strategy"], row["release"], row["manifest"],
                   row["previous"], row["previous_manifest"], row["salt"], tuple(json.loads(row["stages"])),
                   row["stage"], row["stage_started"], row["stage_seconds"], row["max_failure_bp"],
                   row["min_reports"], bool(row["auto_abort"]), tuple(json.loads(row["clients"] or "[]")),
                   row["batch_size"] or 0, row["max_failures"] or 0, row["max_concurrent"] or 0,
                   row["state"], row["reason"], row["revision"], row["started"], row["updated"], row["actor"])

    @property
    def last_stage(self) -> bool:
        if self.strategy == "batches":
            return (self.stage + 1) * self.batch_size >= len(self.clients)
        return self.stage >= len(self.stages) - 1

    @property
    def percent(self) -> int:
        """Share of clients offered the new release (batches: of the listed clients)."""
        if self.strategy == "batches":
            return len(self.admitted()) * 100 // len(self.clients)
        return self.stages[self.stage]

    def admitted(self) -> tuple[str, ...]:
        return self.clients[:(self.stage + 1) * self.batch_size]

    def document_rollout(self) -> dict[str, Any] | None:
        """The ``rollout`` object of the channel document while this rollout runs."""
        if self.strategy == "all-at-once":
            return None
        obj: dict[str, Any] = {"release": self.release, "manifest": self.manifest,
                               "percent": 0 if self.strategy == "batches" else self.percent, "salt": self.salt}
        if self.strategy == "batches":
            obj["clients"] = list(self.admitted())
        return obj


@dataclass(frozen=True)
class Health:
    """What the gate looks at for the current stage (or batch)."""
    reports: int = 0
    success: int = 0
    failed: int = 0
    rolled_back: int = 0
    admitted: int = 0          # batches: clients admitted so far
    done: int = 0              # batches: admitted clients whose latest report is a success
    failing: int = 0           # batches: admitted clients that reported a failure

    @property
    def failures(self) -> int:
        return self.failed + self.rolled_back

    def to_dict(self) -> dict[str, Any]:
        rate = f"{self.failures / self.reports:.4f}" if self.reports else None
        return {"reports": self.reports, "success": self.success, "failed": self.failed,
                "rolled_back": self.rolled_back, "failure_rate": rate, "admitted": self.admitted,
                "done": self.done, "failing": self.failing}


def decide(r: Rollout, h: Health, now: float) -> tuple[str, str] | None:
    """What the health gate does now: (advance|finish|halt|abort, why) or None."""
    if r.state != "running":
        return None
    stop = "abort" if r.auto_abort else "halt"
    elapsed = now - r.stage_started >= r.stage_seconds
    if r.strategy == "batches":
        if h.failing >= max(r.max_failures, 1):
            return stop, f"{h.failing} clients failed (max {r.max_failures})"
        if elapsed and h.done == h.admitted:
            return ("finish" if r.last_stage else "advance"), f"all {h.admitted} admitted clients reported success"
        return None
    # Halt as soon as failures exceed the threshold even if every missing report were a success.
    if h.failures * 10000 > r.max_failure_bp * max(h.reports, r.min_reports):
        return stop, (f"{h.failures} of {h.reports} reports failed; threshold "
                      f"{r.max_failure_bp / 10000:.4f} over at least {r.min_reports}")
    if elapsed and h.reports >= r.min_reports:
        why = f"{h.reports} reports, {h.failures} failed, after {r.stage_seconds}s"
        if r.strategy == "all-at-once" or r.last_stage:
            return ("finish", why) if r.percent == 100 else None  # a last stage below 100 waits for promote
        return "advance", why
    return None


# --------------------------------------------------------------------------- reading

def _rollout(repo: Repo, product: str, channel: str, active_only: bool = True) -> Rollout:
    channels.get_channel(repo, product, channel)  # 404 unknown_product / unknown_channel
    row = repo.meta.latest_rollout(product, channel, active_only=active_only)
    if row is None:
        raise NotFound(f"no {'active ' if active_only else ''}rollout on {product}/{channel}", code="no_rollout")
    return Rollout.from_row(row)


def health(repo: Repo, r: Rollout, now: float) -> Health:
    if r.strategy == "batches":
        latest = repo.meta.latest_outcomes(r.product, r.release, r.started)
        admitted = r.admitted()
        outcomes = [latest.get(c) for c in admitted]
        return Health(reports=sum(1 for o in outcomes if o), admitted=len(admitted),
                      done=sum(1 for o in outcomes if o and o[0] == "success"),
                      failing=sum(1 for o in outcomes if o and o[1]))
    counts = repo.meta.report_outcomes(r.product, r.release, r.stage_started, now)
    return Health(reports=sum(counts.values()), success=counts.get("success", 0),
                  failed=counts.get("failed", 0), rolled_back=counts.get("rolled_back", 0))


def describe(repo: Repo, clock: Clock, r: Rollout) -> dict[str, Any]:
    now = clock.now()
    iso = format_epoch
    data: dict[str, Any] = {
        "id": r.id, "product": r.product, "channel": r.channel, "strategy": r.strategy, "state": r.state,
        "reason": r.reason, "release": r.release, "previous": r.previous, "percent": r.percent,
        "stage": r.stage, "stages": list(r.stages), "stage_started": iso(r.stage_started),
        "stage_seconds": r.stage_seconds, "next_check": iso(r.stage_started + r.stage_seconds),
        "max_failure_rate": f"{r.max_failure_bp / 10000:.4f}", "min_reports": r.min_reports,
        "auto_abort": r.auto_abort, "salt": r.salt, "revision": r.revision, "started": iso(r.started),
        "updated": iso(r.updated), "actor": r.actor, "health": health(repo, r, now).to_dict(),
        "events": repo.meta.rollout_events(r.id)}
    if r.strategy == "batches":
        data["batches"] = {"clients": len(r.clients), "batch_size": r.batch_size,
                           "max_failures": r.max_failures, "max_concurrent": r.max_concurrent,
                           "admitted": len(r.admitted()), "interval_seconds": r.stage_seconds}
    return data


def status(repo: Repo, clock: Clock, product: str, channel: str) -> dict[str, Any]:
    return describe(repo, clock, _rollout(repo, product, channel, active_only=False))


# --------------------------------------------------------------------------- writing

def _event_data(r: Rollout, event: str, reason: str, actor: str) -> dict[str, Any]:
    return {"product": r.product, "channel": r.channel, "rollout": r.id, "strategy": r.strategy,
            "release": r.release, "previous": r.previous, "percent": r.percent, "state": r.state,
            "event": event, "reason": reason, "actor": actor}


def _channel_doc(repo: Repo, r: Rollout, release: str, manifest: str, rollout: dict[str, Any] | None) -> Channel:
    ch = channels.get_channel(repo, r.product, r.channel)
    return channels.prepare(repo, r.product, r.channel, release, manifest, ch.sequence + 1, ch.min_status, rollout)


def _apply(repo: Repo, clock: Clock, r: Rollout, event: str, actor: str, reason: str,
           changes: dict[str, Any], channel: str | None) -> Rollout:
    """Write ``changes`` (and, unless ``channel`` is None, a new channel document of kind
    ``rollout`` | ``target`` | ``previous``) if the rollout is still at ``r.revision``."""
    now = clock.now()
    after = Rollout.from_row({**_row(r), **changes, "updated": now})
    doc = None
    if channel == "rollout":
        doc = _channel_doc(repo, after, after.previous, after.previous_manifest, after.document_rollout())
    elif channel == "target":
        doc = _channel_doc(repo, after, after.release, after.manifest, None)
    elif channel == "previous":
        doc = _channel_doc(repo, after, after.previous, after.previous_manifest, None)
    outbox = webhooks.outbox_rows(repo.config, f"rollout.{event}", _event_data(after, event, reason, actor), now)
    repo.meta.update_rollout(r.id, r.revision, {**changes, "updated": now}, doc,
                             (event, after.percent, actor, reason, now), outbox)
    return Rollout.from_row({**_row(after), "revision": r.revision + 1})


def _row(r: Rollout) -> dict[str, Any]:
    return {"id": r.id, "product": r.product, "channel": r.channel, "strategy": r.strategy,
            "release": r.release, "manifest": r.manifest, "previous": r.previous,
            "previous_manifest": r.previous_manifest, "salt": r.salt, "stages": json.dumps(list(r.stages)),
            "stage": r.stage, "stage_started": r.stage_started, "stage_seconds": r.stage_seconds,
            "max_failure_bp": r.max_failure_bp, "min_reports": r.min_reports, "auto_abort": int(r.auto_abort),
            "clients": json.dumps(list(r.clients)) if r.clients else None, "batch_size": r.batch_size,
            "max_failures": r.max_failures, "max_concurrent": r.max_concurrent, "state": r.state,
            "reason": r.reason, "revision": r.revision, "started": r.started, "updated": r.updated,
            "actor": r.actor}


def _step(repo: Repo, clock: Clock, r: Rollout, action: str, actor: str, reason: str) -> Rollout:
    """One state change of a loaded rollout; raises StaleWrite when it lost a race."""
    now = clock.now()
    if action == "advance":
        return _apply(repo, clock, r, "stage", actor, reason,
                      {"stage": r.stage + 1, "stage_started": now, "reason": reason}, "rollout")
    if action == "finish":
        return _apply(repo, clock, r, "finished", actor, reason, {"state": "finished", "reason": reason},
                      None if r.strategy == "all-at-once" else "target")
    if action == "halt":
        # A halt stops new installs at once: the channel goes back to the previous release
        # without the rollout (all-at-once: points at the previous release again).
        return _apply(repo, clock, r, "halted", actor, reason, {"state": "halted", "reason": reason}, "previous")
    if action == "resume":
        # ... and resume offers the release again as it was (same cohort: salt and percent).
        return _apply(repo, clock, r, "resumed", actor, reason,
                      {"state": "running", "stage_started": now, "reason": reason},
                      "target" if r.strategy == "all-at-once" else "rollout")
    if action == "abort":
        return _apply(repo, clock, r, "aborted", actor, reason, {"state": "aborted", "reason": reason}, "previous")
    if action == "flip-back":
        return _apply(repo, clock, r, "flipped_back", actor, reason, {"state": "flipped_back", "reason": reason},
                      "previous")
    raise AssertionError(action)


def act(repo: Repo, clock: Clock, product: str, channel: str, action: str, actor: str,
        reason: str = "") -> Rollout:
    """An operator's promote | halt | resume | abort | flip-back."""
    if action not in ACTIONS:
        raise Invalid(f"unknown action {action!r}; one of {', '.join(ACTIONS)}", code="bad_action")
    for _ in range(ATTEMPTS):
        if action == "flip-back":
            r = _rollout(repo, product, channel, active_only=False)
            ch = channels.get_channel(repo, product, channel)
            if r.strategy != "all-at-once":
                raise Conflict("flip-back is for all-at-once rollouts; use abort", code="not_all_at_once")
            offered = ch.release == r.release or (r.state == "halted" and ch.release == r.previous)
            if r.state not in ("running", "halted", "finished") or not offered:
                raise Conflict(f"{product}/{channel} no longer points at {r.release}", code="rollout_not_active")
        else:
            r = _rollout(repo, product, channel)
        step = action
        if action == "promote":
            if r.state != "running":
                raise Conflict(f"the rollout is {r.state}; resume it first", code="rollout_halted")
            step = "finish" if r.strategy == "all-at-once" or r.last_stage else "advance"
        elif action == "halt" and r.state != "running":
            raise Conflict(f"the rollout is {r.state}", code="rollout_not_running")
        elif action == "resume" and r.state != "halted":
            raise Conflict(f"the rollout is {r.state}", code="rollout_not_halted")
        try:
            return _step(repo, clock, r, step, actor, reason or f"{action} by {actor}")
        except StaleWrite:
            continue
    raise Conflict(f"rollout on {product}/{channel} is changing concurrently; try again", code="concurrent_change")


def evaluate(repo: Repo, clock: Clock, product: str | None = None) -> list[dict[str, Any]]:
    """Run the health gate on every running rollout (of a product); idempotent, safe to run
    from several places at once.  Returns the steps taken."""
    taken: list[dict[str, Any]] = []
    for row in repo.meta.active_rollouts(product):
        for _ in range(ATTEMPTS):
            fresh = repo.meta.get_rollout(row["id"])
            if fresh is None:
                break
            r = Rollout.from_row(fresh)
            now = clock.now()
            decision = decide(r, health(repo, r, now), now)
            if decision is None:
                break
            action, why = decision
            try:
                after = _step(repo, clock, r, action, "health-gate", why)
            except StaleWrite:
                continue  # someone else moved it: look again
            taken.append({"product": r.product, "channel": r.channel, "rollout": r.id, "action": action,
                          "reason": why, "percent": after.percent, "state": after.state})
            break  # one step per evaluation: a new stage starts its own window
    return taken


def start(repo: Repo, clock: Clock, product: str, channel: str, version: str, actor: str, *,
          strategy: str = "staged", stages: Any = (1, 5, 25, 100), stage_duration: Any = 3600,
          max_failure_rate: Any = "0.05", min_reports: Any = 20, auto_abort: Any = False,
          clients: Any = None, batch_size: Any = None, max_failures: Any = 1, max_concurrent: Any = None,
          salt: Any = None, reason: str = "") -> Rollout:
    if strategy not in STRATEGIES:
        raise Invalid(f"strategy must be one of {', '.join(STRATEGIES)}", code="bad_strategy")
    # Everything about the request is checked before anything is read or written.
    stage_seconds = parse_duration(stage_duration, "stage duration")
    bp = parse_rate(max_failure_rate)
    min_n = _count(min_reports, "min_reports")
    if not isinstance(auto_abort, bool):
        raise Invalid("auto_abort must be true or false", code="bad_rollout")
    if salt is None:
        salt = secrets.token_hex(16)
    elif not isinstance(salt, str) or not _SALT.match(salt):
        raise Invalid("salt must be 8..64 lowercase hex characters", code="bad_rollout")
    ids: tuple[str, ...] = ()
    size = fails = concurrent = 0
    if strategy == "staged":
        percents = parse_stages(list(stages) if isinstance(stages, tuple) else stages)
    elif strategy == "all-at-once":
        percents = (100,)
    else:
        percents = ()
        ids = check_clients(clients, repo.config.rollout_max_clients)
        size = _count(batch_size, "batch_size", 1, len(ids))
        concurrent = _count(size if max_concurrent is None else max_concurrent, "max_concurrent", 1)
        size = min(size, concurrent)
        fails = _count(max_failures, "max_failures", 1)
    release = get_release(repo, product, version)
    check_trusted(repo, release)
    for _ in range(ATTEMPTS):
        ch = channels.get_channel(repo, product, channel)
        active = repo.meta.latest_rollout(product, channel, active_only=True)
        if active is not None:
            raise Conflict(f"{product}/{channel} already has a {active['state']} rollout of {active['release']}",
                           detail={"rollout": active["id"], "release": active["release"]}, code="rollout_exists")
        if version == ch.release:
            raise Conflict(f"{product}/{channel} already points at {version}", code="same_release")
        check_offerable(release, channel, ch.min_status)
        now = clock.now()
        signed = parse_json(ch.document)["signed"]
        row = {"product": product, "channel": channel, "strategy": strategy, "release": version,
               "manifest": release.manifest_digest, "previous": ch.release, "previous_manifest": signed["manifest"],
               "salt": salt, "stages": json.dumps(list(percents)), "stage": 0, "stage_started": now,
               "stage_seconds": stage_seconds, "max_failure_bp": bp, "min_reports": min_n,
               "auto_abort": int(auto_abort), "clients": json.dumps(list(ids)) if ids else None,
               "batch_size": size or None, "max_failures": fails or None, "max_concurrent": concurrent or None,
               "state": "running", "reason": reason or f"started by {actor}", "revision": 0, "started": now,
               "updated": now, "actor": actor}
        r = Rollout.from_row({**row, "id": 0})
        if strategy == "batches":
            everyone = {**(r.document_rollout() or {}), "clients": list(ids)}
            needed = len(ch.document) + len(canonical_bytes(everyone)) + 256
            if needed > repo.config.rollout_max_document_bytes:
                raise Invalid(f"the channel document with every batch admitted would be ~{needed} bytes; the "
                              f"limit is {repo.config.rollout_max_document_bytes} (fewer or shorter client ids)",
                              code="too_many_clients")
        if strategy == "all-at-once":
            doc = channels.prepare(repo, product, channel, version, release.manifest_digest, ch.sequence + 1,
                                   ch.min_status, None)
        else:
            doc = channels.prepare(repo, product, channel, ch.release, signed["manifest"], ch.sequence + 1,
                                   ch.min_status, r.document_rollout())
        outbox = webhooks.outbox_rows(repo.config, "rollout.started",
                                      _event_data(r, "started", row["reason"], actor), now)
        try:
            rollout_id = repo.meta.insert_rollout(row, doc, ("started", r.percent, actor, row["reason"], now),
                                                  outbox)
        except StaleWrite:
            continue  # the channel moved or another rollout started: check again
        return Rollout.from_row({**row, "id": rollout_id})
    raise Conflict(f"channel {product}/{channel} is changing concurrently; try again", code="concurrent_change")


def read_clients(lines: Iterable[str]) -> list[str]:
    """Client ids from a file: one per line, blank lines and # comments ignored."""
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
