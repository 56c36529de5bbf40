"""Sliding-window rate limits per key (client id, client address), per process."""
from __future__ import annotations

import time
from collections import defaultdict, deque

MAX_KEYS = 100_000


class SlidingWindow:
    """At most ``limit`` events per key in any ``window`` seconds."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._events: dict[str, deque[float]] = defaultdict(deque)

    def _trim(self, key: str) -> deque[float]:
        now = time.monotonic()
        events = self._events[key]
        while events and now - events[0] > self.window:
            events.popleft()
        return events

    def exhausted(self, key: str) -> bool:
        return len(self._trim(key)) >= self.limit

    def hit(self, key: str) -> None:
        if len(self._events) > MAX_KEYS:
            self._events.clear()  # bounded memory under a flood of distinct keys
        self._trim(key).append(time.monotonic())

    def allow(self, key: str) -> bool:
        """Count an event and say whether it was within the limit."""
        if self.exhausted(key):
            return False
        self.hit(key)
        return True
