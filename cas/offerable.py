"""Which release a channel may offer: the one rule.

A channel takes releases at or above its ``min_status`` (testing or released),
and never a deprecated one.  Setting a channel, moving channels off a release
being deprecated, and starting a rollout all ask ``check_offerable``.
"""
from __future__ import annotations

from .errors import Conflict
from .metadata import STATUS_RANK, Release


def is_offerable(status: str, min_status: str) -> bool:
    """Whether a release in ``status`` may be offered on a channel taking ``min_status`` or later."""
    return status != "deprecated" and STATUS_RANK[status] >= STATUS_RANK[min_status]


def check_offerable(release: Release, channel: str, min_status: str, /, **detail: object) -> None:
    """Raise Conflict ``status_too_low`` unless ``release`` may be offered on ``channel``
    (``detail`` adds to the error's detail)."""
    if not is_offerable(release.status, min_status):
        raise Conflict(f"{release.product} {release.version} is {release.status}; channel {channel} takes "
                       f"{min_status} or later",
                       detail={"status": release.status, "min_status": min_status, **detail},
                       code="status_too_low")
