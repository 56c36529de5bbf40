"""Client reports: the outcome of each update, validated and rate-limited."""
from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import releases, rollouts
from ..errors import Invalid, TooManyRequests, Unauthorized
from .auth import caller, require, token_fingerprint
from .bodies import json_body

OUTCOMES = ("success", "failed", "rolled_back")
log = logging.getLogger("cas.http")


async def post_report(request: Request) -> Response:
    """Store a report; the rollout gate counts it only from an authenticated reporter (any
    token, a fleet's ``report`` token being the usual one), at most
    ``reports_gate_ids_per_source`` client ids per token and source address in the window."""
    repo = request.app.state.repo
    config = repo.config
    scope = caller(request)  # a bad token is 401 here
    if scope is None and (config.reports_require_token or not config.anonymous_read):
        raise Unauthorized("reports need a token (report, read or higher)", code="token_required")
    address = request.client.host if request.client else "unknown"
    # Limited per address before the body is read or the database asked: an invalid or
    # never-offered report costs the sender its place in the window too.
    if not request.app.state.report_address_limiter.allow(address):
        raise TooManyRequests("too many reports from this address; try later")
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
    reporter = f"{token_fingerprint(request) or 'anonymous'}@{address}"
    eligible = scope is not None or config.reports_gate_anonymous
    counted = await run_in_threadpool(
        repo.meta.add_report, product, client_id, from_v, to_v, outcome, detail, clock.now(), reporter,
        eligible, config.reports_gate_ids_per_source, config.reports_gate_window_seconds)
    if counted:  # the health gate reacts to each counted report; the background job catches up
        try:
            await run_in_threadpool(rollouts.evaluate, repo, clock, product)
        except Exception:
            log.exception("rollout evaluation after a report failed")
    return JSONResponse({"accepted": True, "counted": counted}, status_code=202)


async def list_reports(request: Request) -> Response:
    require(request, "admin")
    repo = request.app.state.repo
    product = request.path_params["product"]
    rows = await run_in_threadpool(repo.meta.reports, product, request.query_params.get("to"))
    return JSONResponse({"product": product, "reports": rows})
