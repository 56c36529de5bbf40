"""The trust step of an update: root rotations, the channel, the target manifest.

Everything here is fetched with the bounds of ``ClientConfig`` and verified with
``casformat`` before any use:

- the root walks rotations ``/v1/roots/{n+1}.json``, each signed by the previous root's
  keys and its own, at most ``max_root_rotations``;
- the channel document must carry the channel role's signature, be unexpired and not go
  below the highest sequence accepted (``casformat.trust.accept_channel``);
- the target manifest is rebuilt from the manifest delta against the cached manifest of
  the current version (or from nothing on a fresh install), and must hash to the digest
  the channel names and carry the release role's signature; any problem with the delta
  falls back to the full manifest, checked the same way;
- the delta's recipes are unsigned: each is checked against the verified manifest
  (``casformat.manifest_delta.usable_recipes``: a raw object has the file's signed size, a
  compressed form or patch is smaller than the file, a bundle smaller than its members,
  each with its signed size) and a malformed or oversized one is dropped with a log line,
  so every download the planner asks for is capped by a size derived from signed data.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from casformat.canonical import canonical_bytes, document_digest, parse_json
from casformat.errors import DocumentError
from casformat.manifest_delta import rebuild_target, usable_recipes
from casformat.roots import Root, verify_first_root, verify_next_root
from casformat.signatures import split_envelope
from casformat.trust import ChannelState, accept_channel, accept_manifest, after_root_update
from deltagen import ALGORITHMS

from .config import ClientConfig
from .errors import DownloadError, NotAvailable
from .fetcher import Fetcher
from .installroot import InstallRoot
from .log import Log


@dataclass(frozen=True)
class Target:
    """The verified manifest of the version to install and the recipes offered for it."""

    envelope: dict[str, Any]
    recipes: dict[str, Any] = field(default_factory=dict)   # {target blake3: [recipe, ...]} from the delta
    used_delta: bool = False

    @property
    def signed(self) -> dict[str, Any]:
        signed: dict[str, Any] = self.envelope["signed"]
        return signed


def trusted_root(layout: InstallRoot) -> Root:
    """The root pinned in ``.cas/root.json``."""
    return verify_first_root(layout.read_json("root.json"))


async def refresh_root(layout: InstallRoot, config: ClientConfig, fetcher: Fetcher, log: Log,
                       persist: bool = True) -> Root:
    """Follow root rotations from the pinned root; with ``persist``, pin each one verified.

    A new root that rotates the channel role's keys makes the client forget the channel
    sequence it trusted (``casformat.trust.after_root_update``, TUF 5.3.11): the operator's
    way out of a fast-forward attack by a stolen channel key."""
    root = trusted_root(layout)
    for _ in range(config.max_root_rotations):
        trusted = root

        def accept(body: bytes, trusted: Root = trusted) -> tuple[Root, Any]:
            envelope = parse_json(body, max_bytes=config.max_root_bytes)
            return verify_next_root(trusted, envelope), envelope

        try:
            root, envelope = await fetcher.accepted(f"/v1/roots/{root.version + 1}.json", config.max_root_bytes,
                                                    accept)
        except NotAvailable:
            break
        if persist:
            seen = channel_seen(layout)
            kept = after_root_update(seen, trusted, root)
            layout.write_json("root.json", envelope)
            layout.save_state(root_version=root.version, channel_sequence=kept.sequence,
                              channel_manifest=kept.manifest)
            log(f"trusted root rotated to version {root.version}")
            if kept != seen:
                log(f"root {root.version} rotates the channel keys: the channel sequence "
                    f"{seen.sequence} trusted so far is forgotten")
    return root


def channel_seen(layout: InstallRoot) -> ChannelState:
    """The highest channel sequence accepted so far (and the manifest it named)."""
    state = layout.state()
    return ChannelState(state.get("channel_sequence", 0), state.get("channel_manifest"))


async def fetch_channel(layout: InstallRoot, config: ClientConfig, fetcher: Fetcher, root: Root,
                        persist: bool = True) -> dict[str, Any]:
    """The verified channel document; with ``persist`` (only under the update lock) its sequence is kept."""
    # Without ``persist`` the rotations ``refresh_root`` verified were not pinned: what they
    # forget is worked out here from the pinned root (with ``persist`` the two are equal).
    seen = after_root_update(channel_seen(layout), trusted_root(layout), root)

    def accept(body: bytes) -> dict[str, Any]:
        envelope = parse_json(body, max_bytes=config.max_channel_bytes)
        return accept_channel(root, envelope, config.product, config.channel, seen)

    signed = await fetcher.accepted(f"/v1/products/{config.product}/channels/{config.channel}",
                                    config.max_channel_bytes, accept)
    if persist:  # state.json has one writer at a time
        layout.save_state(channel_sequence=signed["sequence"], channel_manifest=signed["manifest"])
    return signed


async def fetch_target(layout: InstallRoot, config: ClientConfig, fetcher: Fetcher, root: Root, version: str,
                       digest: str | None, base: str | None, log: Log) -> Target:
    """The target manifest of ``version`` (expected to hash to ``digest`` when known), verified,
    through the delta from ``base`` where possible."""
    base_envelope = layout.cached_manifest(base) if base else None
    if base_envelope is None and config.fresh_install_delta:
        # A fresh install asks for the delta from nothing (``?from=``): every file with its
        # compressed form, where the full manifest would only lead to raw objects.
        base, base_envelope = "", {"signed": {"files": []}}
    if base_envelope is not None and base != version:
        base_signed = base_envelope["signed"]

        def accept_delta(body: bytes) -> Target:
            try:
                delta = parse_json(body, max_bytes=config.max_delta_bytes)
                signed = rebuild_target(base_signed, delta)
                envelope = {"signed": signed, "signatures": delta["to"]["signatures"],
                            **({"cms": delta["to"]["cms"]} if "cms" in delta["to"] else {})}
                expected = digest or delta["to"]["manifest"]
            except KeyError as exc:
                raise DocumentError(f"malformed delta: it has no field {exc.args[0]}") from None
            except (TypeError, ValueError, AttributeError):
                raise DocumentError("malformed delta: a field has the wrong type") from None
            # The manifest a delta rebuilds is held to the cap of a full one (and of the cache).
            size = len(canonical_bytes(envelope))
            if size > config.max_manifest_bytes:
                raise DocumentError(f"the manifest rebuilt from the delta has {size} bytes, over the cap of "
                                    f"{config.max_manifest_bytes} (max_manifest_bytes)")
            accept_manifest(root, envelope, expected, config.cms_policy())
            check_identity(signed, config.product, version)
            return Target(envelope, checked_recipes(delta.get("recipes"), signed, log), True)

        try:
            return await fetcher.accepted(
                f"/v1/products/{config.product}/releases/{version}/delta?from={base}", config.max_delta_bytes,
                accept_delta)
        except NotAvailable:
            log(f"no delta from {base or 'nothing'}; using the full manifest")
        except (DocumentError, DownloadError) as exc:
            log(f"the delta from {base or 'nothing'} was not used: {exc.message}; using the full manifest")

    def accept_full(body: bytes) -> Target:
        envelope = parse_json(body, max_bytes=config.max_manifest_bytes)
        signed, _ = split_envelope(envelope)
        accept_manifest(root, envelope, digest or document_digest(signed), config.cms_policy())
        check_identity(signed, config.product, version)
        return Target(envelope)

    return await fetcher.accepted(f"/v1/products/{config.product}/releases/{version}/manifest",
                                  config.max_manifest_bytes, accept_full)


def check_identity(signed: Mapping[str, Any], product: str, version: str) -> None:
    """Refuse a manifest that is not ``product`` ``version``."""
    if signed.get("version") != version or signed.get("product") != product:
        raise DocumentError(f"manifest is for {signed.get('product')} {signed.get('version')}, "
                            f"not {product} {version}")


def checked_recipes(recipes: object, signed: Mapping[str, Any], log: Log) -> dict[str, Any]:
    """The delta's unsigned ``recipes`` that pass ``usable_recipes`` against the verified
    manifest ``signed``; each dropped one is logged (the file falls back to its raw object)."""
    usable, problems = usable_recipes(recipes, signed["files"], ALGORITHMS)
    for problem in problems[:20]:
        log(f"recipe dropped: {problem}")
    if len(problems) > 20:
        log(f"... and {len(problems) - 20} more recipes dropped")
    return dict(usable)
