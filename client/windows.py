"""Maintenance windows and blackout periods: when a client may apply an update.

Pure functions over datetimes.  A window is ``"<days> <HH:MM>-<HH:MM>"`` with days
``Mon-Fri``, ``Sat,Sun``, ``daily`` (a window may cross midnight, e.g. ``22:00-02:00``
belongs to the day it starts on); a blackout is ``"<start>/<end>"`` in ISO dates or
datetimes (``2026-12-20/2027-01-05`` or with ``THH:MM``).  Times are in the group's
time zone (IANA name).  No windows means always open; a blackout always wins.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ClientError

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WINDOW = re.compile(r"^\s*([A-Za-z,\-]+)\s+(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
SEARCH_DAYS = 400  # how far ahead next_opening looks (a year of blackouts, then some)


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: time
    end: time

    def spans(self, day: date, tz: ZoneInfo) -> tuple[datetime, datetime] | None:
        if day.weekday() not in self.days:
            return None
        begin = datetime.combine(day, self.start, tz)
        finish = datetime.combine(day if self.end > self.start else day + timedelta(days=1), self.end, tz)
        return begin, finish


@dataclass(frozen=True)
class Schedule:
    tz: ZoneInfo
    windows: tuple[Window, ...]
    blackouts: tuple[tuple[datetime, datetime], ...]

    @property
    def unrestricted(self) -> bool:
        return not self.windows and not self.blackouts


def _days(text: str) -> frozenset[int]:
    text = text.lower()
    if text in ("daily", "all", "*"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            if a[:3] not in DAYS or b[:3] not in DAYS:
                raise ClientError(f"unknown day in {text!r}")
            i, j = DAYS.index(a[:3]), DAYS.index(b[:3])
            out.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
        elif part[:3] in DAYS:
            out.add(DAYS.index(part[:3]))
        else:
            raise ClientError(f"unknown day {part!r} (mon..sun, ranges like mon-fri, or daily)")
    return frozenset(out)


def parse_window(text: str) -> Window:
    match = _WINDOW.match(text)
    if not match:
        raise ClientError(f"bad window {text!r}: want '<days> HH:MM-HH:MM', e.g. 'mon-fri 02:00-04:00'")
    h1, m1, h2, m2 = (int(match[i]) for i in range(2, 6))
    if not (0 <= h1 < 24 and 0 <= h2 < 24 and m1 < 60 and m2 < 60) or (h1, m1) == (h2, m2):
        raise ClientError(f"bad window times in {text!r}")
    return Window(_days(match[1]), time(h1, m1), time(h2, m2))


def _moment(text: str, tz: ZoneInfo) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ClientError(f"bad date or time {text!r} (ISO 8601)") from exc
    return value.replace(tzinfo=tz) if value.tzinfo is None else value


def parse_blackout(text: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    if "/" not in text:
        raise ClientError(f"bad blackout {text!r}: want START/END")
    a, b = text.split("/", 1)
    start, end = _moment(a, tz), _moment(b, tz)
    if end <= start:
        raise ClientError(f"blackout {text!r} ends before it starts")
    return start, end


def schedule(windows: list[str] | tuple[str, ...], blackouts: list[str] | tuple[str, ...],
             tz_name: str = "UTC") -> Schedule:
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ClientError(f"unknown time zone {tz_name!r}") from exc
    return Schedule(tz, tuple(parse_window(w) for w in windows),
                    tuple(parse_blackout(b, tz) for b in blackouts))


def _blacked_out(s: Schedule, moment: datetime) -> datetime | None:
    """The end of the blackout ``moment`` falls in, or None."""
    for start, end in s.blackouts:
        if start <= moment < end:
            return end
    return None


def _window_at(s: Schedule, moment: datetime) -> tuple[datetime, datetime] | None:
    local = moment.astimezone(s.tz)
    for day in (local.date() - timedelta(days=1), local.date()):
        for w in s.windows:
            span = w.spans(day, s.tz)
            if span and span[0] <= local < span[1]:
                return span
    return None


def is_open(s: Schedule, moment: datetime) -> bool:
    if _blacked_out(s, moment) is not None:
        return False
    return not s.windows or _window_at(s, moment) is not None


def next_opening(s: Schedule, moment: datetime) -> datetime | None:
    """The first moment at or after ``moment`` when updates may be applied."""
    candidate = moment
    for _ in range(SEARCH_DAYS * max(1, len(s.windows)) + len(s.blackouts) + 2):
        end = _blacked_out(s, candidate)
        if end is not None:
            candidate = end
            continue
        if not s.windows or _window_at(s, candidate) is not None:
            return candidate.astimezone(UTC)
        starts = []
        local = candidate.astimezone(s.tz)
        for offset in range(8):
            day = local.date() + timedelta(days=offset)
            for w in s.windows:
                span = w.spans(day, s.tz)
                if span and span[0] > local:
                    starts.append(span[0])
        if not starts:
            return None
        candidate = min(starts)
    return None
