"""Conditional requests: the one place ``If-None-Match`` is compared."""
from __future__ import annotations


def etag_matches(header: str | None, etag: str) -> bool:
    """``If-None-Match`` uses weak comparison: W/"x" matches "x"."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == bare for candidate in header.split(","))
