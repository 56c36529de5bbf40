"""Prometheus counters for the server, one registry per app (no globals)."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("cas_http_requests", "HTTP requests", ["method", "endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("cas_http_request_seconds", "Time to the response start",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2, 10))
        self.ingested_bytes = Counter("cas_ingested_bytes", "Bytes of new objects stored",
                                      registry=self.registry)
        self.objects_ingested = Counter("cas_objects_ingested", "New objects stored", registry=self.registry)
        self.channel_resigned = Counter("cas_channel_resigned", "Channel documents re-signed before expiry",
                                        registry=self.registry)
        self.uploads_expired = Counter("cas_uploads_expired", "Abandoned uploads removed",
                                       registry=self.registry)
        self.delta_plans_computed = Gauge("cas_delta_plans_computed",
                                          "Release pairs planned by this process (a cached plan is not counted)",
                                          registry=self.registry)
        self.up = Gauge("cas_up", "1 while the server runs", registry=self.registry)
        self.small_object_cache_bytes = Gauge("cas_small_object_cache_bytes",
                                              "Bytes of small objects the fast path keeps in memory",
                                              registry=self.registry)
        self.up.set(1)

    def ingested(self, size: int) -> None:
        if size:
            self.ingested_bytes.inc(size)
            self.objects_ingested.inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every HTTP request by method, endpoint name and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                endpoint = getattr(scope.get("endpoint"), "__name__", "none")
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            endpoint = getattr(scope.get("endpoint"), "__name__", "none")
            self.metrics.requests.labels(scope["method"], endpoint, str(status)).inc()
