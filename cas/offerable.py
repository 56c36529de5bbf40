"""Which release a channel may offer: the one rule.

A channel takes releases at or above its ``min_status`` (testing or released),
and never a deprecated one.  Setting a channel, moving channels off a release
being deprecated, and starting a rollout all ask ``check_offerable``, and
``check_trusted``: the release's signatures must meet the current root's
release role, or no client would accept it (after a rotation without
``--keep-old``, until ``cas release resign``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from casformat.canonical import parse_json
from casformat.errors import DocumentError
from casformat.signatures import verify

from .errors import Conflict
from .metadata import STATUS_RANK, Release

if TYPE_CHECKING:
    from .repo import Repo


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


def check_trusted(repo: Repo, release: Release, /, **detail: object) -> None:
    """Raise Conflict ``release_untrusted`` unless ``release``'s manifest is signed as the
    current root's release role requires (skipped without a root or enforcement)."""
    if not repo.config.enforce_signatures:
        return
    root = repo.root()
    if root is None:
        return
    try:
        verify(parse_json(release.manifest), root.role("release"))
    except DocumentError as exc:
        raise Conflict(f"{release.product} {release.version} is not signed as root version {root.version} "
                       f"requires for releases ({exc.message}), so no client would accept it; re-sign it "
                       f"with the current release key: cas release resign {release.product} "
                       f"{release.version} (or cas release resign --all)",
                       detail={"root": root.version, **detail}, code="release_untrusted") from None
