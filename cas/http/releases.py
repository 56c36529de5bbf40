"""Products, releases, manifests, lifecycle, channels and roots over HTTP."""
from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from casformat.canonical import canonical_bytes
from deltagen.digests import blake3_bytes

from .. import channels, deltas, gc, releases
from ..errors import BadRequest, Invalid, NotFound
from .auth import require
from .bodies import json_body, read_body
from .conditional import document_response
from .numbers import decimal

IMMUTABLE = "public, max-age=31536000, immutable"


def _document(request: Request, body: bytes, etag: str, cache: str, compressible: bool = False) -> Response:
    return document_response(request.headers, body, etag, cache, compressible)


async def list_products(request: Request) -> Response:
    require(request, "read")
    return JSONResponse({"products": await run_in_threadpool(request.app.state.repo.meta.list_products)})


async def list_releases(request: Request) -> Response:
    require(request, "read")
    repo = request.app.state.repo
    product = request.path_params["product"]
    if not await run_in_threadpool(repo.meta.product_exists, product):
        raise NotFound(f"unknown product {product!r}", code="unknown_product")
    rows = await run_in_threadpool(repo.meta.list_releases, product)
    chans = await run_in_threadpool(repo.meta.list_channels, product)
    return JSONResponse({"product": product, "releases": [r.summary() for r in rows],
                         "channels": {c.channel: {"release": c.release, "sequence": c.sequence,
                                                  "min_status": c.min_status} for c in chans}})


async def get_manifest(request: Request) -> Response:
    require(request, "read")
    release = await run_in_threadpool(releases.get_release, request.app.state.repo,
                                      request.path_params["product"], request.path_params["version"])
    cache = IMMUTABLE if release.status in ("released", "deprecated") else "no-cache"
    return _document(request, release.manifest, f'"{release.manifest_digest}"', cache, compressible=True)


async def get_release_info(request: Request) -> Response:
    require(request, "read")
    repo = request.app.state.repo
    p, v = request.path_params["product"], request.path_params["version"]
    release = await run_in_threadpool(releases.get_release, repo, p, v)
    history = await run_in_threadpool(repo.meta.release_history, p, v)
    return JSONResponse({"product": p, **release.summary(), "history": history})


async def put_release(request: Request) -> Response:
    actor = require(request, "publish")
    repo = request.app.state.repo
    body = await read_body(request, repo.config.max_document_bytes)
    result = await run_in_threadpool(releases.publish, repo, request.path_params["product"],
                                     request.path_params["version"], body, actor)
    return JSONResponse({"product": result.release.product, **result.release.summary(),
                         "created": result.created}, status_code=201 if result.created else 200,
                        headers={"ETag": f'"{result.release.manifest_digest}"'})


async def post_status(request: Request) -> Response:
    actor = require(request, "publish")
    body = await json_body(request)
    status = body.get("status")
    if not isinstance(status, str):
        raise Invalid('send {"status": "testing|released|deprecated|draft", "reason": "..."}', code="bad_status")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 1000:
        raise Invalid("reason must be a string of at most 1000 characters", code="bad_request")
    move_to = body.get("move_channel_to")
    if move_to is not None and not isinstance(move_to, str):
        raise Invalid("move_channel_to must be a version", code="bad_request")
    if move_to is not None:
        # Moving a channel signs a new channel document: an admin act however it is reached (D1).
        actor = require(request, "admin")
    release = await run_in_threadpool(releases.move_status, request.app.state.repo,
                                      request.path_params["product"], request.path_params["version"],
                                      status, actor, reason, move_to)
    return JSONResponse({"product": release.product, **release.summary()})


async def get_history(request: Request) -> Response:
    return await get_release_info(request)


async def get_channel(request: Request) -> Response:
    require(request, "read")
    state = request.app.state
    ch = await run_in_threadpool(channels.get_channel, state.repo, request.path_params["product"],
                                 request.path_params["channel"])
    return _document(request, ch.document, ch.etag,
                     f"public, max-age={state.config.channel_max_age_seconds}")


async def put_channel(request: Request) -> Response:
    require(request, "admin")
    body = await json_body(request)
    version = body.get("release")
    if not isinstance(version, str):
        raise Invalid('send {"release": "<version>", "min_status": "released|testing"}', code="bad_request")
    ch = await run_in_threadpool(channels.set_channel, request.app.state.repo, request.path_params["product"],
                                 request.path_params["channel"], version, body.get("min_status"))
    return JSONResponse({"product": ch.product, "channel": ch.channel, "release": ch.release,
                         "sequence": ch.sequence, "min_status": ch.min_status},
                        headers={"ETag": ch.etag})


async def get_policy(request: Request) -> Response:
    require(request, "read")
    data = await run_in_threadpool(channels.policy_of, request.app.state.repo, request.path_params["product"],
                                   request.path_params["channel"])
    return JSONResponse(data)


async def put_policy(request: Request) -> Response:
    actor = require(request, "admin")
    body = await json_body(request)
    if not isinstance(body, dict) or "rule" not in body or not (body["rule"] is None or isinstance(body["rule"], str)):
        raise Invalid('send {"rule": "any|no-downgrade|same-major"} or {"rule": null} to remove it',
                      code="bad_request")
    data = await run_in_threadpool(channels.set_policy, request.app.state.repo, request.path_params["product"],
                                   request.path_params["channel"], body["rule"], actor)
    return JSONResponse(data)


async def get_root(request: Request) -> Response:
    require(request, "read")
    meta = request.app.state.repo.meta
    version_param = request.path_params.get("n")
    version = decimal(version_param) if version_param is not None else None
    if version_param is not None and version is None:
        raise NotFound("root versions are positive integers", code="unknown_root")
    row = await run_in_threadpool(meta.get_root, version)
    if row is None:
        raise NotFound("no such root document", code="unknown_root")
    version, document = row
    cache = IMMUTABLE if version_param else "no-cache"
    return _document(request, document, f'"{blake3_bytes(document)}"', cache)


async def get_delta(request: Request) -> Response:
    require(request, "read")
    repo = request.app.state.repo
    p, v = request.path_params["product"], request.path_params["version"]
    base_version = request.query_params.get("from")
    if base_version is None:
        raise BadRequest("name the base release: ?from=<version> (or ?from= for a fresh install)",
                         code="missing_base")
    target = await run_in_threadpool(releases.get_release, repo, p, v)
    base = None  # ?from= (empty): from nothing, every file upserted with its compressed form
    if base_version:
        try:
            base = await run_in_threadpool(releases.get_release, repo, p, base_version)
        except NotFound:
            raise NotFound(f"no release {base_version!r} of {p!r} to make a delta from; use the full manifest",
                           code="unknown_base") from None
    document = await run_in_threadpool(deltas.delta_document, repo, target, base)
    body = canonical_bytes(document)
    final = document["complete"] and target.status in ("released", "deprecated")
    return _document(request, body, f'"{blake3_bytes(body)}"', IMMUTABLE if final else "no-cache",
                     compressible=True)


async def deltas_status(request: Request) -> Response:
    require(request, "admin")
    return JSONResponse(await run_in_threadpool(request.app.state.repo.meta.jobs_summary))


async def deltas_build(request: Request) -> Response:
    require(request, "admin")
    body = await json_body(request)
    repo = request.app.state.repo
    product, version = body.get("product"), body.get("version")
    if not isinstance(product, str) or not isinstance(version, str):
        raise Invalid('send {"product": P, "version": V, "from": [versions] (optional)}', code="bad_request")
    target = await run_in_threadpool(releases.get_release, repo, product, version)
    bases = body.get("from")
    if bases is None:
        queued = await run_in_threadpool(deltas.queue_release, repo, target)
    else:
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise Invalid('"from" must be a list of versions', code="bad_request")
        queued = 0
        for b in bases:
            base = await run_in_threadpool(releases.get_release, repo, product, b)
            queued += await run_in_threadpool(deltas.queue_pair, repo, base, target)
    return JSONResponse({"queued": queued}, status_code=202)


async def post_critical(request: Request) -> Response:
    actor = require(request, "admin")
    body = await json_body(request)
    critical, reason = body.get("critical"), body.get("reason", "")
    if not isinstance(critical, bool) or not isinstance(reason, str) or len(reason) > 1000:
        raise Invalid('send {"critical": true|false, "reason": "..."}', code="bad_request")
    release = await run_in_threadpool(channels.mark_critical, request.app.state.repo,
                                      request.path_params["product"], request.path_params["version"],
                                      critical, actor, reason)
    return JSONResponse({"product": release.product, **release.summary()})


async def delete_release(request: Request) -> Response:
    actor = require(request, "admin")
    reason = request.query_params.get("reason", "")
    await run_in_threadpool(gc.delete_release, request.app.state.repo, request.path_params["product"],
                            request.path_params["version"], actor, reason)
    return Response(status_code=204)


async def run_gc(request: Request) -> Response:
    actor = require(request, "admin")
    body = await json_body(request)
    dry_run, grace, retain = body.get("dry_run", False), body.get("grace_seconds", 6 * 3600), body.get("retain")
    if (not isinstance(dry_run, bool) or not isinstance(grace, int) or isinstance(grace, bool)
            or (retain is not None and (not isinstance(retain, int) or isinstance(retain, bool)))):
        raise Invalid('send {"dry_run": bool, "grace_seconds": int, "retain": int|null}', code="bad_request")
    report = await run_in_threadpool(gc.collect, request.app.state.repo, grace, dry_run, retain, actor)
    return JSONResponse(report.to_dict())


async def gc_status(request: Request) -> Response:
    require(request, "admin")
    repo = request.app.state.repo
    last = await run_in_threadpool(repo.meta.last_gc_run)
    tombs = await run_in_threadpool(repo.meta.tombstones)
    return JSONResponse({"last_run": last, "tombstones": len(tombs),
                         "deleting": sum(1 for state, _ in tombs.values() if state == "deleting")})
