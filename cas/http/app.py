"""The ASGI application: routes, error handlers, metrics and background jobs."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import channels, webhooks
from .. import rollouts as rollout_gate
from ..clock import clock_from_env
from ..dashboard.figures import Figures
from ..repo import Repo
from ..uploads import open_uploads
from . import dashboard, objects, releases, reports, rollouts
from .deltaworker import DeltaWorkerProcess
from .metrics import Metrics
from .ratelimit import SlidingWindow
from .stack import build_app
from .statictree import StaticTreeWatcher, Trigger

log = logging.getLogger("cas.http")


async def healthz(request: Request) -> Response:
    repo: Repo = request.app.state.repo
    await run_in_threadpool(repo.meta.schema_version)
    return JSONResponse({"status": "ok", "root": repo.meta.get_root() is not None})


async def metrics(request: Request) -> Response:
    # the state gauges query the metadata: off the event loop
    body, content_type = await run_in_threadpool(request.app.state.metrics.exposition)
    return Response(body, headers={"Content-Type": content_type})


async def _every(seconds: float, job, name: str) -> None:
    while True:
        try:
            await run_in_threadpool(job)
        except Exception:  # a failing sweep must not stop the server
            log.exception("background job %s failed", name)
        await asyncio.sleep(seconds)


async def _supervise(builder: DeltaWorkerProcess, seconds: float = 5.0) -> None:
    """Restart the delta worker when it exits, from the event loop's own thread (see
    ``cas/http/deltaworker.py``: a child started from a pool thread would die with it)."""
    while True:
        await asyncio.sleep(seconds)
        try:
            builder.supervise()
        except Exception:
            log.exception("background job delta-worker failed")


def create_app(repo: Repo) -> Starlette:
    if repo.config.mirror_of:  # read-only mirror: serves what `cas mirror sync` copied (cas/http/mirror.py)
        from .mirror import create_mirror_app
        return create_mirror_app(repo)
    metrics_ = Metrics()
    metrics_.delta_plans_computed.set_function(lambda: repo.plans.computed)
    uploads = open_uploads(repo)

    def resign() -> None:
        metrics_.channel_resigned.inc(len(channels.resign_expiring(repo)))

    clock = clock_from_env()
    # The static document tree for nginx (cas/static.py), when configured.
    static_tree = StaticTreeWatcher(repo) if repo.config.static_tree else None

    def gate() -> None:
        rollout_gate.evaluate(repo, clock)

    def deliver() -> None:
        webhooks.deliver_due(repo, clock)

    def sweep() -> None:
        metrics_.uploads_expired.inc(uploads.expire())
        repo.objects.sweep_temp()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        builder = DeltaWorkerProcess(repo) if repo.config.delta_builder else None
        if builder is not None:
            builder.start()
        tasks = [asyncio.create_task(_every(repo.config.resign_interval_seconds, resign, "resign")),
                 *([asyncio.create_task(_supervise(builder))] if builder else []),
                 asyncio.create_task(_every(min(repo.config.upload_ttl_seconds / 4, 3600), sweep, "sweep")),
                 asyncio.create_task(_every(repo.config.rollout_tick_seconds, gate, "rollouts")),
                 asyncio.create_task(_every(repo.config.webhook_poll_seconds, deliver, "webhooks")),
                 *([asyncio.create_task(static_tree.run())] if static_tree else [])]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if builder is not None:
                builder.stop()

    p = "/v1/products/{product}"
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/root.json", releases.get_root, methods=["GET"]),
        Route("/v1/roots/{n}.json", releases.get_root, methods=["GET"]),
        Route("/v1/products", releases.list_products, methods=["GET"]),
        Route(p + "/releases", releases.list_releases, methods=["GET"]),
        Route(p + "/releases/{version}", releases.put_release, methods=["PUT"]),
        Route(p + "/releases/{version}", releases.get_release_info, methods=["GET"]),
        Route(p + "/releases/{version}/manifest", releases.get_manifest, methods=["GET"]),
        Route(p + "/releases/{version}/status", releases.post_status, methods=["POST"]),
        Route(p + "/releases/{version}/history", releases.get_history, methods=["GET"]),
        Route(p + "/releases/{version}/delta", releases.get_delta, methods=["GET"]),
        Route(p + "/releases/{version}/critical", releases.post_critical, methods=["POST"]),
        Route(p + "/releases/{version}", releases.delete_release, methods=["DELETE"]),
        Route("/v1/admin/gc", releases.run_gc, methods=["POST"]),
        Route("/v1/admin/gc", releases.gc_status, methods=["GET"]),
        Route(p + "/reports", reports.post_report, methods=["POST"]),
        Route(p + "/reports", reports.list_reports, methods=["GET"]),
        Route("/v1/admin/deltas", releases.deltas_status, methods=["GET"]),
        Route("/v1/admin/deltas/build", releases.deltas_build, methods=["POST"]),
        Route(p + "/channels/{channel}", releases.get_channel, methods=["GET"]),
        Route(p + "/channels/{channel}", releases.put_channel, methods=["PUT"]),
        Route(p + "/channels/{channel}/policy", releases.get_policy, methods=["GET"]),
        Route(p + "/channels/{channel}/policy", releases.put_policy, methods=["PUT"]),
        Route(p + "/channels/{channel}/rollout", rollouts.get_rollout, methods=["GET"]),
        Route(p + "/channels/{channel}/rollout", rollouts.start_rollout, methods=["POST"]),
        Route(p + "/channels/{channel}/rollout/{action}", rollouts.rollout_action, methods=["POST"]),
        Route(p + "/channels/{channel}/pins", rollouts.get_pins, methods=["GET"]),
        Route(p + "/channels/{channel}/pins", rollouts.post_pins, methods=["POST"]),
        Route(p + "/channels/{channel}/pins/remove", rollouts.remove_pins, methods=["POST"]),
        Route("/v1/admin/rollouts/tick", rollouts.tick, methods=["POST"]),
        Route("/v1/admin/webhooks", rollouts.list_webhooks, methods=["GET"]),
        Route("/v1/objects/missing", objects.missing_objects, methods=["POST"]),
        Route("/v1/objects/{digest}", objects.get_object, methods=["GET", "HEAD"]),
        Route("/v1/objects/{digest}", objects.put_object, methods=["PUT"]),
        Route("/v1/uploads", objects.start_upload, methods=["POST"]),
        Route("/v1/uploads/{upload_id}", objects.upload_offset, methods=["HEAD", "GET"]),
        Route("/v1/uploads/{upload_id}", objects.append_upload, methods=["PATCH"]),
        Route("/v1/uploads/{upload_id}", objects.complete_upload, methods=["PUT"]),
        Route("/v1/uploads/{upload_id}", objects.cancel_upload, methods=["DELETE"]),
        *dashboard.routes(),  # operator page at / and /v1/admin/dashboard/* (cas/http/dashboard.py)
    ]
    app = build_app(routes, repo, metrics_, lifespan)
    if static_tree is not None:
        app.add_middleware(Trigger, watcher=static_tree)
    app.state.static_tree = static_tree
    app.state.uploads = uploads
    app.state.clock = clock
    app.state.report_limiter = SlidingWindow(repo.config.reports_per_client_per_minute,
                                             max_keys=repo.config.rate_limit_max_keys)
    app.state.report_address_limiter = SlidingWindow(repo.config.reports_per_address_per_minute,
                                                     max_keys=repo.config.rate_limit_max_keys)
    app.state.auth_failures = SlidingWindow(repo.config.auth_failures_per_minute,
                                            max_keys=repo.config.rate_limit_max_keys)
    app.state.dashboard = dashboard.DashboardState(repo.config.dashboard_cache_releases,
                                                   repo.config.dashboard_cache_bytes)
    # the store walk behind cas_store_bytes, cached: a scrape every few seconds must not list a bucket each time
    usage = Figures(usage_seconds=repo.config.metrics_store_usage_seconds)
    metrics_.watch_state(repo, lambda: usage.usage(repo))
    return app
