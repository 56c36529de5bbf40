"""Prometheus metrics for the server, one registry per app (no globals).

Counters and histograms of this process (requests, ingest, re-signing...) plus
``StateCollector``: gauges of the shared state read from the metadata and the object
store at each scrape (delta queue, rollouts, webhooks, uploads, store bytes), so every
replica reports the same figures.  docs/grafana-dashboard.json charts them.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..metadata.deltajobs import JOB_STATES
from ..metadata.webhooks import DELIVERY_STATES
from ..repo import Repo
from ..rollouts import Rollout

log = logging.getLogger("cas.http")
OUTCOMES = ("success", "failed", "rolled_back")


class StateCollector(Collector):
    """Gauges read from the metadata (and the object store's usage) when ``/metrics`` is scraped.

    A metadata outage does not fail the scrape: ``cas_state_scrape_ok`` is 0 and the
    state gauges are left out; the process's own counters are still exposed."""

    def __init__(self, repo: Repo, usage: Callable[[], tuple[int, int]]) -> None:
        self.repo = repo
        self.usage = usage

    def collect(self) -> Iterator[Metric]:
        ok = GaugeMetricFamily("cas_state_scrape_ok", "1 when the state gauges below could be read")
        try:
            state = self.repo.meta.operational_gauges()
            objects, stored = self.usage()
        except Exception:  # an outage must not hide the request counters
            log.exception("reading the state gauges for /metrics failed")
            ok.add_metric([], 0)
            yield ok
            return
        ok.add_metric([], 1)
        yield ok
        jobs = GaugeMetricFamily("cas_delta_jobs", "Delta build jobs by state", labels=["state"])
        for s in JOB_STATES:
            jobs.add_metric([s], state["jobs"].get(s, 0))
        yield jobs
        seconds = CounterMetricFamily("cas_delta_build_seconds", "Seconds spent building the recorded recipes "
                                      "(bundles as algorithm=bundle)", labels=["algorithm"])
        built = CounterMetricFamily("cas_delta_recipes_built", "Recorded recipes by algorithm", labels=["algorithm"])
        for algorithm, (count, total) in sorted(state["builds"].items()):
            seconds.add_metric([algorithm], total)
            built.add_metric([algorithm], count)
        yield seconds
        yield built
        rollouts = GaugeMetricFamily("cas_rollouts", "Rollouts by state", labels=["state"])
        for s, n in sorted(state["rollout_states"].items()):
            rollouts.add_metric([s], n)
        yield rollouts
        labels = ["product", "channel", "strategy", "release"]
        stage = GaugeMetricFamily("cas_rollout_stage", "Stage (or batch) index of a running or halted rollout",
                                  labels=labels)
        percent = GaugeMetricFamily("cas_rollout_percent", "Share of clients offered the rollout's release",
                                    labels=labels)
        halted = GaugeMetricFamily("cas_rollout_halted", "1 while the rollout is halted", labels=labels)
        reports = GaugeMetricFamily("cas_rollout_reports", "Reports for the rollout's release since it started",
                                    labels=[*labels, "outcome"])
        for row in state["active_rollouts"]:
            r = Rollout.from_row(row)
            values = [r.product, r.channel, r.strategy, r.release]
            stage.add_metric(values, r.stage)
            percent.add_metric(values, r.percent)
            halted.add_metric(values, 1 if r.state == "halted" else 0)
            for outcome in OUTCOMES:
                reports.add_metric([*values, outcome], row["outcomes"].get(outcome, 0))
        yield from (stage, percent, halted, reports)
        hooks = GaugeMetricFamily("cas_webhook_deliveries", "Webhook outbox rows by state "
                                  "(pending is the outbox depth; failed gave up)", labels=["state"])
        for s in DELIVERY_STATES:
            hooks.add_metric([s], state["webhooks"].get(s, 0))
        yield hooks
        yield GaugeMetricFamily("cas_webhook_retrying", "Pending webhook deliveries that failed at least once",
                                value=state["webhooks_retrying"])
        yield GaugeMetricFamily("cas_uploads_in_progress", "Resumable uploads in progress", value=state["uploads"])
        yield GaugeMetricFamily("cas_upload_bytes_in_progress", "Bytes held by uploads in progress",
                                value=state["upload_bytes"])
        yield GaugeMetricFamily("cas_store_objects", "Objects in the object store", value=objects)
        yield GaugeMetricFamily("cas_store_bytes", "Bytes stored in the object store", value=stored)


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

    def watch_state(self, repo: Repo, usage: Callable[[], tuple[int, int]]) -> None:
        """Expose ``StateCollector``'s gauges of ``repo`` too."""
        self.registry.register(StateCollector(repo, usage))

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
