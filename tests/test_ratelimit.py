"""Rate limits keep their memory bounded without resetting anyone's limit (issue 14, item 7).

The old limiter kept an entry for every key ever checked (even ``exhausted`` made one)
and, past its key limit, cleared every key: a flood of made-up ids or addresses lifted
the auth-failure limit of an attacker that had exhausted it."""
from __future__ import annotations

from cas.http import ratelimit
from cas.http.ratelimit import SlidingWindow


def test_a_flood_of_distinct_keys_does_not_reset_an_exhausted_key() -> None:
    window = SlidingWindow(3)
    for _ in range(3):
        window.hit("attacker")
    assert window.exhausted("attacker")
    for i in range(ratelimit.MAX_KEYS + 50):
        window.hit(f"made-up-{i}")
    assert window.exhausted("attacker"), "the flood reset the exhausted key's limit"
    assert not window.allow("attacker")
    assert len(window) <= ratelimit.MAX_KEYS


def test_keys_kept_stay_bounded_and_checks_create_none() -> None:
    window = SlidingWindow(2, max_keys=100)
    for i in range(5000):
        assert not window.exhausted(f"checked-{i}")
    assert len(window) == 0, "exhausted() must not keep an entry per key checked"
    for i in range(5000):
        assert window.allow(f"client-{i}")
    assert len(window) <= 100


def test_expired_keys_are_forgotten_first(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    now = [1000.0]
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: now[0])
    window = SlidingWindow(2, window=60, max_keys=3)
    for key in ("a", "b"):
        window.hit(key)
        window.hit(key)
    now[0] += 61                    # a and b have left the window
    window.hit("c")
    window.hit("c")                 # c is exhausted
    window.hit("d")
    window.hit("e")                 # full: a and b expired, so nothing live goes
    assert window.exhausted("c") and len(window) == 3
    window.hit("f")                 # full of live keys: d (oldest not exhausted) makes room
    assert window.exhausted("c") and len(window) == 3
