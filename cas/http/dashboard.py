"""The operator dashboard over HTTP: JSON views and the static page.

``GET /`` serves ``static/dashboard.html`` (which loads ``/static/dashboard.js`` and
``/static/dashboard.css``: no build step, nothing from a CDN).  The page keeps the
token the operator enters in ``sessionStorage`` and only renders these views:

    GET /v1/admin/dashboard/overview            products, releases, dedup, lifecycle, store stats
    GET /v1/admin/dashboard/deltas[?product=P]  bases, bytes per recipe kind, savings, builds
    GET /v1/admin/dashboard/channels[?product=P] channels, rollouts, reports per stage and over time
    GET /v1/admin/dashboard/health              store, last fsck, GC, queues, request/error rates

Every view needs a token of any scope (read, publish or admin) even when anonymous
reads are allowed: the views show rollout health and build errors that the public
read API does not.  Actions are not here: the page calls the existing endpoints
(release status: publish; channels and rollouts: admin), which answer 403 to a
token without the scope, and shows their message.
"""
from __future__ import annotations

from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from ..dashboard import views
from ..dashboard.figures import Figures
from ..dashboard.rates import RequestRates
from ..errors import NotFound, Unauthorized
from ..release_lookup import check_release_names
from .auth import caller

STATIC = Path(__file__).parent / "static"
PREFIX = "/v1/admin/dashboard"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class DashboardState:
    """Per-app caches and the request-rate samples (one per server process)."""

    def __init__(self, releases_cached: int, cache_bytes: int) -> None:
        self.figures = Figures(releases_cached=releases_cached, cache_bytes=cache_bytes)
        self.rates = RequestRates()


def _state(request: Request) -> DashboardState:
    state = getattr(request.app.state, "dashboard", None)
    if state is None:
        state = request.app.state.dashboard = DashboardState(request.app.state.config.dashboard_cache_releases,
                                                             request.app.state.config.dashboard_cache_bytes)
    return state


def _scope(request: Request) -> str:
    scope = caller(request)
    if scope is None:
        raise Unauthorized("the dashboard needs a token (read, publish or admin)", code="token_required")
    return scope


def _answer(data: dict, scope: str) -> Response:
    return JSONResponse({**data, "scope": scope}, headers={"Cache-Control": "no-store"})


def _product(request: Request) -> str | None:
    product = request.query_params.get("product")
    if product is not None:
        check_release_names(product, "0")
        if not request.app.state.repo.meta.product_exists(product):
            raise NotFound(f"unknown product {product!r}", code="unknown_product")
    return product


async def dashboard_overview(request: Request) -> Response:
    scope = _scope(request)
    data = await run_in_threadpool(views.overview, request.app.state.repo, _state(request).figures)
    return _answer(data, scope)


async def dashboard_deltas(request: Request) -> Response:
    scope = _scope(request)
    product = await run_in_threadpool(_product, request)
    data = await run_in_threadpool(views.deltas, request.app.state.repo, _state(request).figures, product)
    return _answer(data, scope)


async def dashboard_channels(request: Request) -> Response:
    scope = _scope(request)
    product = await run_in_threadpool(_product, request)
    data = await run_in_threadpool(views.channels_view, request.app.state.repo, request.app.state.clock, product)
    return _answer(data, scope)


async def dashboard_health(request: Request) -> Response:
    scope = _scope(request)
    state = _state(request)
    data = await run_in_threadpool(views.health, request.app.state.repo, state.figures, state.rates,
                                   request.app.state.metrics)
    return _answer(data, scope)


async def dashboard_page(request: Request) -> Response:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


class _StaticFiles(StaticFiles):
    """StaticFiles with the page's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-cache"
        return response


def routes() -> list:
    return [
        Route("/", dashboard_page, methods=["GET"]),
        Route(PREFIX + "/overview", dashboard_overview, methods=["GET"]),
        Route(PREFIX + "/deltas", dashboard_deltas, methods=["GET"]),
        Route(PREFIX + "/channels", dashboard_channels, methods=["GET"]),
        Route(PREFIX + "/health", dashboard_health, methods=["GET"]),
        Mount("/static", app=_StaticFiles(directory=STATIC), name="static"),
    ]
