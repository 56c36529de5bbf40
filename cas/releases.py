"""Publishing releases and moving them through their lifecycle.

``publish`` validates a signed manifest completely (cheap limits, then the
signature by a trusted release key, then structure and paths, then every
object present with the declared size) before anything is recorded; a failure
records nothing.  Lifecycle:
draft -> testing -> released -> deprecated, and testing -> draft.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from casformat.canonical import canonical_bytes, document_digest, parse_json
from casformat.errors import DocumentError, SignatureError
from casformat.manifests import MAX_FILES, manifest_problems
from casformat.signatures import split_envelope, verify

from . import channels, cms_signing, deltas
from .chunked import check_chunked_entries
from .errors import Conflict, Invalid, from_document
from .metadata import STATUSES, ObjectsBeingDeleted, Release, StaleWrite
from .offerable import check_offerable, check_trusted
from .release_lookup import check_release_names, get_release
from .repo import Repo
from .signing import sign

__all__ = ["TRANSITIONS", "Published", "get_release", "manifest_of", "move_status", "publish", "resign",
           "resign_all"]

TRANSITIONS = {("draft", "testing"), ("testing", "released"), ("testing", "draft"),
               ("released", "deprecated")}


@dataclass(frozen=True)
class Published:
    release: Release
    created: bool


#: the name check as ``cas/http/dashboard.py`` imports it


def publish(repo: Repo, product: str, version: str, body: bytes, actor: str) -> Published:
    """Validate a signed manifest completely, then record the release (a draft); nothing on failure."""
    check_release_names(product, version)
    try:
        envelope = parse_json(body, max_bytes=repo.config.max_document_bytes)
        signed, _ = split_envelope(envelope)
    except DocumentError as exc:
        raise from_document(exc) from None
    # Cheap checks first (D2): the document size is bounded by the parse above, then the
    # names and the file count, then the signatures; only a manifest signed by a trusted
    # release key (and CMS, where configured) reaches the structure and path checks.
    files = signed.get("files")
    cheap: list[str] = []
    if signed.get("product") != product or signed.get("version") != version:
        cheap.append(f"manifest is for {signed.get('product')!r} {signed.get('version')!r}, "
                     f"not {product!r} {version!r}")
    if isinstance(files, list) and len(files) > MAX_FILES:
        cheap.append(f"more than {MAX_FILES} files")
    if cheap:
        raise Invalid("invalid manifest", detail=cheap, code="invalid_manifest")
    if repo.config.enforce_signatures:
        root = repo.root()
        if root is None:
            raise Invalid("signatures are enforced but the server has no root (run `cas keys init`)",
                          code="no_root")
        try:
            verify(envelope, root.role("release"))
        except SignatureError as exc:
            raise Invalid(f"manifest signature refused: {exc.message}", code="bad_signature") from None
    cms_signing.check_manifest(repo.config, envelope)  # enterprise CMS signature: 422 bad_cms_signature
    problems = manifest_problems(signed, casefold=repo.config.casefold_paths)
    if problems:
        raise Invalid("invalid manifest", detail=problems, code="invalid_manifest")
    files = signed["files"]
    wrong: list[str] = []
    for entry in files:
        if entry["type"] != "file" or "chunks" in entry:
            continue
        size = repo.objects.size(entry["blake3"])
        if size is None:
            wrong.append(f"missing object {entry['blake3']} for {entry['path']}")
        elif size != entry["size"]:
            wrong.append(f"{entry['path']}: object has {size} bytes, manifest says {entry['size']}")
    # Chunked files: index present and exact, every chunk present, the chunks hash to the file.
    chunk_problems, chunk_lists = check_chunked_entries(repo.objects, repo.meta, files)
    wrong += chunk_problems
    if wrong:
        code = "missing_objects" if all(w.startswith("missing") for w in wrong) else "size_mismatch"
        raise Invalid("manifest refers to objects the store does not hold as declared",
                      detail=wrong, code=code)
    digest = document_digest(signed)
    try:
        # The insert also revives any GC tombstone of these objects, in its transaction.
        existing = repo.meta.insert_release(product, version, digest, canonical_bytes(envelope), files, actor,
                                            chunk_lists=chunk_lists)
    except ObjectsBeingDeleted as exc:
        raise Invalid("objects of this manifest are being garbage-collected; upload them again",
                      detail=[f"missing object {d}" for d in exc.digests], code="missing_objects") from None
    if existing is not None:
        if existing.manifest_digest != digest:
            raise Conflict(f"{product} {version} exists with different content",
                           detail={"existing": existing.manifest_digest, "offered": digest},
                           code="release_exists")
        return Published(existing, created=False)
    release = repo.meta.get_release(product, version)
    assert release is not None
    return Published(release, created=True)


def move_status(repo: Repo, product: str, version: str, new: str, actor: str, reason: str = "",
                move_channel_to: str | None = None) -> Release:
    """Move a release along its lifecycle (``TRANSITIONS``); deprecating or drafting it first
    moves its channels to ``move_channel_to`` when given, else refuses while channels use it."""
    release = get_release(repo, product, version)
    if new not in STATUSES:
        raise Invalid(f"unknown status {new!r}; one of {', '.join(STATUSES)}", code="bad_status")
    if move_channel_to is not None and new not in ("deprecated", "draft"):
        raise Invalid("move_channel_to only applies when deprecating or moving back to draft", code="bad_request")
    if release.status == new:
        return release
    if (release.status, new) not in TRANSITIONS:
        raise Conflict(f"cannot move {product} {version} from {release.status} to {new}",
                       detail={"from": release.status, "to": new,
                               "allowed": sorted(t for f, t in TRANSITIONS if f == release.status)},
                       code="illegal_transition")
    if new in ("deprecated", "draft"):
        active = [r["channel"] for r in repo.meta.active_rollouts(product, release=version)]
        if active:
            raise Conflict(f"rollouts on channels {active} use {product} {version}; promote or abort them first",
                           detail={"channels": active}, code="release_in_use")
        pinned = repo.meta.pinned_channels(product, version)
        if pinned:
            raise Conflict(f"clients are pinned to {product} {version} on channels {pinned}; remove the pins "
                           f"first (cas pin list {product} CHANNEL)", detail={"pinned_on": pinned},
                           code="release_in_use")
        pointing = repo.meta.channels_pointing_at(product, version)
        if pointing and move_channel_to is not None:
            _move_channels(repo, product, version, pointing, move_channel_to)
            reason = f"{reason or f'-> {new}'}; channels {', '.join(pointing)} moved to {move_channel_to}"
            pointing = repo.meta.channels_pointing_at(product, version)
        if pointing:
            raise Conflict(f"channels {pointing} point at {product} {version}; move them first",
                           detail={"channels": pointing}, code="release_in_use")
    try:
        repo.meta.set_status(product, version, release.status, new, actor, reason or f"-> {new}")
    except StaleWrite as exc:
        raise Conflict(str(exc), code="concurrent_change") from None
    moved = get_release(repo, product, version)
    deltas.on_status_change(repo, moved)
    if "deprecated" in (release.status, new):   # the policies' deprecated lists change
        channels.resign_policy_channels(repo, product)
    from . import webhooks  # lifecycle notifications (outbox; delivered in the background)
    from .clock import clock_from_env
    webhooks.enqueue(repo, clock_from_env(), "release.status",
                     {"product": product, "version": version, "from": release.status, "to": new,
                      "actor": actor, "reason": reason or f"-> {new}"})
    return moved


def _move_channels(repo: Repo, product: str, version: str, pointing: list[str], target: str) -> None:
    """Point every channel in ``pointing`` at ``target``; all are checked before any moves."""
    if target == version:
        raise Invalid("move_channel_to must name another release", code="bad_request")
    replacement = get_release(repo, product, target)
    if replacement.product != product:
        raise Invalid(f"move_channel_to must name a release of {product!r}", code="bad_request")
    check_trusted(repo, replacement)
    for name in pointing:
        ch = repo.meta.get_channel(product, name)
        check_offerable(replacement, name, ch.min_status if ch else "released", channel=name)
    for name in pointing:
        channels.set_channel(repo, product, name, target)


def manifest_of(release: Release) -> dict[str, Any]:
    """A release's signed manifest envelope, parsed."""
    return parse_json(release.manifest)



def resign(repo: Repo, product: str, version: str, keys: Sequence[Ed25519PrivateKey], actor: str) -> Release:
    """Replace a release's signatures by ``keys``' (after a release-key rotation).  The
    ``signed`` part, and so the manifest digest, is unchanged; the new signatures must meet
    the current root's release role.  A CMS signature, over the same bytes, is kept."""
    release = get_release(repo, product, version)
    envelope = manifest_of(release)
    root = repo.root()
    if root is None:
        raise Invalid("the server has no root (run `cas keys init`)", code="no_root")
    if not keys:
        raise Invalid("no release key to sign with (give --key FILE)", code="no_key")
    renewed = sign(envelope["signed"], list(keys))
    if "cms" in envelope:
        renewed["cms"] = envelope["cms"]
    try:
        verify(renewed, root.role("release"))
    except SignatureError as exc:
        raise Invalid(f"the keys given do not meet root version {root.version}'s release role: {exc.message}",
                      code="bad_signature") from None
    assert document_digest(renewed["signed"]) == release.manifest_digest
    repo.meta.replace_manifest(product, version, release.manifest_digest, canonical_bytes(renewed), actor,
                               f"re-signed for root version {root.version}")
    return get_release(repo, product, version)


def resign_all(repo: Repo, keys: Sequence[Ed25519PrivateKey], actor: str) -> list[Release]:
    """Re-sign every release whose signatures do not meet the current root's release role."""
    root = repo.root()
    if root is None:
        raise Invalid("the server has no root (run `cas keys init`)", code="no_root")
    done = []
    for product in repo.meta.list_products():
        for release in repo.meta.list_releases(product["name"]):
            try:
                verify(manifest_of(release), root.role("release"))
                continue
            except DocumentError:
                pass
            done.append(resign(repo, release.product, release.version, keys, actor))
    return done
