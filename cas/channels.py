"""Channel documents: small, signed, short-lived pointers to a release.

Every change makes a new document with the next ``sequence``, signed by the
server's channel key.  Documents are re-signed (new sequence, new expiry)
before they expire by ``resign_expiring``.
"""
from __future__ import annotations

import time
from typing import Any

from casformat.canonical import canonical_bytes, parse_json
from casformat.compat import MAX_DEPRECATED, RULES
from casformat.errors import DocumentError
from casformat.paths import check_name
from casformat.times import format_epoch
from deltagen.digests import blake3_bytes

from .errors import Conflict, Invalid, NotFound
from .keys import channel_signing_keys
from .metadata import Channel, Release, StaleWrite
from .metadata.policies import PRODUCT_WIDE
from .offerable import check_offerable, check_trusted
from .release_lookup import get_release
from .repo import Repo
from .signing import sign

ATTEMPTS = 5


def document_pins(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``pins`` of a channel document from pin rows: one entry per pinned release, clients sorted."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        grouped.setdefault((row["release"], row["manifest"]), []).append(row["client_id"])
    return [{"release": release, "manifest": manifest, "clients": sorted(ids)}
            for (release, manifest), ids in sorted(grouped.items())]


def _document(repo: Repo, product: str, channel: str, release: str, manifest: str, sequence: int,
              rollout: dict[str, Any] | None = None,
              pins: list[dict[str, Any]] | None = None) -> tuple[bytes, float]:
    # Keys are read at each signing so that a rotation by `cas keys rotate` applies at once.
    signing_keys = channel_signing_keys(repo.config.store)
    if not signing_keys:
        raise Invalid("the server has no channel key (run `cas keys init`)", code="no_key")
    expires = time.time() + repo.config.channel_ttl_seconds
    signed = {"schema": 1, "product": product, "channel": channel, "sequence": sequence,
              "expires": format_epoch(expires),
              "release": release, "manifest": manifest, "rollout": rollout}
    # Optional (a departure from the contract, docs/http-api.md): the named versions are
    # critical and clients apply them outside their maintenance windows.
    critical = repo.meta.critical_versions(product, [release] + ([rollout["release"]] if rollout else []))
    if critical:
        signed["critical"] = critical
    # Optional (docs/http-api.md, casformat/compat.py): the version compatibility policy, read
    # at each signing so that every re-sign keeps it; signed, so a mirror cannot strip it.
    policy = repo.meta.channel_policy(product, channel)
    if policy is not None:
        signed["policy"] = {"rule": policy["rule"],
                            "deprecated": repo.meta.deprecated_versions(product, MAX_DEPRECATED)}
    # Optional (per-node rollback, cas/pins.py): client ids pinned to a release.  Read at each
    # signing (after the caller read the channel's sequence), so every re-sign keeps them;
    # ``pins`` given: the pins a change is about to write with this document.
    pinned = document_pins(repo.meta.channel_pins(product, channel) if pins is None else pins)
    if pinned:
        signed["pins"] = pinned
    return canonical_bytes(sign(signed, signing_keys)), expires


def _write(repo: Repo, product: str, channel: str, release: str, manifest: str, sequence: int,
           min_status: str, rollout: dict[str, Any] | None = None) -> Channel:
    document, expires = _document(repo, product, channel, release, manifest, sequence, rollout)
    ch = Channel(product, channel, release, sequence, min_status, document,
                 f'"{blake3_bytes(document)}"', expires, time.time())
    repo.meta.put_channel(ch)
    return ch


def prepare(repo: Repo, product: str, channel: str, release: str, manifest: str, sequence: int,
            min_status: str, rollout: dict[str, Any] | None = None,
            pins: list[dict[str, Any]] | None = None) -> Channel:
    """A signed channel document not yet written (cas/rollouts.py and cas/pins.py write it with
    their own state; ``pins``: the pin rows it lists, default the stored ones)."""
    document, expires = _document(repo, product, channel, release, manifest, sequence, rollout, pins)
    return Channel(product, channel, release, sequence, min_status, document,
                   f'"{blake3_bytes(document)}"', expires, time.time())


def set_channel(repo: Repo, product: str, channel: str, version: str,
                min_status: str | None = None) -> Channel:
    try:
        check_name("channel", channel)
    except DocumentError as exc:
        raise Invalid(exc.message, code="invalid_path") from None
    if min_status is not None and min_status not in ("testing", "released"):
        raise Invalid("min_status must be testing or released", code="bad_status")
    release = get_release(repo, product, version)
    check_trusted(repo, release)
    if repo.meta.latest_rollout(product, channel, active_only=True) is not None:
        raise Conflict(f"channel {product}/{channel} has a rollout in progress; promote or abort it first "
                       f"(cas rollout status {product} {channel})", code="rollout_active")
    for _ in range(ATTEMPTS):
        current = repo.meta.get_channel(product, channel)
        wanted = min_status or (current.min_status if current else "released")
        check_offerable(release, channel, wanted)
        sequence = (current.sequence if current else 0) + 1
        try:
            return _write(repo, product, channel, version, release.manifest_digest, sequence, wanted)
        except StaleWrite:
            continue
    raise Conflict(f"channel {product}/{channel} is changing concurrently; try again", code="concurrent_change")


def get_channel(repo: Repo, product: str, channel: str) -> Channel:
    ch = repo.meta.get_channel(product, channel)
    if ch is None:
        code = "unknown_channel" if repo.meta.product_exists(product) else "unknown_product"
        raise NotFound(f"no channel {channel!r} for {product!r}", code=code)
    return ch


def resign_channels_of(repo: Repo, product: str, version: str) -> list[Channel]:
    """Re-sign every channel that offers ``version`` (its flags changed)."""
    renewed = []
    for ch in repo.meta.list_channels(product):
        signed = parse_json(ch.document)["signed"]
        if version in (ch.release, (signed["rollout"] or {}).get("release")):
            try:
                renewed.append(_write(repo, ch.product, ch.channel, ch.release, signed["manifest"],
                                      ch.sequence + 1, ch.min_status, signed["rollout"]))
            except StaleWrite:
                continue  # moved concurrently: that new document already has the flag
    return renewed


def resign_expiring(repo: Repo, margin_seconds: float | None = None) -> list[Channel]:
    """Re-sign every channel document that expires within the margin."""
    if not channel_signing_keys(repo.config.store):
        return []
    margin = repo.config.channel_ttl_seconds / 2 if margin_seconds is None else margin_seconds
    renewed: list[Channel] = []
    for ch in repo.meta.list_channels():
        if ch.expires - time.time() > margin:
            continue
        signed = parse_json(ch.document)["signed"]
        try:
            renewed.append(_write(repo, ch.product, ch.channel, ch.release, signed["manifest"],
                                  ch.sequence + 1, ch.min_status, signed["rollout"]))
        except StaleWrite:
            continue  # someone else moved it: that document is fresh
    return renewed


def mark_critical(repo: Repo, product: str, version: str, critical: bool, actor: str,
                  reason: str = "") -> Release:
    """Mark a release critical (clients apply it outside maintenance windows) and re-sign
    the channels that offer it so the flag reaches clients at once."""
    get_release(repo, product, version)
    repo.meta.set_critical(product, version, critical, actor, reason or "-")
    resign_channels_of(repo, product, version)
    return get_release(repo, product, version)


def _resign(repo: Repo, chosen: list[Channel]) -> list[Channel]:
    """Re-sign ``chosen`` (new sequence, same release and rollout) so a changed flag reaches clients."""
    renewed = []
    for ch in chosen:
        signed = parse_json(ch.document)["signed"]
        try:
            renewed.append(_write(repo, ch.product, ch.channel, ch.release, signed["manifest"],
                                  ch.sequence + 1, ch.min_status, signed["rollout"]))
        except StaleWrite:
            continue  # moved concurrently: that new document was signed with the new state
    return renewed


def policy_of(repo: Repo, product: str, channel: str) -> dict[str, Any]:
    """The policy that applies to ``product/channel`` (``*``: the product's own) and where it comes from."""
    if not repo.meta.product_exists(product):
        raise NotFound(f"no product {product!r}", code="unknown_product")
    row = repo.meta.channel_policy(product, channel)
    source = None if row is None else ("product" if row["channel"] == PRODUCT_WIDE else "channel")
    return {"product": product, "channel": channel, "rule": row["rule"] if row else None, "source": source,
            "actor": row["actor"] if row else None, "set_at": format_epoch(row["at"]) if row else None}


def set_policy(repo: Repo, product: str, channel: str, rule: str | None, actor: str) -> dict[str, Any]:
    """Set (or with None remove) the version compatibility policy of ``product/channel``, or of
    every channel of the product without its own (``channel`` ``*``), and re-sign the channels
    it applies to so that clients get it with their next channel document."""
    if channel != PRODUCT_WIDE:
        try:
            check_name("channel", channel)
        except DocumentError as exc:
            raise Invalid(exc.message, code="invalid_path") from None
    if rule is not None and rule not in RULES:
        raise Invalid(f"unknown policy rule {rule!r}; one of {', '.join(RULES)} (or none to remove it)",
                      code="bad_policy")
    if not repo.meta.product_exists(product):
        raise NotFound(f"no product {product!r}", code="unknown_product")
    repo.meta.set_channel_policy(product, channel, rule, actor)
    chosen = [ch for ch in repo.meta.list_channels(product) if channel in (PRODUCT_WIDE, ch.channel)]
    renewed = _resign(repo, chosen)
    return {**policy_of(repo, product, channel), "resigned": sorted(ch.channel for ch in renewed)}


def resign_policy_channels(repo: Repo, product: str) -> list[Channel]:
    """Re-sign the channels of ``product`` whose document carries a policy (its deprecated list changed)."""
    chosen = [ch for ch in repo.meta.list_channels(product)
              if "policy" in parse_json(ch.document)["signed"] or repo.meta.channel_policy(product, ch.channel)]
    return _resign(repo, chosen)
