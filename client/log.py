"""The log callback the client's steps write to: one line per event (a fallback, a rotation,
a health result); ``cas-client`` prints them to stderr, a library user passes its own."""
from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]
