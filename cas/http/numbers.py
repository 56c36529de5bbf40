"""Numbers a caller writes in a path, a query or a header: ASCII decimal, bounded before ``int()``.

``str.isdigit()`` accepts ``"²"`` and other digits ``int()`` refuses, Python refuses
to convert more than 4300 digits, and SQLite stores at most a signed 64-bit integer:
each of these was a 500 ``internal``.  Handlers call ``decimal`` and answer their own
4xx when it returns None.
"""
from __future__ import annotations

from ..errors import TooLarge

MAX_INTEGER = (1 << 63) - 1   # the largest value SQLite and PostgreSQL BIGINT store
_MAX_DIGITS = len(str(MAX_INTEGER))


def byte_count(text: str, limit: int, what: str, bad: Exception) -> int:
    """A byte count (a size or a length) a caller wrote: ``bad`` when it is not a decimal,
    413 when it is one above ``limit`` (however many digits), else its value."""
    value = decimal(text)
    if value is None:
        if text.isascii() and text.isdigit():  # a well-formed number too large to store
            raise TooLarge(f"{what} of {len(text)} digits of bytes exceeds the limit of {limit}")
        raise bad
    if value > limit:
        raise TooLarge(f"{what} of {value} bytes exceeds the limit of {limit}")
    return value


def decimal(text: str | None, maximum: int = MAX_INTEGER) -> int | None:
    """``text`` as a non-negative integer at most ``maximum``; None when it is anything else."""
    if not text or len(text) > _MAX_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= maximum else None
