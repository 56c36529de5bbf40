"""The client's public API: init, check, update, rollback, status, verify, gc.

Update: channel document -> manifest delta (or full manifest) -> plan ->
preflight (lock, free space, bases verified) -> fetch (parallel, resumable,
bounded) -> verify -> apply -> stage the new tree -> fsync -> swap ``current``
-> health check -> on failure roll back to ``previous``, then ``factory`` ->
report.  A journal in ``.cas/journal.json`` lets a killed update resume or be
abandoned cleanly; nothing outside ``.cas/`` and the new version directory is
written before the swap.
"""
from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

import httpx

from casformat import trust
from casformat.canonical import canonical_bytes, document_digest, parse_json
from casformat.errors import DocumentError
from casformat.manifest_delta import rebuild_target
from casformat.paths import check_name
from casformat.roots import Root, verify_first_root, verify_next_root
from casformat.signatures import split_envelope
from client import windows
from deltagen import DeltaError, apply_bundle, apply_patch, choose_cover, decompress_file
from deltagen.digests import blake3_file
from deltagen.output import write_atomic

from .config import ClientConfig
from .errors import ClientError, DownloadError, HealthCheckFailed, InsufficientSpace, NeedsIntervention, NotAvailable
from .fetcher import Fetcher
from .install import finish_file, fsync_tree, installed_mode, place_file, remove_tree, tree_problems
from .installroot import InstallRoot, fsync_dir

Log = Callable[[str], None]

CRASH_ENV = "CAS_CLIENT_CRASH_AT"


def _crash_point(name: str) -> None:
    """Fault-injection seam for tests: ``CAS_CLIENT_CRASH_AT=<name>`` kills the process here (SIGKILL)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class UpdateResult:
    outcome: str                       # up_to_date | updated | rolled_back | deferred
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


@dataclass
class _FilePlan:
    entry: dict[str, Any]
    local: Path | None                     # a verified local file with this content
    recipes: list[dict[str, Any]]          # remaining options, cheapest first
    bundle: dict[str, Any] | None = None   # a chosen bundle rebuilding this file (recipes: fallback)


def _downloads(plans: list[_FilePlan]) -> dict[str, int]:
    """Objects of the planned first choices: each chosen bundle once, else each file's cheapest."""
    wanted: dict[str, int] = {}
    for p in plans:
        if p.local is not None:
            continue
        first = p.bundle if p.bundle is not None else p.recipes[0]
        wanted[first["object"]] = int(first["size"])
    return wanted


class Updater:
    def __init__(self, root: str | Path, log: Log | None = None,
                 progress: Callable[[int], None] | None = None,
                 progress_total: Callable[[int], None] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.layout = InstallRoot(Path(root))
        self.log = log or (lambda message: None)
        self.progress = progress
        self.progress_total = progress_total or (lambda n: None)
        self.transport = transport
        self._verified: dict[Path, str] = {}

    # ------------------------------------------------------------------ init
    @classmethod
    def init(cls, root: str | Path, servers: list[str], product: str, channel: str, root_document: bytes,
             client_id: str | None = None, health_cmd: str | None = None, **limits: Any) -> Updater:
        check_name("product", product)
        check_name("channel", channel)
        if not servers:
            raise ClientError("at least one --server is needed")
        trusted = verify_first_root(parse_json(root_document, max_bytes=1 << 20))
        updater = cls(root)
        layout = updater.layout
        if layout.initialised:
            raise ClientError(f"{layout.root} is already initialised")
        for name in ("windows", "blackouts"):
            if name in limits:
                limits[name] = tuple(limits[name])
        config = ClientConfig(servers=tuple(servers), product=product, channel=channel,
                              client_id=client_id or uuid.uuid4().hex, health_cmd=health_cmd, **limits)
        windows.schedule(config.windows, config.blackouts, config.timezone)  # refuse bad specs up front
        layout.create()
        layout.write_json("config.json", config.to_dict())
        layout.write_json("root.json", parse_json(root_document))
        layout.write_json("state.json", {"root_version": trusted.version, "channel_sequence": 0,
                                         "channel_manifest": None, "installed": {}})
        return updater

    @property
    def config(self) -> ClientConfig:
        data = self.layout.read_json("config.json")
        if data is None:
            raise ClientError(f"{self.layout.root} is not initialised (run cas-client init)")
        return ClientConfig.from_dict(data)

    def _state(self) -> dict[str, Any]:
        return self.layout.read_json("state.json", {})

    def _save_state(self, **changes: Any) -> None:
        state = self._state()
        state.update(changes)
        self.layout.write_json("state.json", state)

    def _root(self) -> Root:
        root = verify_first_root(self.layout.read_json("root.json"))
        return root

    # ------------------------------------------------------------------ trust
    async def _refresh_root(self, fetcher: Fetcher, persist: bool = True) -> Root:
        root = self._root()
        for _ in range(self.config.max_root_rotations):
            try:
                _, body, _ = await fetcher.document(f"/v1/roots/{root.version + 1}.json", self.config.max_root_bytes)
            except NotAvailable:
                break
            envelope = parse_json(body, max_bytes=self.config.max_root_bytes)
            root = verify_next_root(root, envelope)
            if persist:
                self.layout.write_json("root.json", envelope)
                self._save_state(root_version=root.version)
                self.log(f"trusted root rotated to version {root.version}")
        return root

    async def _channel(self, fetcher: Fetcher, root: Root, persist: bool = True) -> dict[str, Any]:
        config = self.config
        _, body, _ = await fetcher.document(f"/v1/products/{config.product}/channels/{config.channel}",
                                            config.max_channel_bytes)
        envelope = parse_json(body, max_bytes=config.max_channel_bytes)
        state = self._state()
        seen = trust.ChannelState(state.get("channel_sequence", 0), state.get("channel_manifest"))
        signed = trust.accept_channel(root, envelope, config.product, config.channel, seen)
        if persist:  # only under the update lock: state.json has one writer at a time
            self._save_state(channel_sequence=signed["sequence"], channel_manifest=signed["manifest"])
        return signed

    def _cached_manifest(self, version: str) -> dict[str, Any] | None:
        path = self.layout.manifest_path(version)
        if not path.exists():
            return None
        return parse_json(path.read_bytes())

    async def _target_manifest(self, fetcher: Fetcher, root: Root, version: str, digest: str | None,
                               base: str | None) -> tuple[dict[str, Any], dict[str, Any], bool]:
        """(envelope, recipes, used_delta) for the target, verified before any use."""
        config = self.config
        base_envelope = self._cached_manifest(base) if base else None
        if base_envelope is None and config.fresh_install_delta:
            # A fresh install asks for the delta from nothing (``?from=``): every file with its
            # compressed form, where the full manifest would only lead to raw objects.
            base, base_envelope = "", {"signed": {"files": []}}
        if base_envelope is not None and base != version:
            try:
                _, body, _ = await fetcher.document(
                    f"/v1/products/{config.product}/releases/{version}/delta?from={base}", config.max_delta_bytes)
                delta = parse_json(body, max_bytes=config.max_delta_bytes)
                signed = rebuild_target(base_envelope["signed"], delta)
                envelope = {"signed": signed, "signatures": delta["to"]["signatures"],
                            **({"cms": delta["to"]["cms"]} if "cms" in delta["to"] else {})}
                expected = digest or delta["to"]["manifest"]
                trust.accept_manifest(root, envelope, expected, config.cms_policy())
                self._check_identity(signed, version)
                return envelope, delta.get("recipes", {}), True
            except NotAvailable:
                self.log(f"no delta from {base or 'nothing'}; using the full manifest")
            except (DocumentError, DownloadError, KeyError, TypeError, ValueError) as exc:
                self.log(f"delta from {base or 'nothing'} refused ({exc}); using the full manifest")
        _, body, _ = await fetcher.document(f"/v1/products/{config.product}/releases/{version}/manifest",
                                            config.max_manifest_bytes)
        envelope = parse_json(body, max_bytes=config.max_manifest_bytes)
        signed, _ = split_envelope(envelope)
        trust.accept_manifest(root, envelope, digest or document_digest(signed), config.cms_policy())
        self._check_identity(signed, version)
        return envelope, {}, False

    def _check_identity(self, signed: dict[str, Any], version: str) -> None:
        product = self.config.product
        if signed.get("version") != version or signed.get("product") != product:
            raise DocumentError(f"manifest is for {signed.get('product')} {signed.get('version')}, "
                                f"not {product} {version}")

    # ------------------------------------------------------------------ planning
    def _verified_copy(self, path: Path, digest: str) -> bool:
        """True when a local file really has ``digest`` (hashed once per run)."""
        if path not in self._verified:
            try:
                self._verified[path] = blake3_file(path) if path.is_file() and not path.is_symlink() else ""
            except OSError:
                self._verified[path] = ""
        return self._verified[path] == digest

    def _local_index(self) -> dict[str, list[Path]]:
        index: dict[str, list[Path]] = {}
        for version in self.layout.installed():
            manifest = self._cached_manifest(version)
            if manifest is None:
                continue
            base = self.layout.version_dir(version)
            for entry in manifest["signed"]["files"]:
                if entry["type"] == "file":
                    index.setdefault(entry["blake3"], []).append(base / entry["path"])
        for path in self.layout.downloads.iterdir():
            if len(path.name) == 64:
                index.setdefault(path.name, []).append(path)
        return index

    def _local_source(self, index: dict[str, list[Path]], digest: str) -> Path | None:
        for path in index.get(digest, []):
            if self._verified_copy(path, digest):
                return path
        return None

    def _plan(self, files: list[dict[str, Any]], recipes: dict[str, Any]) -> list[_FilePlan]:
        index = self._local_index()
        plans: list[_FilePlan] = []
        for entry in files:
            if entry["type"] != "file":
                continue
            local = self._local_source(index, entry["blake3"])
            options: list[dict[str, Any]] = []
            if local is None:
                for recipe in recipes.get(entry["blake3"], []):
                    if recipe.get("kind") == "patch":
                        base = self._local_source(index, recipe.get("base", ""))
                        if base is None:
                            continue  # we do not have (an intact copy of) that base
                        options.append({**recipe, "base_path": str(base)})
                    elif recipe.get("kind") in ("compressed", "raw"):
                        options.append(dict(recipe))
                raw = {"kind": "raw", "object": entry["blake3"], "size": entry["size"]}
                if not any(o["kind"] == "raw" for o in options):
                    options.append(raw)
                options.sort(key=lambda o: o["size"])
            plans.append(_FilePlan(entry, local, options))
        self._plan_bundles(plans, recipes, index)
        return plans

    def _plan_bundles(self, plans: list[_FilePlan], recipes: dict[str, Any],
                      index: dict[str, list[Path]]) -> None:
        """Use a bundle when it is smaller than the cheapest per-file recipes of the members
        still needed (``deltagen.choose_cover`` over all usable bundles, each counted once)."""
        need = {p.entry["blake3"]: int(p.recipes[0]["size"]) for p in plans if p.local is None}
        bundles: dict[str, dict[str, Any]] = {}
        for digest in need:
            for recipe in recipes.get(digest, []):
                if recipe.get("kind") != "bundle" or recipe.get("algorithm") != "zstd":
                    continue
                if recipe.get("object") in bundles:
                    continue
                try:
                    members = recipe["members"]
                    bases = [self._local_source(index, b) for b in recipe["bases"]]
                    if not members or any(b is None for b in bases):
                        continue  # we lack (an intact copy of) a base
                    bundles[recipe["object"]] = {**recipe, "base_paths": [str(b) for b in bases]}
                except (KeyError, TypeError):
                    continue
        if not bundles:
            return
        usable = list(bundles.values())
        cover = choose_cover(need, [({m["blake3"] for m in b["members"]}, int(b["size"])) for b in usable])
        for i in cover.bundles:
            covered = {m["blake3"] for m in usable[i]["members"]}
            for plan in plans:
                if plan.local is None and plan.bundle is None and plan.entry["blake3"] in covered:
                    plan.bundle = usable[i]

    # ------------------------------------------------------------------ fetch + apply
    async def _materialise(self, fetcher: Fetcher, plan: _FilePlan, dest: Path) -> None:
        entry = plan.entry
        mode = installed_mode(entry)
        if plan.local is None and plan.bundle is not None:
            built = self._bundled.get(plan.entry["blake3"])
            if built is not None and built.is_file():
                os.chmod(built, mode)  # a verified member in downloads/: link it like a raw object
                plan.local = built
        if plan.local is not None:
            place_file(plan.local, dest, mode, link=True)
            if not dest.stat().st_nlink > 1:
                self._written.append(dest)  # copied (mode differs): needs its fsync
            return
        errors: list[str] = []
        for recipe in plan.recipes:
            try:
                obj = await fetcher.object(recipe["object"], int(recipe["size"]))
                dest.parent.mkdir(parents=True, exist_ok=True)
                if recipe["kind"] == "patch":
                    apply_patch(recipe["algorithm"], Path(recipe["base_path"]), obj, dest, entry["size"],
                                entry["blake3"])
                elif recipe["kind"] == "compressed":
                    decompress_file(obj, dest, entry["size"], entry["blake3"])
                else:
                    # fetcher.object() returns only downloads whose BLAKE3 it checked: link, don't copy.
                    if recipe["object"] != entry["blake3"]:
                        raise DeltaError("a raw recipe must be the target object itself")
                    os.chmod(obj, mode)
                    place_file(obj, dest, mode, link=True)
                finish_file(dest, mode)
                self._written.append(dest)
                return
            except (DownloadError, DeltaError, OSError, KeyError, ValueError) as exc:
                dest.unlink(missing_ok=True)
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise InsufficientSpace(f"disk full while staging {entry['path']}: {exc}") from None
                errors.append(f"{recipe['kind']}: {getattr(exc, 'message', None) or exc}")
                self.log(f"{entry['path']}: {recipe['kind']} recipe failed ({errors[-1]}); trying the next")
                if isinstance(exc, DeltaError):
                    fetcher.final_path(recipe["object"]).unlink(missing_ok=True)
                dest.unlink(missing_ok=True)
        raise ClientError(f"{entry['path']}: every recipe failed", detail=errors)

    async def _stage(self, fetcher: Fetcher, envelope: dict[str, Any], plans: list[_FilePlan]) -> Path:
        signed = envelope["signed"]
        staging = self.layout.staging / signed["version"]
        remove_tree(staging)
        staging.mkdir(parents=True)
        self._written: list[Path] = []
        self._bundled: dict[str, Path] = {}
        # Download the first choice of every file (each chosen bundle once) in parallel;
        # fallbacks happen per file.
        wanted = _downloads(plans)
        results = await asyncio.gather(*(fetcher.object(d, s) for d, s in wanted.items()), return_exceptions=True)
        for result in results:
            if isinstance(result, OSError) and result.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientSpace(f"disk full while downloading: {result}")
            if isinstance(result, BaseException) and not isinstance(result, (DownloadError, OSError)):
                raise result
        _crash_point("after_fetch")
        await self._apply_bundles(fetcher, plans)
        for i, plan in enumerate(plans):
            await self._materialise(fetcher, plan, staging / plan.entry["path"])
            if i == len(plans) // 2:
                _crash_point("mid_stage")
        for entry in signed["files"]:
            if entry["type"] == "symlink":
                path = staging / entry["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(entry["target"], path)
        problems = tree_problems(staging, signed["files"], hashed=True)  # each file verified as placed
        if problems:
            raise ClientError("staged tree does not match the signed manifest", detail=problems[:20])
        fsync_tree(staging, self._written)
        return staging

    async def _apply_bundles(self, fetcher: Fetcher, plans: list[_FilePlan]) -> None:
        """Rebuild the members of every chosen bundle into downloads/<blake3>, each verified.

        A member that does not verify (or a bundle that cannot be fetched or decoded)
        leaves its files to their per-file recipes; the members that verified are kept.
        """
        chosen = {p.bundle["object"]: p.bundle for p in plans if p.local is None and p.bundle is not None}
        for digest, bundle in chosen.items():
            errors: dict[str, str] = {}
            try:
                obj = await fetcher.object(digest, int(bundle["size"]))
                built = apply_bundle([Path(b) for b in bundle["base_paths"]], obj, bundle["members"],
                                     self.layout.downloads, errors=errors)
            except (DownloadError, DeltaError, OSError, KeyError, TypeError, ValueError) as exc:
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise InsufficientSpace(f"disk full while applying a bundle: {exc}") from None
                self.log(f"bundle {digest[:12]}: {getattr(exc, 'message', None) or exc}; "
                         "using per-file recipes for its files")
                if isinstance(exc, DeltaError):
                    fetcher.final_path(digest).unlink(missing_ok=True)
                continue
            self._bundled.update(built)
            for member, reason in errors.items():
                self.log(f"bundle {digest[:12]}: member {member[:12]} failed ({reason}); "
                         "using its per-file recipes")

    # ------------------------------------------------------------------ health and rollback
    def _health(self, version: str, command: str | None) -> tuple[bool, str]:
        if not command:
            return True, "no health check configured"
        try:
            proc = subprocess.run(command, shell=True, cwd=self.layout.root / "current", capture_output=True,
                                  text=True, timeout=self.config.health_timeout_s,
                                  env={**os.environ, "CAS_VERSION": version,
                                       "CAS_ROOT": str(self.layout.root)})
        except subprocess.TimeoutExpired:
            return False, f"health check timed out after {self.config.health_timeout_s}s"
        output = (proc.stdout + proc.stderr).strip()[-500:]
        return proc.returncode == 0, f"exit {proc.returncode}: {output}"

    def _intact(self, version: str) -> bool:
        manifest = self._cached_manifest(version)
        if manifest is None or not self.layout.version_dir(version).is_dir():
            return False
        problems = tree_problems(self.layout.version_dir(version), manifest["signed"]["files"])
        if problems:
            self.log(f"version {version} is damaged: {problems[0]} ({len(problems)} problems)")
        return not problems

    def _rollback_chain(self, failed: str, last_good: str | None, command: str | None,
                        steps: list[str]) -> str:
        """Roll back after ``failed`` failed its health check; returns the version now current."""
        candidates: list[str] = []
        for version in (last_good, self.layout.link("factory")):
            if version and version != failed and version not in candidates:
                candidates.append(version)
        for version in candidates:
            if not self._intact(version):
                steps.append(f"skipped {version}: damaged")
                continue
            self.layout.set_link("current", version)
            _crash_point("mid_rollback")
            ok, detail = self._health(version, command)
            steps.append(f"rolled back to {version}: health {'ok' if ok else 'failed'} ({detail})")
            self.log(steps[-1])
            if ok:
                return version
        if last_good and self.layout.version_dir(last_good).is_dir():
            self.layout.set_link("current", last_good)
        raise NeedsIntervention(
            f"{failed} failed its health check and no rollback target passed; current is "
            f"{self.layout.link('current')}: manual intervention needed", detail=steps)

    async def _report(self, fetcher: Fetcher, outcome: str, from_v: str | None, to_v: str | None,
                      detail: str) -> None:
        config = self.config
        body = {"client_id": config.client_id, "from": from_v, "to": to_v, "outcome": outcome,
                "detail": detail[:1000]}
        timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)

        headers = {"Authorization": f"Bearer {config.report_token}"} if config.report_token else {}

        async def send() -> None:
            async with httpx.AsyncClient(timeout=timeout, transport=self.transport, headers=headers) as http:
                for server in config.servers:
                    try:
                        response = await http.post(
                            f"{server.rstrip('/')}/v1/products/{config.product}/reports", json=body)
                    except httpx.HTTPError:
                        continue
                    if response.status_code < 500:
                        return

        # A report is best effort: it never holds a finished update for long.
        try:
            await asyncio.wait_for(send(), timeout=config.report_timeout_s)
        except TimeoutError:
            self.log("could not deliver the report in time; giving up on it")

    # ------------------------------------------------------------------ update
    def update(self, to: str | None = None, health_cmd: str | None = None,
               ignore_window: bool = False) -> UpdateResult:
        self.layout.lock()
        try:
            return asyncio.run(self._update(to, health_cmd, ignore_window))
        finally:
            self.layout.unlock()

    def _schedule(self) -> windows.Schedule:
        config = self.config
        return windows.schedule(config.windows, config.blackouts, config.timezone)

    def next_window(self, now: datetime | None = None) -> datetime | None:
        """When updates may next be applied (now, if inside a window)."""
        return windows.next_opening(self._schedule(), now or datetime.now(UTC))

    async def _update(self, to: str | None, health_cmd: str | None, ignore_window: bool = False) -> UpdateResult:
        started = time.monotonic()
        config = self.config
        command = health_cmd if health_cmd is not None else config.health_cmd
        async with Fetcher(config, self.layout.downloads, self.progress, self.transport) as fetcher:
            resumed = await self._resume_journal(fetcher, command)
            if resumed is not None:
                resumed.seconds = time.monotonic() - started
                return resumed
            root = await self._refresh_root(fetcher)
            current = self.layout.link("current")
            if to is None:
                channel = await self._channel(fetcher, root)
                version, digest = trust.choose_release(channel, config.client_id)
            else:
                version, digest = check_name("version", to), None
            if version == current and self._cached_manifest(version) is not None:
                return UpdateResult("up_to_date", current, version, current,
                                    seconds=time.monotonic() - started)
            schedule = self._schedule()
            now = datetime.now(UTC)
            critical = to is None and version in channel.get("critical", [])
            if not (ignore_window or critical or windows.is_open(schedule, now)):
                opening = windows.next_opening(schedule, now)
                self.log(f"{version} is available; outside the maintenance window "
                         f"(next opens {opening.isoformat() if opening else 'never'})")
                return UpdateResult("deferred", current, version, current, seconds=time.monotonic() - started,
                                    next_window=opening.isoformat() if opening else None)
            if critical and not windows.is_open(schedule, now):
                self.log(f"{version} is critical: applying it outside the maintenance window")
            envelope, recipes, used_delta = await self._target_manifest(fetcher, root, version, digest, current)
            signed = envelope["signed"]
            digest = document_digest(signed)
            journal = {"target": version, "from": current, "manifest": digest,
                       "prior_previous": self.layout.link("previous"), "started": time.time()}
            final = self.layout.version_dir(version)
            if final.is_dir() and not tree_problems(final, signed["files"]):
                # Already installed and intact (e.g. the channel went back to previous or factory):
                # never tear down a tree a rollback link may point at; just swap to it.
                write_atomic(self.layout.manifest_path(version), canonical_bytes(envelope))
                self.layout.write_json("journal.json", {**journal, "phase": "staged"})
                result = UpdateResult("updated", current, version, version, files=len(signed["files"]),
                                      files_local=sum(1 for e in signed["files"] if e["type"] == "file"),
                                      used_delta=used_delta)
                await self._swap_and_check(fetcher, version, current, command, result, journal)
                result.seconds = time.monotonic() - started
                return result
            plans = self._plan(signed["files"], recipes)
            self._preflight(plans)
            self.layout.write_json("journal.json", {**journal, "phase": "fetching"})
            _crash_point("after_journal")
            self.progress_total(sum(_downloads(plans).values()))
            try:
                staging = await self._stage(fetcher, envelope, plans)
            except BaseException:
                # Free the space of a half-built tree now (downloads are kept for resuming).
                remove_tree(self.layout.staging / version)
                self.layout.remove_json("journal.json")
                raise
            # Publish the new version directory and its manifest, then swap.
            if final.exists():
                remove_tree(final)  # an earlier, unfinished or damaged copy
            write_atomic(self.layout.manifest_path(version), canonical_bytes(envelope))
            _crash_point("after_manifest_cached")
            os.rename(staging, final)
            fsync_dir(self.layout.versions)
            _crash_point("after_stage_rename")
            self.layout.write_json("journal.json", {**journal, "phase": "staged"})
            _crash_point("after_staged_journal")
            result = UpdateResult("updated", current, version, version, files=len(plans),
                                  files_local=sum(1 for p in plans if p.local is not None),
                                  bytes_downloaded=fetcher.bytes_downloaded,
                                  bytes_full=sum(int(p.entry["size"]) for p in plans), used_delta=used_delta)
            await self._swap_and_check(fetcher, version, current, command, result, journal)
            result.seconds = time.monotonic() - started
            return result

    def _preflight(self, plans: list[_FilePlan]) -> None:
        download = sum(_downloads(plans).values())
        new_bytes = sum(int(p.entry["size"]) for p in plans if p.local is None)
        needed = int(self.config.free_space_factor * download) + new_bytes
        free = shutil.disk_usage(self.layout.root).free
        if free < needed:
            raise InsufficientSpace(f"{free:,} bytes free, {needed:,} needed "
                                    f"(2x the {download:,} to download plus {new_bytes:,} of new files)")

    async def _swap_and_check(self, fetcher: Fetcher, version: str, previous: str | None,
                              command: str | None, result: UpdateResult, journal: dict[str, Any]) -> None:
        if previous and previous != version:
            self.layout.set_link("previous", previous)
            _crash_point("after_previous_link")
        self.layout.set_link("current", version)
        _crash_point("after_current_swap")
        self.layout.write_json("journal.json", {**journal, "phase": "swapped", "started": time.time()})
        result.steps.append(f"swapped current to {version}")
        _crash_point("before_health")
        await self._after_swap(fetcher, version, previous, command, result, journal)

    async def _after_swap(self, fetcher: Fetcher, version: str, previous: str | None, command: str | None,
                          result: UpdateResult, journal: dict[str, Any]) -> None:
        ok, detail = self._health(version, command)
        result.steps.append(f"health of {version}: {'ok' if ok else 'failed'} ({detail})")
        self.log(result.steps[-1])
        if ok:
            _crash_point("after_health")
            if self.layout.link("factory") is None:
                # Only a version that passed its health check becomes the factory rollback target.
                self.layout.set_link("factory", version)
            installed = self._state().get("installed", {})
            self._save_state(installed={**installed, version: time.time()})
            self.layout.remove_json("journal.json")
            self._clean_downloads()
            await self._report(fetcher, "success", previous, version, detail)
            return
        try:
            now = self._rollback_chain(version, previous, command, result.steps)
        except NeedsIntervention as exc:
            self.layout.remove_json("journal.json")
            await self._report(fetcher, "failed", previous, version, "; ".join(result.steps))
            exc.detail = result.steps
            raise
        # Back on a good version: ``previous`` is again what it was before this update
        # (it was pointed at the version we came from, which is now current again).
        prior = journal.get("prior_previous")
        if (self.layout.link("previous") == now and prior and prior != now
                and self.layout.version_dir(prior).is_dir()):
            self.layout.set_link("previous", prior)
        _crash_point("after_rollback")
        self.layout.remove_json("journal.json")
        result.outcome, result.current = "rolled_back", now
        await self._report(fetcher, "rolled_back", previous, version, "; ".join(result.steps))

    async def _resume_journal(self, fetcher: Fetcher, command: str | None) -> UpdateResult | None:
        journal = self.layout.read_json("journal.json")
        if journal is None:
            return None
        target, previous = journal.get("target"), journal.get("from")
        current = self.layout.link("current")
        phase = journal.get("phase")
        if phase not in ("staged", "swapped") or not target or not self.layout.version_dir(target).is_dir():
            # Killed before the new tree was published: current still points at the old tree.
            # Start over; downloads under .cas/downloads are reused.
            if target:
                remove_tree(self.layout.staging / str(target))
            self.layout.remove_json("journal.json")
            self.log(f"abandoned an unfinished update to {target}; starting again")
            return None
        if phase == "swapped" and current == target:
            self.log(f"resuming the update to {target} after its swap: checking health")
            result = UpdateResult("updated", previous, target, target, steps=["resumed after swap"])
            await self._after_swap(fetcher, target, previous, command, result, journal)
            return result
        # The new tree is complete (published by rename after verification and fsync), but
        # the swap did not happen or finish, or a rollback was interrupted: (re)do the swap
        # and the health check from the start.  The tree is re-verified first.
        if not self._intact(target):
            self.layout.remove_json("journal.json")
            self.log(f"the published tree of {target} is damaged; starting again")
            return None
        result = UpdateResult("updated", previous, target, target, steps=[f"resumed ({phase})"])
        await self._swap_and_check(fetcher, target, previous, command, result, journal)
        return result

    def _clean_downloads(self) -> None:
        for path in self.layout.downloads.iterdir():
            path.unlink(missing_ok=True)
        remove_tree(self.layout.staging)
        self.layout.staging.mkdir(exist_ok=True)

    # ------------------------------------------------------------------ other commands
    def check(self) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            async with Fetcher(self.config, self.layout.downloads, transport=self.transport) as fetcher:
                root = await self._refresh_root(fetcher, persist=False)
                channel = await self._channel(fetcher, root, persist=False)
                version, digest = trust.choose_release(channel, self.config.client_id)
                return {"channel": channel["channel"], "sequence": channel["sequence"], "release": version,
                        "manifest": digest, "expires": channel["expires"],
                        "current": self.layout.link("current"),
                        "update_pending": version != self.layout.link("current")}
        return asyncio.run(run())

    def status(self, online: bool = True) -> dict[str, Any]:
        config = self.config
        data: dict[str, Any] = {"root": str(self.layout.root), "product": config.product,
                                "channel": config.channel, "client_id": config.client_id,
                                "current": self.layout.link("current"), "previous": self.layout.link("previous"),
                                "factory": self.layout.link("factory"), "installed": self.layout.installed(),
                                "journal": self.layout.read_json("journal.json")}
        if not self._schedule().unrestricted:
            opening = self.next_window()
            data["next_window"] = opening.isoformat() if opening else None
            data["window_open"] = bool(opening and opening <= datetime.now(UTC))
        if online:
            try:
                check = self.check()
                data.update(channel_release=check["release"], update_pending=check["update_pending"],
                            channel_sequence=check["sequence"])
            except (ClientError, DocumentError) as exc:
                data["channel_error"] = getattr(exc, "message", str(exc))
        return data

    def verify(self, version: str | None = None) -> dict[str, Any]:
        version = version or self.layout.link("current")
        if version is None:
            raise ClientError("nothing is installed")
        manifest = self._cached_manifest(version)
        if manifest is None:
            raise ClientError(f"no manifest cached for {version}")
        problems = tree_problems(self.layout.version_dir(version), manifest["signed"]["files"])
        return {"version": version, "ok": not problems, "problems": problems}

    def rollback(self, to: str = "previous", health_cmd: str | None = None) -> dict[str, Any]:
        self.layout.lock()
        try:
            current = self.layout.link("current")
            target = self.layout.link(to) if to in ("previous", "factory") else check_name("version", to)
            if target is None:
                raise ClientError(f"there is no {to} version to roll back to")
            if not self._intact(target):
                raise ClientError(f"{target} is damaged or not installed; refusing to roll back to it")
            self.layout.set_link("current", target)
            command = health_cmd if health_cmd is not None else self.config.health_cmd
            ok, detail = self._health(target, command)
            if not ok:
                if current:
                    self.layout.set_link("current", current)
                raise HealthCheckFailed(f"{target} failed its health check ({detail}); current stays {current}")
            return {"from": current, "to": target, "health": detail}
        finally:
            self.layout.unlock()

    def gc(self) -> dict[str, Any]:
        self.layout.lock()
        try:
            keep = {self.layout.link(n) for n in ("current", "previous", "factory")} - {None}
            journal = self.layout.read_json("journal.json")
            if journal:
                keep.add(journal.get("target"))
            removed = []
            for version in self.layout.installed():
                if version not in keep:
                    self.layout.remove_version(version)
                    removed.append(version)
            if not journal:
                self._clean_downloads()
            return {"removed": removed, "kept": sorted(k for k in keep if k)}
        finally:
            self.layout.unlock()
