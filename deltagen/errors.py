"""The exceptions deltagen raises: one small hierarchy, each naming the promise that broke.

Every class carries a stable ``code`` that callers map to a decision: the client tries
the next recipe on any of them except ``BudgetExceeded`` (a builder-side condition).
"""
from __future__ import annotations


class DeltaError(Exception):
    """Base class of every deltagen failure: a stable ``code``, a ``message`` and a ``detail``."""

    code = "delta_error"

    def __init__(self, message: str = "", detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class CorruptPatch(DeltaError):
    """The patch or compressed object is malformed, truncated or inconsistent."""

    code = "corrupt_patch"


class SizeExceeded(DeltaError):
    """An input or output would pass a size limit (declared size, cap, bomb)."""

    code = "size_exceeded"


class SizeMismatch(DeltaError):
    """The output does not have the size that was declared or expected."""

    code = "size_mismatch"


class DigestMismatch(DeltaError):
    """The output's BLAKE3 differs from the expected one (e.g. wrong base file)."""

    code = "digest_mismatch"


class BudgetExceeded(DeltaError):
    """Building took longer than the time budget; the attempt was killed."""

    code = "budget_exceeded"


class BuildCancelled(DeltaError):
    """The build's worker was killed because its caller is stopping (``budget.cancel_builds``)."""

    code = "build_cancelled"


class UnknownAlgorithm(DeltaError):
    """The algorithm name is not one deltagen knows."""

    code = "unknown_algorithm"
