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
  falls back to the full manifest, checked the same way.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from casformat.canonical import document_digest, parse_json
from casformat.errors import DocumentError
from casformat.manifest_delta import rebuild_target
from casformat.roots import Root, verify_first_root, verify_next_root
from casformat.signatures import split_envelope
from casformat.trust import ChannelState, accept_channel, accept_manifest

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
    """Follow root rotations from the pinned root; with ``persist``, pin each one verified."""
    root = trusted_root(layout)
    for _ in range(config.max_root_rotations):
        try:
            _, body, _ = await fetcher.document(f"/v1/roots/{root.version + 1}.json", config.max_root_bytes)
        except NotAvailable:
            break
        envelope = parse_json(body, max_bytes=config.max_root_bytes)
        root = verify_next_root(root, envelope)
        if persist:
            layout.write_json("root.json", envelope)
            layout.save_state(root_version=root.version)
            log(f"trusted root rotated to version {root.version}")
    return root


async def fetch_channel(layout: InstallRoot, config: ClientConfig, fetcher: Fetcher, root: Root,
                        persist: bool = True) -> dict[str, Any]:
    """The verified channel document; with ``persist`` (only under the update lock) its sequence is kept."""
    _, body, _ = await fetcher.document(f"/v1/products/{config.product}/channels/{config.channel}",
                                        config.max_channel_bytes)
    envelope = parse_json(body, max_bytes=config.max_channel_bytes)
    state = layout.state()
    seen = ChannelState(state.get("channel_sequence", 0), state.get("channel_manifest"))
    signed = accept_channel(root, envelope, config.product, config.channel, seen)
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
        try:
            _, body, _ = await fetcher.document(
                f"/v1/products/{config.product}/releases/{version}/delta?from={base}", config.max_delta_bytes)
            delta = parse_json(body, max_bytes=config.max_delta_bytes)
            signed = rebuild_target(base_envelope["signed"], delta)
            envelope = {"signed": signed, "signatures": delta["to"]["signatures"],
                        **({"cms": delta["to"]["cms"]} if "cms" in delta["to"] else {})}
            expected = digest or delta["to"]["manifest"]
            accept_manifest(root, envelope, expected, config.cms_policy())
            check_identity(signed, config.product, version)
            return Target(envelope, delta.get("recipes", {}), True)
        except NotAvailable:
            log(f"no delta from {base or 'nothing'}; using the full manifest")
        except (DocumentError, DownloadError, KeyError, TypeError, ValueError) as exc:
            log(f"delta from {base or 'nothing'} refused ({exc}); using the full manifest")
    _, body, _ = await fetcher.document(f"/v1/products/{config.product}/releases/{version}/manifest",
                                        config.max_manifest_bytes)
    envelope = parse_json(body, max_bytes=config.max_manifest_bytes)
    signed, _ = split_envelope(envelope)
    accept_manifest(root, envelope, digest or document_digest(signed), config.cms_policy())
    check_identity(signed, config.product, version)
    return Target(envelope)


def check_identity(signed: Mapping[str, Any], product: str, version: str) -> None:
    """Refuse a manifest that is not ``product`` ``version``."""
    if signed.get("version") != version or signed.get("product") != product:
        raise DocumentError(f"manifest is for {signed.get('product')} {signed.get('version')}, "
                            f"not {product} {version}")
