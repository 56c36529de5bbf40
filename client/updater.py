"""The client's public API: init, check, update, rollback, status, verify, gc.

An update walks these steps, each in the module named for it:

    trust    client/trust.py     root rotations -> channel -> release -> target manifest
                                 (rebuilt from the delta, or the full one), verified
    windows  client/windows.py   outside a maintenance window: deferred (unless critical)
    plan     client/plan.py      for every file: a local copy, else recipes or a bundle, cheapest first
    preflight client/stage.py    free space for the downloads and the new files
    fetch    client/fetcher.py   parallel, resumable, bounded, verified downloads
    stage    client/stage.py     the new tree in .cas/staging/{v}, verified and fsynced
    swap     client/swap.py      publish versions/{v}, then previous/current links
    health   client/health.py    health check; on failure the rollback chain previous -> factory
    report   client/report.py    the outcome, to the server

``client/journal.py`` records the phase (fetching, staged, swapped) in
``.cas/journal.json`` so that a killed update resumes or is abandoned cleanly; nothing
outside ``.cas/`` and the new version directory is written before the swap.
``client/gc.py`` removes versions no link needs.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from casformat.canonical import document_digest, parse_json
from casformat.compat import judge
from casformat.errors import DocumentError
from casformat.paths import check_name
from casformat.roots import verify_first_root
from casformat.trust import choose_release

from . import windows
from .config import ClientConfig, ConfigError, changed, stored_form
from .errors import ClientError, HealthCheckFailed, NeedsIntervention, NotAvailable, PolicyRefused
from .failed import failed_releases, find_failed, forget_failed, remember_failed
from .faults import CRASH_ENV, crash_point
from .fetcher import Fetcher
from .gc import clean_downloads, collect
from .health import Health, check_health, is_intact, rollback_chain
from .install import remove_tree, tree_problems
from .installroot import InstallRoot
from .journal import Journal, clear_journal, read_journal, write_journal
from .local import LocalContent
from .log import Log
from .plan import Plan, plan_update
from .report import send_report
from .stage import StagedTree, check_free_space, stage_tree
from .swap import cache_manifest, publish, swap_current
from .trust import Target, fetch_channel, fetch_target, refresh_root

__all__ = ["CRASH_ENV", "UpdateResult", "Updater"]



@dataclass
class UpdateResult:
    """What ``Updater.update`` did (the JSON of ``cas-client update --json``)."""

    outcome: str                       # up_to_date | updated | rolled_back | deferred | skipped_failed
    from_version: str | None
    to_version: str | None
    current: str | None
    files: int = 0
    files_local: int = 0
    bytes_downloaded: int = 0
    bytes_full: int = 0
    seconds: float = 0.0
    used_delta: bool = False
    steps: list[str] = field(default_factory=list)
    next_window: str | None = None     # when deferred: the next moment updates may be applied
    warnings: list[str] = field(default_factory=list)   # e.g. a deprecated target (the version policy)


def restore_previous(layout: InstallRoot, prior: str | None, failed: str | None = None) -> None:
    """Point ``previous`` at ``prior`` (what it was before an update or rollback that did not
    stay); no ``previous`` link when that is gone, the failed release, or now current."""
    current = layout.link("current")
    if prior and prior not in (current, failed) and layout.version_dir(prior).is_dir():
        if layout.link("previous") != prior:
            layout.set_link("previous", prior)
    elif layout.link("previous") is not None:
        layout.remove_link("previous")


def _schedule(config: ClientConfig) -> windows.Schedule:
    return windows.schedule(config.windows, config.blackouts, config.timezone)


class Updater:
    """One install root and the commands of ``cas-client`` (docs/client.md)."""

    def __init__(self, root: str | Path, log: Log | None = None,
                 progress: Callable[[int], None] | None = None,
                 progress_total: Callable[[int], None] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        self.layout = InstallRoot(Path(root))
        self.overrides: dict[str, Any] = dict(overrides or {})   # settings for this run only
        self.allow_downgrade = self.allow_major = False           # version policy overrides (update)
        self.log: Log = log or (lambda message: None)
        self.progress = progress
        self.progress_total: Callable[[int], None] = progress_total or (lambda n: None)
        self.transport = transport

    # ------------------------------------------------------------------ init
    @classmethod
    def init(cls, root: str | Path, servers: list[str], product: str, channel: str, root_document: bytes,
             client_id: str | None = None, health_cmd: str | None = None, **settings: Any) -> Updater:
        """Pin ``root_document`` (given out of band) and the servers; write config and state.

        ``settings`` are ``ClientConfig`` settings, checked like every other source of them."""
        check_name("product", product)
        check_name("channel", channel)
        if not servers:
            raise ClientError("at least one --server is needed")
        given = {**settings, "servers": list(servers), "product": product, "channel": channel,
                 "client_id": client_id or uuid.uuid4().hex, "health_cmd": health_cmd}
        config = ClientConfig.from_dict(given)
        trusted = verify_first_root(parse_json(root_document, max_bytes=1 << 20))
        updater = cls(root)
        layout = updater.layout
        if layout.initialised:
            raise ClientError(f"{layout.root} is already initialised")
        layout.create()
        layout.write_json("config.json", stored_form(config, given))
        layout.write_json("root.json", parse_json(root_document))
        layout.write_json("state.json", {"root_version": trusted.version, "channel_sequence": 0,
                                         "channel_manifest": None, "installed": {}})
        return updater

    @property
    def config(self) -> ClientConfig:
        """The configuration in ``.cas/config.json``, with this run's ``overrides`` (checked alike)."""
        return ClientConfig.from_dict({**self.stored_config(), **self.overrides})

    def stored_config(self) -> dict[str, Any]:
        """The JSON of ``.cas/config.json`` as stored (unchecked)."""
        data = self.layout.read_json("config.json")
        if data is None:
            raise ClientError(f"{self.layout.root} is not initialised (run cas-client init)")
        if not isinstance(data, dict):
            raise ConfigError(f"{self.layout.cas / 'config.json'} is not a JSON object")
        return data

    def set_config(self, changes: dict[str, Any]) -> ClientConfig:
        """Apply ``changes`` (None: back to the default) to ``.cas/config.json`` under the lock:
        the whole result is checked first and written atomically, or nothing is written."""
        self.layout.lock()
        try:
            data = changed(self.stored_config(), changes)
            self.layout.write_json("config.json", data)   # atomic: temporary file, fsync, rename
            return ClientConfig.from_dict(data)
        finally:
            self.layout.unlock()

    # ------------------------------------------------------------------ check
    def check(self) -> dict[str, Any]:
        """The channel's release for this client, verified; nothing is stored."""
        async def run() -> dict[str, Any]:
            config = self.config
            async with Fetcher(config, self.layout.downloads, transport=self.transport) as fetcher:
                root = await refresh_root(self.layout, config, fetcher, self.log, persist=False)
                channel = await fetch_channel(self.layout, config, fetcher, root, persist=False)
                version, digest = choose_release(channel, config.client_id)
                current = self.layout.link("current")
                return {"channel": channel["channel"], "sequence": channel["sequence"], "release": version,
                        "manifest": digest, "expires": channel["expires"], "current": current,
                        "update_pending": version != current, "policy": channel.get("policy")}
        return asyncio.run(run())

    # ------------------------------------------------------------------ update
    def update(self, to: str | None = None, health_cmd: str | None = None,
               ignore_window: bool = False, retry_failed: bool = False,
               allow_downgrade: bool = False, allow_major: bool = False) -> UpdateResult:
        """Update to the channel's release (or ``to``) under the lock, resuming an unfinished update first.

        A release that failed its health check here before is skipped (``skipped_failed``)
        unless ``retry_failed`` (``client/failed.py``).  The channel's version policy is checked
        before anything is downloaded (``allow_downgrade``, ``allow_major`` override it)."""
        self.allow_downgrade, self.allow_major = allow_downgrade, allow_major
        self.layout.lock()
        try:
            return asyncio.run(self._update(to, health_cmd, ignore_window, retry_failed))
        finally:
            self.layout.unlock()

    async def _update(self, to: str | None, health_cmd: str | None, ignore_window: bool,
                      retry_failed: bool = False) -> UpdateResult:
        started = time.monotonic()
        config = self.config
        command = health_cmd if health_cmd is not None else config.health_cmd
        async with Fetcher(config, self.layout.downloads, self.progress, self.transport) as fetcher:
            result = await self._resume(fetcher, command)
            if result is None:
                result = await self._walk(fetcher, config, to, command, ignore_window, retry_failed)
        result.seconds = time.monotonic() - started
        return result

    async def _walk(self, fetcher: Fetcher, config: ClientConfig, to: str | None, command: str | None,
                    ignore_window: bool, retry_failed: bool = False) -> UpdateResult:
        """trust -> (window) -> plan -> fetch -> stage -> publish -> swap -> health -> report."""
        layout = self.layout
        root = await refresh_root(layout, config, fetcher, self.log)
        current = layout.link("current")
        critical = pinned = False
        if to is None:
            channel = await fetch_channel(layout, config, fetcher, root)
            version, digest = choose_release(channel, config.client_id)
            critical = version in channel.get("critical", [])
            pinned = any(config.client_id in pin["clients"] for pin in channel.get("pins", ()))
        else:
            version, digest = check_name("version", to), None
            try:   # only for its signed policy: what --to may do
                channel = await fetch_channel(layout, config, fetcher, root)
            except NotAvailable:
                channel = {}
                self.log(f"no channel {config.channel} on the servers: no version policy to check")
        if version == current and layout.cached_manifest(version) is not None:
            return UpdateResult("up_to_date", current, version, current)
        # A pin is the operator rolling this node back on purpose (signed in the channel
        # document like the policy): the policy does not refuse it.
        warnings = self._check_policy(config, channel.get("policy"), current, version, pinned)
        marks = find_failed(layout, version, digest)
        if marks and not retry_failed:
            when = datetime.fromtimestamp(float(marks[-1].get("at") or 0), UTC).isoformat(timespec="seconds")
            note = (f"{version} failed its health check here at {when}; skipped until a newer release "
                    f"or --retry-failed")
            self.log(note)
            return UpdateResult("skipped_failed", current, version, current, steps=[note])
        if marks:
            forget_failed(layout, marks)
            self.log(f"retrying {version}, which failed its health check here before")
        deferred = self._deferral(config, version, current, critical or ignore_window, critical)
        if deferred is not None:
            return deferred
        target = await fetch_target(layout, config, fetcher, root, version, digest, current, self.log)
        journal = Journal.begin(version, current, document_digest(target.signed), layout.link("previous"))
        final = layout.version_dir(version)
        if final.is_dir() and not tree_problems(final, target.signed["files"]):
            # Already installed and intact (e.g. the channel went back to previous or factory):
            # never tear down a tree a rollback link may point at; just swap to it.
            cache_manifest(layout, version, target.envelope)
            write_journal(layout, journal.at("staged"))
            files = target.signed["files"]
            result = UpdateResult("updated", current, version, version, files=len(files),
                                  files_local=sum(1 for e in files if e["type"] == "file"),
                                  used_delta=target.used_delta)
        else:
            result = await self._install(fetcher, config, target, journal)
        result.warnings = warnings
        await self._swap_and_check(fetcher, version, current, command, result, journal)
        return result

    def _check_policy(self, config: ClientConfig, policy: dict[str, Any] | None, current: str | None,
                      version: str, pinned: bool = False) -> list[str]:
        """The channel's signed version policy on the move ``current`` -> ``version``, before any
        download: ``PolicyRefused`` naming the rule and the override, else the warnings (logged).
        ``pinned``: the channel pins this client to ``version``, which overrides the policy."""
        verdict = judge(policy, current, version, self.allow_downgrade or pinned, self.allow_major or pinned)
        if verdict.refusal is not None:
            raise PolicyRefused(
                f"{config.product}/{config.channel} refuses {current} -> {version} by its version policy: "
                f"{verdict.refusal}; to install it anyway: cas-client update --to {version} {verdict.override}",
                detail={"rule": verdict.rule, "override": verdict.override, "from": current, "to": version})
        for warning in verdict.warnings:
            self.log(f"warning: {warning}")
        return list(verdict.warnings)

    async def _install(self, fetcher: Fetcher, config: ClientConfig, target: Target,
                       journal: Journal) -> UpdateResult:
        """plan -> preflight -> fetch + stage -> publish ``versions/{v}``; the journal follows each phase."""
        layout = self.layout
        local = LocalContent.scan(layout)  # hashes each local file once per update, never across updates
        plan = plan_update(target.signed["files"], target.recipes, local.find)
        check_free_space(layout, plan, config.free_space_factor)
        write_journal(layout, journal.at("fetching"))
        crash_point("after_journal")
        self.progress_total(plan.download_bytes)
        staged = await self._stage(fetcher, target, plan, local)
        publish(layout, staged, target.envelope)
        write_journal(layout, journal.at("staged"))
        crash_point("after_staged_journal")
        return UpdateResult("updated", journal.from_version, staged.version, staged.version, files=len(plan.files),
                            files_local=staged.files_local, bytes_downloaded=fetcher.bytes_downloaded,
                            bytes_full=plan.full_bytes, used_delta=target.used_delta)

    def _deferral(self, config: ClientConfig, version: str, current: str | None, forced: bool,
                  critical: bool) -> UpdateResult | None:
        """A ``deferred`` result outside the maintenance window, unless ``forced``; else None."""
        schedule = _schedule(config)
        now = datetime.now(UTC)
        if windows.is_open(schedule, now):
            return None
        if forced:
            if critical:
                self.log(f"{version} is critical: applying it outside the maintenance window")
            return None
        opening = windows.next_opening(schedule, now)
        self.log(f"{version} is available; outside the maintenance window "
                 f"(next opens {opening.isoformat() if opening else 'never'})")
        return UpdateResult("deferred", current, version, current,
                            next_window=opening.isoformat() if opening else None)

    async def _stage(self, fetcher: Fetcher, target: Target, plan: Plan, local: LocalContent) -> StagedTree:
        """Stage the target; a failure removes the half-built tree and the journal."""
        try:
            return await stage_tree(self.layout, fetcher, target.signed, plan, self.log, local.chunk_candidates)
        except BaseException:
            # Free the space of a half-built tree now (downloads are kept for resuming).
            remove_tree(self.layout.staging / target.signed["version"])
            clear_journal(self.layout)
            raise

    async def _swap_and_check(self, fetcher: Fetcher, version: str, previous: str | None, command: str | None,
                              result: UpdateResult, journal: Journal) -> None:
        swap_current(self.layout, version, previous)
        journal = journal.at("swapped")
        write_journal(self.layout, journal)
        result.steps.append(f"swapped current to {version}")
        crash_point("before_health")
        await self._after_swap(fetcher, version, previous, command, result, journal)

    async def _after_swap(self, fetcher: Fetcher, version: str, previous: str | None, command: str | None,
                          result: UpdateResult, journal: Journal) -> None:
        """Health check of the new current; keep it, or walk the rollback chain; report either way."""
        layout, config = self.layout, self.config

        def health_of(v: str) -> Health:
            return check_health(layout, v, command, config.health_timeout_s)

        health = health_of(version)
        result.steps.append(f"health of {version}: {'ok' if health.ok else 'failed'} ({health.detail})")
        self.log(result.steps[-1])
        if not health.ok and journal.manifest:
            remember_failed(layout, version, journal.manifest, health.detail)
        if health.ok:
            crash_point("after_health")
            if layout.link("factory") is None:
                # Only a version that passed its health check becomes the factory rollback target.
                layout.set_link("factory", version)
            installed = layout.state().get("installed", {})
            layout.save_state(installed={**installed, version: time.time()})
            clear_journal(layout)
            self._collect(config)
            await send_report(config, "success", previous, version, health.detail, self.log, self.transport,
                              failed_releases(layout))
            return
        try:
            now = rollback_chain(layout, version, previous, health_of, result.steps, self.log)
        except NeedsIntervention as exc:
            restore_previous(layout, journal.prior_previous, failed=version)
            clear_journal(layout)
            await send_report(config, "failed", previous, version, "; ".join(result.steps), self.log,
                              self.transport, failed_releases(layout))
            exc.detail = result.steps
            raise
        # Back on a good version: the links are as if the update had not happened (docs/client.md,
        # "Rollback points"): ``previous`` is again what it was before it -- unless that is the
        # version now current (the chain fell back to it), then there is no previous.
        restore_previous(layout, journal.prior_previous, failed=version)
        crash_point("after_rollback")
        clear_journal(layout)
        result.outcome, result.current = "rolled_back", now
        self._collect(config, drop=frozenset({version}))
        await send_report(config, "rolled_back", previous, version, "; ".join(result.steps), self.log,
                          self.transport, failed_releases(layout))

    def _collect(self, config: ClientConfig, drop: frozenset[str] = frozenset()) -> None:
        """After an update: keep the ``keep_versions`` most recent versions and the rollback points,
        never a release that just failed (``drop``); empty the downloads (``client/gc.py``)."""
        if config.keep_versions <= 0:
            clean_downloads(self.layout)
            return
        removed = collect(self.layout, config.keep_versions, drop)["removed"]
        failed = [v for v in removed if v in drop]
        older = [v for v in removed if v not in drop]
        if failed:
            self.log(f"removed {', '.join(failed)}, which failed its health check")
        if older:
            self.log(f"removed {', '.join(older)} (keeping the last {config.keep_versions} versions "
                     "and the rollback points)")

    async def _resume(self, fetcher: Fetcher, command: str | None) -> UpdateResult | None:
        """Finish or abandon the update a journal left; None when there is nothing to resume."""
        layout = self.layout
        journal = read_journal(layout)
        if journal is None:
            return None
        if journal.kind == "rollback":
            # A manual rollback was killed before its health check finished: finish it, then update.
            self.log(f"finishing the interrupted rollback to {journal.target}")
            try:
                self._finish_rollback(journal, command)
            except HealthCheckFailed as exc:
                self.log(exc.message)
            return None
        target, previous, phase = journal.target, journal.from_version, journal.phase
        if phase not in ("staged", "swapped") or not target or not layout.version_dir(target).is_dir():
            # Killed before the new tree was published: current still points at the old tree.
            # Start over; downloads under .cas/downloads are reused.
            if target:
                remove_tree(layout.staging / str(target))
            clear_journal(layout)
            self.log(f"abandoned an unfinished update to {target}; starting again")
            return None
        if phase == "swapped" and layout.link("current") == target:
            self.log(f"resuming the update to {target} after its swap: checking health")
            result = UpdateResult("updated", previous, target, target, steps=["resumed after swap"])
            await self._after_swap(fetcher, target, previous, command, result, journal)
            return result
        # The new tree is complete (published by rename after verification and fsync), but
        # the swap did not happen or finish, or a rollback was interrupted: (re)do the swap
        # and the health check from the start.  The tree is re-verified first.
        if not is_intact(layout, target, self.log):
            clear_journal(layout)
            self.log(f"the published tree of {target} is damaged; starting again")
            return None
        result = UpdateResult("updated", previous, target, target, steps=[f"resumed ({phase})"])
        await self._swap_and_check(fetcher, target, previous, command, result, journal)
        return result

    # ------------------------------------------------------------------ other commands
    def status(self, online: bool = True) -> dict[str, Any]:
        """Links, installed versions, an unfinished update, the window and (online) the channel."""
        config = self.config
        data: dict[str, Any] = {"root": str(self.layout.root), "product": config.product,
                                "channel": config.channel, "client_id": config.client_id,
                                "current": self.layout.link("current"), "previous": self.layout.link("previous"),
                                "factory": self.layout.link("factory"), "installed": self.layout.installed(),
                                "journal": self.layout.read_json("journal.json"),
                                "failed_releases": failed_releases(self.layout)}
        schedule = _schedule(config)
        if not schedule.unrestricted:
            opening = windows.next_opening(schedule, datetime.now(UTC))
            data["next_window"] = opening.isoformat() if opening else None
            data["window_open"] = bool(opening and opening <= datetime.now(UTC))
        if online:
            try:
                check = self.check()
                data.update(channel_release=check["release"], update_pending=check["update_pending"],
                            channel_sequence=check["sequence"], channel_policy=check["policy"])
            except (ClientError, DocumentError) as exc:
                data["channel_error"] = exc.message
        return data

    def verify(self, version: str | None = None) -> dict[str, Any]:
        """Re-hash an installed tree (current by default) against its cached manifest."""
        version = version or self.layout.link("current")
        if version is None:
            raise ClientError("nothing is installed")
        manifest = self.layout.cached_manifest(version)
        if manifest is None:
            raise ClientError(f"no manifest cached for {version}")
        problems = tree_problems(self.layout.version_dir(version), manifest["signed"]["files"])
        return {"version": version, "ok": not problems, "problems": problems}

    def rollback(self, to: str = "previous", health_cmd: str | None = None) -> dict[str, Any]:
        """Make ``previous``, ``factory`` or a version current, verified and health-checked.

        Journaled like an update: a rollback killed before its health check finished is
        finished first (``_finish_rollback``) by the next ``rollback`` or ``update``."""
        layout = self.layout
        layout.lock()
        try:
            config = self.config
            command = health_cmd if health_cmd is not None else config.health_cmd
            journal = read_journal(layout)
            if journal is not None and journal.kind == "rollback":
                self.log(f"finishing the interrupted rollback to {journal.target}")
                return self._finish_rollback(journal, command)
            current = layout.link("current")
            target = layout.link(to) if to in ("previous", "factory") else check_name("version", to)
            if target is None:
                raise ClientError(f"there is no {to} version to roll back to")
            if not is_intact(layout, target, self.log):
                raise ClientError(f"{target} is damaged or not installed; refusing to roll back to it")
            journal = Journal.rollback(target, current, layout.link("previous"))
            write_journal(layout, journal)
            layout.set_link("current", target)
            return self._finish_rollback(journal, command)
        finally:
            layout.unlock()

    def _finish_rollback(self, journal: Journal, command: str | None) -> dict[str, Any]:
        """Health-check the rollback's target as ``current``; keep it, or put back the version
        the rollback started from (then ``HealthCheckFailed``).  Clears the journal either way."""
        layout, config = self.layout, self.config
        target, started_from = str(journal.target), journal.from_version
        if layout.link("current") != target:
            layout.set_link("current", target)
        crash_point("rollback_health")
        health = check_health(layout, target, command, config.health_timeout_s)
        if not health.ok:
            if started_from and started_from != target and layout.version_dir(started_from).is_dir():
                layout.set_link("current", started_from)
            restore_previous(layout, journal.prior_previous)
            clear_journal(layout)
            raise HealthCheckFailed(f"{target} failed its health check ({health.detail}); "
                                    f"current stays {layout.link('current')}")
        # A manual rollback is a change of current like an update: ``previous`` becomes the
        # version it left, so ``rollback`` again goes back (docs/client.md, "Rollback points").
        if started_from and started_from != target and layout.version_dir(started_from).is_dir():
            layout.set_link("previous", started_from)
        clear_journal(layout)
        return {"from": started_from, "to": target, "health": health.detail,
                "previous": layout.link("previous"), "factory": layout.link("factory")}

    def gc(self) -> dict[str, Any]:
        """Remove versions other than current, previous, factory (and an update's target)."""
        self.layout.lock()
        try:
            return dict(collect(self.layout))
        finally:
            self.layout.unlock()
