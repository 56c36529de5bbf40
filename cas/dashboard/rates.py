"""Request and error rates for the health view, sampled from the server's ``cas_http_requests`` counter."""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

# (method, endpoint, status) -> requests counted so far
Sample = dict[tuple[str, str, str], float]


def _kind(status: str) -> str:
    return "5xx" if status.startswith("5") else "4xx" if status.startswith("4") else "ok"


def _totals(sample: Sample) -> dict[str, float]:
    t = {"requests": 0.0, "4xx": 0.0, "5xx": 0.0}
    for (_, _, status), value in sample.items():
        t["requests"] += value
        kind = _kind(status)
        if kind != "ok":
            t[kind] += value
    return t


class RequestRates:
    """Request and error rates from the server's ``cas_http_requests`` counter.

    The counter only grows; a rate needs two samples.  Each health read takes one
    (at most one a second) and keeps ``keep_seconds`` of them; a rate is the change
    against the oldest sample within ``window_seconds`` (null until there are two)."""

    def __init__(self, window_seconds: float = 60.0, keep_seconds: float = 600.0) -> None:
        self.started = time.time()
        self.window = window_seconds
        self.keep = keep_seconds
        self._samples: deque[tuple[float, Sample]] = deque()
        self._lock = threading.Lock()

    @staticmethod
    def read(metrics: Any) -> Sample:
        """The counter's current values (``metrics`` is the app's ``cas.http.metrics.Metrics``)."""
        out: Sample = {}
        for family in metrics.requests.collect():
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[(s.labels["method"], s.labels["endpoint"], s.labels["status"])] = s.value
        return out

    def _reference(self, now: float, current: Sample) -> tuple[float, Sample] | None:
        """Keep ``current`` as a sample; the one to compare it with, if any."""
        with self._lock:
            while self._samples and now - self._samples[0][0] > self.keep:
                self._samples.popleft()
            reference = next((s for s in self._samples if now - s[0] <= self.window and now - s[0] >= 1.0), None)
            if reference is None and self._samples and now - self._samples[-1][0] >= 1.0:
                reference = self._samples[-1]
            if not self._samples or now - self._samples[-1][0] >= 1.0:
                self._samples.append((now, current))
        return reference

    def snapshot(self, metrics: Any) -> dict[str, Any]:
        """Totals, error ratios, the rate over the window and the same per endpoint."""
        now = time.monotonic()
        current = self.read(metrics)
        reference = self._reference(now, current)
        uptime = max(time.time() - self.started, 1e-9)
        now_totals = _totals(current)
        rate = None
        if reference is not None:
            dt = now - reference[0]
            before = _totals(reference[1])
            rate = {"window_seconds": round(dt, 1),
                    "requests_per_second": round((now_totals["requests"] - before["requests"]) / dt, 3),
                    "client_errors_per_second": round((now_totals["4xx"] - before["4xx"]) / dt, 3),
                    "server_errors_per_second": round((now_totals["5xx"] - before["5xx"]) / dt, 3)}
        endpoints: dict[str, dict[str, Any]] = {}
        for (_, endpoint, status), value in current.items():
            e = endpoints.setdefault(endpoint, {"endpoint": endpoint, "requests": 0, "4xx": 0, "5xx": 0,
                                                "statuses": {}})
            e["requests"] += int(value)
            kind = _kind(status)
            if kind != "ok":
                e[kind] += int(value)
            e["statuses"][status] = e["statuses"].get(status, 0) + int(value)
        if reference is not None:
            dt = now - reference[0]
            for e in endpoints.values():
                earlier = sum(v for k, v in reference[1].items() if k[1] == e["endpoint"])
                e["requests_per_second"] = round((e["requests"] - earlier) / dt, 3)
        requests = int(now_totals["requests"])
        return {"total": requests, "client_errors": int(now_totals["4xx"]),
                "server_errors": int(now_totals["5xx"]),
                "error_ratio": round((now_totals["4xx"] + now_totals["5xx"]) / requests, 4) if requests else None,
                "server_error_ratio": round(now_totals["5xx"] / requests, 4) if requests else None,
                "uptime_seconds": int(uptime),
                "average_per_second": round(requests / uptime, 3), "rate": rate,
                "endpoints": sorted(endpoints.values(), key=lambda e: (-e["requests"], e["endpoint"]))}
