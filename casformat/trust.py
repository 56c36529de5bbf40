"""What the client trusts, and the checks every document passes before use.

Pure functions over documents and the client's trusted state: a channel
document must be signed by the root's channel role, unexpired, for this
product and channel, and not older than the highest sequence accepted (a
replay of the same sequence must be the same document).  A manifest must hash
to the digest the channel names and be signed by the release role.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping

from deltagen.digests import blake3_bytes

from .canonical import document_digest
from .errors import DocumentError, RollbackAttack
from .manifests import check_channel, check_manifest
from .roots import Root, rotated_roles
from .signatures import check_not_expired, split_envelope, verify

if TYPE_CHECKING:
    from .cms import CmsPolicy


@dataclass(frozen=True)
class ChannelState:
    sequence: int = 0
    manifest: str | None = None


def accept_channel(root: Root, envelope: Any, product: str, channel: str, seen: ChannelState,
                   now: datetime | None = None) -> dict[str, Any]:
    signed = verify(envelope, root.role("channel"))
    check_channel(signed)
    if signed["product"] != product or signed["channel"] != channel:
        raise DocumentError(f"channel document is for {signed['product']}/{signed['channel']}, "
                            f"not {product}/{channel}")
    check_not_expired(signed, now)
    if signed["sequence"] < seen.sequence:
        raise RollbackAttack(f"channel sequence {signed['sequence']} is older than {seen.sequence} already seen")
    if signed["sequence"] == seen.sequence and seen.manifest is not None and signed["manifest"] != seen.manifest:
        # Same sequence, other release: two different documents for one sequence (equivocation,
        # or a replay dressed up as current).  The module contract promised this check.
        raise RollbackAttack(f"channel sequence {signed['sequence']} was already accepted naming manifest "
                             f"{seen.manifest[:16]}, now {str(signed['manifest'])[:16]}")
    return signed


def accept_manifest(root: Root, envelope: Any, expected_digest: str,
                    cms_policy: CmsPolicy | None = None) -> dict[str, Any]:
    signed, _ = split_envelope(envelope)
    digest = document_digest(signed)
    if digest != expected_digest:
        raise DocumentError(f"manifest digest {digest[:16]} does not match the signed {expected_digest[:16]}")
    verify(envelope, root.role("release"))
    if cms_policy is not None:  # enterprise CMS signature (casformat/cms.py), fail closed
        from .cms import verify_manifest
        verify_manifest(envelope, cms_policy)
    return check_manifest(signed)


def in_cohort(salt: str, client_id: str, percent: int) -> bool:
    """The contract's rollout rule, computed by the client."""
    return int(blake3_bytes((salt + client_id).encode("utf-8"))[:8], 16) % 10000 < percent * 100


def choose_release(signed: Mapping[str, Any], client_id: str) -> tuple[str, str]:
    """(version, manifest digest) this client should run according to the channel: its pin
    (per-node rollback) first, then the rollout's cohort or allow-list, then the channel's release."""
    for pin in signed.get("pins", ()):
        if client_id in pin["clients"]:
            return pin["release"], pin["manifest"]
    rollout = signed.get("rollout")
    if rollout and (in_cohort(rollout["salt"], client_id, rollout["percent"])
                    or client_id in rollout.get("clients", ())):  # batches: an explicit allow-list
        return rollout["release"], rollout["manifest"]
    return signed["release"], signed["manifest"]


def after_root_update(seen: ChannelState, old: Root, new: Root) -> ChannelState:
    """What the client still trusts of its channel after moving from root ``old`` to ``new``:
    nothing, when the new root rotated the channel role's keys (fast-forward recovery,
    ``roots.rotated_roles``); else the same."""
    return ChannelState() if "channel" in rotated_roles(old, new) else seen
