"""Timestamps on the wire: one format (``YYYY-MM-DDTHH:MM:SSZ``, UTC), one parser."""
from __future__ import annotations

from datetime import UTC, datetime

from .errors import DocumentError


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_epoch(ts: float) -> str:
    """Seconds since the epoch (``time.time()``, a clock's ``now()``) in the wire format, to the second."""
    return format_time(datetime.fromtimestamp(ts, UTC))


def parse_time(text: object) -> datetime:
    if not isinstance(text, str):
        raise DocumentError("timestamp must be a string")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise DocumentError(f"bad timestamp {text!r} (want YYYY-MM-DDTHH:MM:SSZ)") from exc
