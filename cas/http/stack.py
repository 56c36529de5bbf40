"""The stack every deltacas ASGI app shares: the fast path, metrics and the error handlers."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from ..errors import CasError
from ..repo import Repo
from .errors import handle_cas_error, handle_http_exception, handle_outage, handle_unexpected, outage_classes
from .fastpath import FastPath
from .metrics import Metrics, MetricsMiddleware


def build_app(routes: Sequence[BaseRoute], repo: Repo, metrics: Metrics, lifespan: Any = None) -> Starlette:
    app = Starlette(
        routes=routes,
        middleware=[Middleware(FastPath, repo=repo, metrics=metrics),
                    Middleware(MetricsMiddleware, metrics=metrics)],
        exception_handlers={CasError: handle_cas_error, HTTPException: handle_http_exception,
                            **{cls: handle_outage for cls in outage_classes()},
                            Exception: handle_unexpected},
        lifespan=lifespan,
    )
    app.state.repo = repo
    app.state.config = repo.config
    app.state.metrics = metrics
    return app
