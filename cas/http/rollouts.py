"""Rollouts, pins and webhooks over HTTP (admin): /v1/products/{p}/channels/{c}/rollout[/action], .../pins."""
from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import pins, rollouts
from ..errors import Invalid
from .auth import require
from .bodies import json_body

START_FIELDS = {"release", "strategy", "stages", "stage_duration", "max_failure_rate", "min_reports",
                "auto_abort", "clients", "batch_size", "max_failures", "max_concurrent", "salt", "reason"}


def _reason(body: dict[str, Any]) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 1000:
        raise Invalid("reason must be a string of at most 1000 characters", code="bad_request")
    return reason


async def get_rollout(request: Request) -> Response:
    require(request, "admin")
    state = request.app.state
    data = await run_in_threadpool(rollouts.status, state.repo, state.clock, request.path_params["product"],
                                   request.path_params["channel"])
    return JSONResponse(data)


async def start_rollout(request: Request) -> Response:
    actor = require(request, "admin")
    state = request.app.state
    body = await json_body(request)
    unknown = set(body) - START_FIELDS
    if unknown:
        raise Invalid(f"unknown fields {sorted(unknown)}", detail=sorted(START_FIELDS), code="bad_rollout")
    version = body.get("release")
    if not isinstance(version, str):
        raise Invalid('send {"release": "<version>", "stages": [1, 5, 25, 100], ...}', code="bad_rollout")
    options = {k: v for k, v in body.items() if k not in ("release", "reason")}
    r = await run_in_threadpool(lambda: rollouts.start(
        state.repo, state.clock, request.path_params["product"], request.path_params["channel"], version, actor,
        reason=_reason(body), **options))
    return JSONResponse(await run_in_threadpool(rollouts.describe, state.repo, state.clock, r), status_code=201)


async def rollout_action(request: Request) -> Response:
    actor = require(request, "admin")
    state = request.app.state
    action = request.path_params["action"]
    if action not in rollouts.ACTIONS:
        raise Invalid(f"unknown action {action!r}; one of {', '.join(rollouts.ACTIONS)}", code="bad_action")
    body = await json_body(request, blank={})
    r = await run_in_threadpool(rollouts.act, state.repo, state.clock, request.path_params["product"],
                                request.path_params["channel"], action, actor, _reason(body))
    return JSONResponse(await run_in_threadpool(rollouts.describe, state.repo, state.clock, r))


async def tick(request: Request) -> Response:
    require(request, "admin")
    state = request.app.state
    product = request.query_params.get("product")
    taken = await run_in_threadpool(rollouts.evaluate, state.repo, state.clock, product)
    return JSONResponse({"steps": taken})


async def list_webhooks(request: Request) -> Response:
    require(request, "admin")
    return JSONResponse(await run_in_threadpool(request.app.state.repo.meta.webhook_summary))


PIN_FIELDS = {"release", "clients", "reason"}
UNPIN_FIELDS = {"clients", "all", "reason"}


async def get_pins(request: Request) -> Response:
    require(request, "admin")
    return JSONResponse(await run_in_threadpool(pins.status, request.app.state.repo, request.path_params["product"],
                                                request.path_params["channel"]))


async def post_pins(request: Request) -> Response:
    """Pin client ids to a release on a channel (per-node rollback, cas/pins.py)."""
    actor = require(request, "admin")
    body = await json_body(request)
    unknown = set(body) - PIN_FIELDS
    if unknown or not isinstance(body.get("release"), str):
        raise Invalid('send {"release": "<version>", "clients": ["<client id>", ...], "reason": "..."}',
                      detail={"unknown": sorted(unknown)} if unknown else None, code="bad_pin")
    data = await run_in_threadpool(pins.pin, request.app.state.repo, request.path_params["product"],
                                   request.path_params["channel"], body["release"], body.get("clients"), actor,
                                   _reason(body))
    return JSONResponse(data)


async def remove_pins(request: Request) -> Response:
    """Remove pins: ``{"clients": [...]}`` or ``{"all": true}``."""
    actor = require(request, "admin")
    body = await json_body(request)
    unknown = set(body) - UNPIN_FIELDS
    every = body.get("all", False)
    if unknown or not isinstance(every, bool) or (not every and "clients" not in body):
        raise Invalid('send {"clients": ["<client id>", ...]} or {"all": true}',
                      detail={"unknown": sorted(unknown)} if unknown else None, code="bad_pin")
    data = await run_in_threadpool(lambda: pins.unpin(
        request.app.state.repo, request.path_params["product"], request.path_params["channel"],
        body.get("clients"), actor, _reason(body), every=every))
    return JSONResponse(data)
