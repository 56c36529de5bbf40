"""Sliding-window rate limits per key (client id, client address), per process.

Memory is bounded by ``max_keys`` (``rate_limit_max_keys``): a key whose events have
all left the window is forgotten, and when the table is full the key touched longest
ago that is *not* at its limit makes room.  A flood of distinct keys therefore never
resets the limit of an exhausted key (the old ``clear()`` of every key did: a flood
of made-up ids lifted the auth-failure limit for everyone); only when every kept key
is exhausted does the oldest of them go.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

MAX_KEYS = 10_000   # the default of rate_limit_max_keys
_SCAN = 64          # keys looked at, oldest first, for one that is not exhausted


class SlidingWindow:
    """At most ``limit`` events per key in any ``window`` seconds, for at most ``max_keys`` keys."""

    def __init__(self, limit: int, window: float = 60.0, max_keys: int = MAX_KEYS) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max(1, max_keys)
        self._events: OrderedDict[str, deque[float]] = OrderedDict()  # least recently touched first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._events)

    def _trimmed(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and now - events[0] > self.window:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def exhausted(self, key: str) -> bool:
        """Whether ``key`` is at its limit (creates nothing; an exhausted key counts as touched)."""
        with self._lock:
            events = self._trimmed(key, time.monotonic())
            if events is None or len(events) < self.limit:
                return False
            self._events.move_to_end(key)
            return True

    def _make_room(self, now: float) -> None:
        # Keys whose every event has left the window go first (the oldest are at the front).
        while self._events:
            oldest = next(iter(self._events))
            if self._trimmed(oldest, now) is not None:
                break
        if len(self._events) < self.max_keys:
            return
        victim = next(iter(self._events))
        for i, (key, events) in enumerate(self._events.items()):
            if i >= _SCAN:
                break
            if len(events) < self.limit:
                victim = key
                break
        del self._events[victim]

    def hit(self, key: str) -> None:
        """Count one event for ``key``."""
        now = time.monotonic()
        with self._lock:
            events = self._trimmed(key, now)
            if events is None:
                if len(self._events) >= self.max_keys:
                    self._make_room(now)
                events = self._events[key] = deque()
            self._events.move_to_end(key)
            events.append(now)

    def allow(self, key: str) -> bool:
        """Count an event and say whether it was within the limit."""
        if self.exhausted(key):
            return False
        self.hit(key)
        return True
