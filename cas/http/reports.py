"""Client reports: the outcome of each update, validated and rate-limited."""
from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import releases, rollouts
from ..errors import Invalid, TooManyRequests, Unauthorized
from .auth import caller, require
from .bodies import json_body

OUTCOMES = ("success", "failed", "rolled_back")
log = logging.getLogger("cas.http")


async def post_report(request: Request) -> Response:
    require(request, "read")
    repo = request.app.state.repo
    if repo.config.reports_require_token and caller(request) is None:
        raise Unauthorized("reports need a read (or higher) token", code="token_required")
    product = request.path_params["product"]
    body = await json_body(request, repo.config.max_report_bytes, max_depth=4,
                           not_object=Invalid("a report is a JSON object", code="bad_report"))
    client_id, outcome = body.get("client_id"), body.get("outcome")
    from_v, to_v, detail = body.get("from"), body.get("to"), body.get("detail", "")
    problems = []
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= 128:
        problems.append("client_id must be a string of 1..128 characters")
    if outcome not in OUTCOMES:
        problems.append(f"outcome must be one of {OUTCOMES}")
    if not isinstance(to_v, str) or (from_v is not None and not isinstance(from_v, str)):
        problems.append("to must be a version, from a version or null")
    if not isinstance(detail, str) or len(detail) > 1000:
        problems.append("detail must be a string of at most 1000 characters")
    if problems:
        raise Invalid("invalid report", detail=problems, code="bad_report")
    assert isinstance(to_v, str)  # checked above (for the type checker)
    await run_in_threadpool(releases.get_release, repo, product, to_v)
    if from_v is not None:
        await run_in_threadpool(releases.get_release, repo, product, from_v)
    if not await run_in_threadpool(repo.meta.was_offered, product, to_v):
        raise Invalid(f"{product} {to_v} was never offered on a channel or in a rollout", code="not_offered")
    if not request.app.state.report_limiter.allow(client_id):
        raise TooManyRequests("too many reports from this client; try later")
    clock = request.app.state.clock
    await run_in_threadpool(repo.meta.add_report, product, client_id, from_v, to_v, outcome, detail, clock.now())
    try:  # the health gate reacts to each report; the background job catches up if this fails
        await run_in_threadpool(rollouts.evaluate, repo, clock, product)
    except Exception:
        log.exception("rollout evaluation after a report failed")
    return JSONResponse({"accepted": True}, status_code=202)


async def list_reports(request: Request) -> Response:
    require(request, "admin")
    repo = request.app.state.repo
    product = request.path_params["product"]
    rows = await run_in_threadpool(repo.meta.reports, product, request.query_params.get("to"))
    return JSONResponse({"product": product, "reports": rows})
