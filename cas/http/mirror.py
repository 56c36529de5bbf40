"""The read-only mirror server (``mirror_of = URL``): what ``cas mirror sync`` copied, verbatim.

Documents are served byte-identical from ``STORE/mirror/docs`` with the ETag and
Cache-Control the upstream gave them; objects from the object store as usual.
A mirror has no channel key and never re-signs, runs no delta worker, no
rollouts and no webhooks; every write answers 403 ``read_only_mirror``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from casformat.errors import DocumentError

from ..errors import BadRequest, Forbidden, NotFound
from ..mirror import docs_dir, mirror_dir, relpath_for
from ..repo import Repo
from . import objects
from .auth import require
from .conditional import document_response
from .metrics import Metrics
from .numbers import decimal
from .stack import build_app


class MirrorDocuments:
    """The documents tree and the headers kept with each document (state.json, re-read when it changes)."""

    def __init__(self, store: Path) -> None:
        self.root = docs_dir(store)
        self.state_path = mirror_dir(store) / "state.json"
        self._stamp: tuple[int, int] | None = None
        self._headers: dict[str, Any] = {}

    def headers(self, rel: str) -> dict[str, str]:
        try:
            st = self.state_path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return {}
        if stamp != self._stamp:
            self._headers = json.loads(self.state_path.read_text()).get("documents", {})
            self._stamp = stamp
        return self._headers.get(rel, {})

    def read(self, rel: str) -> tuple[bytes, dict[str, str]] | None:
        try:
            body = (self.root / rel).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return body, self.headers(rel)


def _relpath(kind: str, product: str = "", name: str = "", base: str | None = None) -> str:
    try:
        return relpath_for(kind, product, name, base)
    except (DocumentError, ValueError):
        raise NotFound("not mirrored", code="not_mirrored") from None


async def _serve(request: Request, rel: str, missing_code: str, compressible: bool = False) -> Response:
    require(request, "read")
    found = await run_in_threadpool(request.app.state.documents.read, rel)
    if found is None:
        raise NotFound(f"{request.url.path} is not on this mirror", code=missing_code)
    body, meta = found
    return document_response(request.headers, body, meta.get("etag", ""), meta.get("cache_control", "no-cache"),
                             compressible)


async def root(request: Request) -> Response:
    n = request.path_params.get("n")
    if n is not None and decimal(n) is None:
        raise NotFound("root versions are positive integers", code="unknown_root")
    return await _serve(request, _relpath("roots", name=n) if n else _relpath("root"), "unknown_root")


async def products(request: Request) -> Response:
    return await _serve(request, _relpath("products"), "not_mirrored")


async def releases(request: Request) -> Response:
    return await _serve(request, _relpath("releases", request.path_params["product"]), "unknown_product")


async def manifest(request: Request) -> Response:
    p = request.path_params
    return await _serve(request, _relpath("manifest", p["product"], p["version"]), "unknown_release",
                        compressible=True)


async def delta(request: Request) -> Response:
    p = request.path_params
    base = request.query_params.get("from")
    if base is None:
        raise BadRequest("name the base release: ?from=<version> (or ?from= for a fresh install)",
                         code="missing_base")
    return await _serve(request, _relpath("delta", p["product"], p["version"], base), "unknown_base",
                        compressible=True)


async def channel(request: Request) -> Response:
    p = request.path_params
    return await _serve(request, _relpath("channel", p["product"], p["channel"]), "unknown_channel")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "mirror_of": request.app.state.config.mirror_of,
                         "root": (request.app.state.documents.root / "v1" / "root.json").exists()})


async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, headers={"Content-Type": content_type})


async def read_only(request: Request) -> Response:
    raise Forbidden(f"this server is a read-only mirror of {request.app.state.config.mirror_of}; "
                    "publish to the upstream", code="read_only_mirror")


def create_mirror_app(repo: Repo) -> Starlette:
    metrics_ = Metrics()
    p = "/v1/products/{product}"
    writes = ["POST", "PUT", "PATCH", "DELETE"]
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/root.json", root, methods=["GET"]),
        Route("/v1/roots/{n}.json", root, methods=["GET"]),
        Route("/v1/products", products, methods=["GET"]),
        Route(p + "/releases", releases, methods=["GET"]),
        Route(p + "/releases/{version}/manifest", manifest, methods=["GET"]),
        Route(p + "/releases/{version}/delta", delta, methods=["GET"]),
        Route(p + "/channels/{channel}", channel, methods=["GET"]),
        Route("/v1/objects/{digest}", objects.get_object, methods=["GET", "HEAD"]),
        Route("/{path:path}", read_only, methods=writes),
    ]
    app = build_app(routes, repo, metrics_)
    app.state.documents = MirrorDocuments(Path(repo.config.store))
    return app
