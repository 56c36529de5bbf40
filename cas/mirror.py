"""Mirrors: copy an upstream deltacas server's read API, verified, and serve or export it.

``cas mirror sync --upstream URL --store DIR`` copies root documents (every
version), release manifests, channel documents, manifest deltas and every
object they name (files, patches, compressed forms) into ``DIR``.  Documents
are kept byte-identical, as the upstream served them, so a client verifies
them against the same root: a mirror has no keys and cannot forge anything; it
can hold back updates only until the channel documents it has expire.

Every document is verified before it is kept (roots along the rotation chain
from ``--root FILE``, or trust on first use with a warning; manifests and
manifest deltas against the release role; channel documents against the
channel role, unexpired and never an older sequence), and every object by its
BLAKE3 digest.  A document is written only after the objects it names are in
the store, so what the mirror serves is always complete.

Layout (the documents tree is the static export's ``v1/`` tree)::

    STORE/objects/...                 the object store (filesystem or S3, as configured)
    STORE/mirror/state.json           layout version, upstream, ETag and Cache-Control of each document
    STORE/mirror/docs/v1/root.json, v1/roots/N.json
    STORE/mirror/docs/v1/products/index.json                      GET /v1/products
    STORE/mirror/docs/v1/products/P/releases/index.json           GET /v1/products/P/releases
    STORE/mirror/docs/v1/products/P/releases/V/manifest
    STORE/mirror/docs/v1/products/P/releases/V/delta/from-B       GET .../delta?from=B (from- : ?from=)
    STORE/mirror/docs/v1/products/P/channels/C

Sync is incremental (immutable documents are never fetched twice, the others
with ``If-None-Match``; only missing objects are fetched) and can be killed
and re-run at any time: objects and documents are written atomically and the
state file after every document.
"""
from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from casformat.canonical import document_digest, parse_json
from casformat.errors import DocumentError
from casformat.manifest_delta import rebuild_target
from casformat.paths import check_name
from casformat.roots import Root, verify_first_root, verify_next_root
from casformat.signatures import split_envelope
from casformat.trust import ChannelState, accept_channel, accept_manifest
from deltagen.digests import CHUNK, blake3_bytes, is_digest
from deltagen.output import write_atomic

from .errors import CasError
from .objectstore import link_or_copy
from .repo import Repo

LAYOUT = 1
IMMUTABLE = "public, max-age=31536000, immutable"
MIRRORED_STATUSES = ("testing", "released", "deprecated")


class MirrorError(CasError):
    """Upstream sent something that does not verify, or the mirror cannot go on."""

    status, code = 502, "mirror_refused"


# --------------------------------------------------------------------------- layout

#: a channel document's cap, the clients' ``max_channel_bytes`` default (the origin signs at most
#: ``rollout_max_document_bytes``, 60 KiB)
CHANNEL_MAX_BYTES = 64 << 10


def mirror_dir(store: Path) -> Path:
    return Path(store) / "mirror"


def docs_dir(store: Path) -> Path:
    return mirror_dir(store) / "docs"


def relpath_for(kind: str, product: str = "", name: str = "", base: str | None = None) -> str:
    """The one mapping from a document of the read API to its file in the tree."""
    for value in (product, name):
        if value:
            check_name("name", value)
    if base:
        check_name("version", base)
    match kind:
        case "root":
            return "v1/root.json"
        case "roots":
            return f"v1/roots/{int(name)}.json"
        case "products":
            return "v1/products/index.json"
        case "releases":
            return f"v1/products/{product}/releases/index.json"
        case "manifest":
            return f"v1/products/{product}/releases/{name}/manifest"
        case "delta":
            return f"v1/products/{product}/releases/{name}/delta/from-{base or ''}"
        case "channel":
            return f"v1/products/{product}/channels/{name}"
    raise ValueError(kind)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, 0o644)


class MirrorState:
    """``STORE/mirror/state.json``: small, rewritten atomically after every change."""

    def __init__(self, store: Path) -> None:
        self.path = mirror_dir(store) / "state.json"
        self.data: dict[str, Any] = {"layout": LAYOUT, "upstream": None, "documents": {}, "channels": {}}
        if self.path.exists():
            data = json.loads(self.path.read_text())
            if data.get("layout") != LAYOUT:
                raise MirrorError(f"{self.path}: mirror layout {data.get('layout')!r}, this program knows "
                                  f"{LAYOUT}", code="mirror_layout")
            self.data = data

    @property
    def documents(self) -> dict[str, dict[str, str]]:
        return self.data["documents"]

    def save(self) -> None:
        _write_atomic(self.path, json.dumps(self.data, indent=1, sort_keys=True).encode())


# --------------------------------------------------------------------------- sync

@dataclass
class SyncStats:
    requests: int = 0
    bytes_downloaded: int = 0          # response bodies (documents and objects)
    documents_updated: int = 0
    documents_unchanged: int = 0
    objects_fetched: int = 0
    object_bytes: int = 0
    warnings: list[str] = field(default_factory=list)


class MirrorSync:
    def __init__(self, repo: Repo, upstream: str, trusted_root: bytes | None = None,
                 products: list[str] | None = None, jobs: int = 4, token: str | None = None,
                 log: Callable[[str], None] = lambda m: None, transport: httpx.BaseTransport | None = None) -> None:
        self.repo = repo
        self.store = Path(repo.config.store)
        self.upstream = upstream.rstrip("/")
        self.trusted_root = trusted_root
        self.products = products
        self.jobs = max(1, jobs)
        self.log = log
        self.stats = SyncStats()
        self._lock = threading.Lock()
        self.state = MirrorState(self.store)
        self.docs = docs_dir(self.store)
        # identity: documents are kept as served and capped as read, so no gzip (a bomb would be
        # inflated whole by httpx before the cap could see it)
        headers = {"Accept-Encoding": "identity", **({"Authorization": f"Bearer {token}"} if token else {})}
        self.http = httpx.Client(base_url=self.upstream, headers=headers, timeout=60, transport=transport,
                                 event_hooks={"request": [self._count]})

    def _count(self, request: httpx.Request) -> None:
        with self._lock:
            self.stats.requests += 1

    def _received(self, n: int) -> None:
        with self._lock:
            self.stats.bytes_downloaded += n

    def warn(self, message: str) -> None:
        self.stats.warnings.append(message)
        self.log(f"warning: {message}")

    # ------------------------------------------------------------ documents
    def _stored(self, rel: str) -> bytes | None:
        path = self.docs / rel
        return path.read_bytes() if path.exists() else None

    def _fetch(self, url: str, rel: str, params: dict[str, str] | None = None,
               max_bytes: int = 64 << 20) -> tuple[int, bytes | None, dict[str, str]]:
        """(status, body or None when unchanged/absent, headers).  Immutable documents we hold
        are not asked for again; the others carry If-None-Match."""
        meta = self.state.documents.get(rel)
        have = (self.docs / rel).exists()
        if have and meta and IMMUTABLE in meta.get("cache_control", ""):
            self.stats.documents_unchanged += 1
            return 304, None, {}
        headers = {"If-None-Match": meta["etag"]} if have and meta and meta.get("etag") else {}
        try:
            response = self.http.get(url, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise MirrorError(f"upstream {url}: {type(exc).__name__}: {exc}", code="upstream_unreachable") from None
        self._received(len(response.content))
        if response.status_code == 304:
            self.stats.documents_unchanged += 1
            return 304, None, dict(response.headers)
        if response.status_code in (400, 404):
            return response.status_code, None, dict(response.headers)
        if response.status_code != 200:
            raise MirrorError(f"upstream {url}: HTTP {response.status_code}", code="upstream_error")
        if len(response.content) > max_bytes:
            raise MirrorError(f"upstream {url}: {len(response.content)} bytes is over the cap", code="too_large")
        return 200, response.content, dict(response.headers)

    def _keep(self, rel: str, body: bytes, headers: dict[str, str]) -> None:
        """Write a verified document as served, with the headers the mirror repeats."""
        if self._stored(rel) == body:  # listings carry no ETag upstream: compare the bytes
            self.stats.documents_unchanged += 1
            return
        _write_atomic(self.docs / rel, body)
        self.state.documents[rel] = {
            "etag": headers.get("etag") or f'"{blake3_bytes(body)}"',
            "cache_control": headers.get("cache-control", "no-cache"),
        }
        self.state.save()
        self.stats.documents_updated += 1

    def _parse(self, body: bytes, what: str) -> Any:
        try:
            return parse_json(body)
        except DocumentError as exc:
            raise MirrorError(f"{what}: {exc.message}", code="bad_document") from None

    # ------------------------------------------------------------ objects
    def _fetch_object(self, digest: str) -> int:
        writer = self.repo.objects.writer()
        try:
            with self.http.stream("GET", f"/v1/objects/{digest}") as response:
                if response.status_code != 200:
                    raise MirrorError(f"upstream object {digest}: HTTP {response.status_code}",
                                      code="upstream_error")
                for chunk in response.iter_raw(CHUNK):
                    writer.write(chunk)
                    self._received(len(chunk))
        except httpx.HTTPError as exc:
            writer.abort()
            raise MirrorError(f"upstream object {digest}: {type(exc).__name__}: {exc}",
                              code="upstream_unreachable") from None
        except BaseException:
            writer.abort()
            raise
        try:
            ingested = writer.commit(expected=digest)
        except CasError as exc:
            raise MirrorError(f"upstream object {digest} refused: {exc.message}", code="bad_object") from None
        with self._lock:
            self.stats.objects_fetched += 1
            self.stats.object_bytes += ingested.size
        return ingested.size

    def copy_objects(self, digests: list[str]) -> None:
        wanted = [d for d in dict.fromkeys(digests) if is_digest(d)]
        missing = self.repo.objects.missing(wanted)
        if not missing:
            return
        self.log(f"fetching {len(missing)} objects")
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for _ in pool.map(self._fetch_object, missing):
                pass

    # ------------------------------------------------------------ roots
    def sync_roots(self) -> Root:
        status, current, headers = self._fetch("/v1/root.json", relpath_for("root"), max_bytes=1 << 20)
        if status == 304:
            current = self._stored(relpath_for("root"))
        if current is None:
            raise MirrorError("upstream has no root document", code="no_root")
        latest = self._parse(current, "root.json")
        try:
            latest_version = int(split_envelope(latest)[0]["version"])
        except (DocumentError, KeyError, TypeError, ValueError):
            raise MirrorError("upstream root.json has no version", code="bad_document") from None
        chain: list[tuple[bytes, Root]] = []
        root: Root | None = None
        for n in range(1, latest_version + 1):
            rel = relpath_for("roots", name=str(n))
            body = self._stored(rel)
            fresh = body is None
            if body is None:
                st, body, hdrs = self._fetch(f"/v1/roots/{n}.json", rel, max_bytes=1 << 20)
                if body is None:
                    raise MirrorError(f"upstream has no root version {n}", code="bad_root_chain")
            try:
                envelope = self._parse(body, f"root v{n}")
                root = verify_first_root(envelope) if root is None else verify_next_root(root, envelope)
            except DocumentError as exc:
                raise MirrorError(f"root v{n} refused: {exc.message}", code="bad_root_chain") from None
            chain.append((body, root))
            if fresh:
                self._keep(rel, body, {**hdrs, "cache-control": IMMUTABLE})
        assert root is not None
        if document_digest(split_envelope(latest)[0]) != document_digest(root.signed):
            raise MirrorError("upstream root.json differs from its last root version", code="bad_root_chain")
        self._check_trust(chain)
        if status == 200:
            self._keep(relpath_for("root"), current, headers)
        return root

    def _check_trust(self, chain: list[tuple[bytes, Root]]) -> None:
        anchored = self.state.data.get("trusted_root")
        if self.trusted_root is not None:
            given = verify_first_root(self._parse(self.trusted_root, "--root"))
            anchored = {"version": given.version, "digest": document_digest(given.signed)}
        elif anchored is None:
            self.warn("no --root given: trusting the upstream's root chain on first use")
            anchored = {"version": 1, "digest": document_digest(chain[0][1].signed)}
        version = anchored["version"]
        if version > len(chain) or document_digest(chain[version - 1][1].signed) != anchored["digest"]:
            raise MirrorError(f"the upstream's root v{version} is not the trusted one", code="untrusted_root")
        self.state.data["trusted_root"] = anchored
        self.state.save()

    # ------------------------------------------------------------ products
    def run(self) -> SyncStats:
        known = self.state.data.get("upstream")
        if known and known != self.upstream:
            # Safe: the root chain must still lead from the anchored root, sequences never go back.
            self.warn(f"this store mirrored {known}; now syncing from {self.upstream}")
        self.state.data["upstream"] = self.upstream
        try:
            root = self.sync_roots()
            status, body, headers = self._fetch("/v1/products", relpath_for("products"))
            listing = self._parse(body if body is not None else self._stored(relpath_for("products")) or b"{}",
                                  "product list")
            names = [p["name"] for p in listing.get("products", [])]
            if self.products:
                unknown = set(self.products) - set(names)
                if unknown:
                    raise MirrorError(f"upstream has no product {sorted(unknown)}", code="unknown_product")
                names = [n for n in names if n in self.products]
            for product in names:
                self.sync_product(root, product)
            if body is not None:
                self._keep(relpath_for("products"), body, headers)
        finally:
            self.http.close()
        return self.stats

    def sync_product(self, root: Root, product: str) -> None:
        rel = relpath_for("releases", product)
        status, body, headers = self._fetch(f"/v1/products/{product}/releases", rel)
        data = body if body is not None else self._stored(rel)
        if data is None:
            raise MirrorError(f"upstream lists no releases for {product}", code="unknown_product")
        listing = self._parse(data, f"{product} releases")
        releases = [r for r in listing.get("releases", []) if r.get("status") in MIRRORED_STATUSES]
        manifests: dict[str, tuple[str, dict[str, Any]]] = {}
        for release in releases:
            manifests[release["version"]] = self.sync_manifest(root, product, release["version"],
                                                               release["manifest"])
        self.sync_deltas(root, product, releases, manifests)
        for channel in listing.get("channels", {}):
            self.sync_channel(root, product, channel, manifests)
        if body is not None:
            self._keep(rel, body, headers)

    def sync_manifest(self, root: Root, product: str, version: str, digest: str) -> tuple[str, dict[str, Any]]:
        rel = relpath_for("manifest", product, version)
        status, body, headers = self._fetch(f"/v1/products/{product}/releases/{version}/manifest", rel)
        data = body if body is not None else self._stored(rel)
        if data is None:
            raise MirrorError(f"upstream has no manifest for {product} {version}", code="upstream_error")
        envelope = self._parse(data, f"manifest {product} {version}")
        try:
            signed = accept_manifest(root, envelope, digest)
        except DocumentError as exc:
            raise MirrorError(f"manifest {product} {version} refused: {exc.message}", code="bad_manifest") from None
        if signed.get("product") != product or signed.get("version") != version:
            raise MirrorError(f"manifest served as {product} {version} is for {signed.get('product')} "
                              f"{signed.get('version')}", code="bad_manifest")
        if body is not None:
            # A chunked file is copied whole (upstream streams it from its chunks) with its
            # index object, so clients fetch the index and Range-read the file here as upstream.
            self.copy_objects([e["blake3"] for e in signed["files"] if e["type"] == "file"]
                              + [e["chunks"]["index"] for e in signed["files"] if "chunks" in e])
            self._keep(rel, body, headers)
        return digest, signed

    def sync_deltas(self, root: Root, product: str, releases: list[dict[str, Any]],
                    manifests: dict[str, tuple[str, dict[str, Any]]]) -> None:
        """The deltas a client of this mirror asks for: from each release's recent predecessors
        and the factory release (the upstream's own build plan), and from nothing."""
        bases_per = self.repo.config.delta_bases
        for i, target in enumerate(releases):
            earlier = releases[:i]
            shipped = [r["version"] for r in earlier if r["status"] in ("released", "deprecated")]
            bases = list(reversed(shipped))[:bases_per]
            if earlier and earlier[0]["version"] not in bases:
                bases.append(earlier[0]["version"])
            for base in [*bases, ""]:
                self.sync_delta(root, product, target["version"], base, manifests)

    def sync_delta(self, root: Root, product: str, version: str, base: str,
                   manifests: dict[str, tuple[str, dict[str, Any]]]) -> None:
        rel = relpath_for("delta", product, version, base)
        status, body, headers = self._fetch(f"/v1/products/{product}/releases/{version}/delta", rel,
                                            params={"from": base})
        if body is None:
            return  # unchanged, or no delta from that base upstream
        what = f"delta {product} {base or '(nothing)'} -> {version}"
        delta = self._parse(body, what)
        target_digest, _ = manifests[version]
        base_signed = manifests[base][1] if base else {"files": []}
        try:
            if delta.get("product") != product or delta["to"]["manifest"] != target_digest:
                raise DocumentError("it is not for the mirrored target release")
            if base and (delta.get("from") or {}).get("manifest") != manifests[base][0]:
                raise DocumentError("it is not from the mirrored base release")
            rebuilt = rebuild_target(base_signed, delta)
            accept_manifest(root, {"signed": rebuilt, "signatures": delta["to"]["signatures"],
                                   **({"cms": delta["to"]["cms"]} if "cms" in delta["to"] else {})},
                            target_digest)
            objects = [r["object"] for recipes in delta.get("recipes", {}).values() for r in recipes]
        except (DocumentError, KeyError, TypeError, AttributeError) as exc:
            raise MirrorError(f"{what} refused: {exc}", code="bad_delta") from None
        self.copy_objects(objects)
        self._keep(rel, body, headers)

    def sync_channel(self, root: Root, product: str, channel: str,
                     manifests: dict[str, tuple[str, dict[str, Any]]]) -> None:
        rel = relpath_for("channel", product, channel)
        # the clients' cap (max_channel_bytes, 64 KiB): a mirror keeps no channel document they would refuse
        status, body, headers = self._fetch(f"/v1/products/{product}/channels/{channel}", rel,
                                            max_bytes=CHANNEL_MAX_BYTES)
        if body is None:
            return
        key = f"{product}/{channel}"
        seen = ChannelState(self.state.data["channels"].get(key, 0))
        try:
            signed = accept_channel(root, self._parse(body, f"channel {key}"), product, channel, seen)
        except DocumentError as exc:
            raise MirrorError(f"channel {key} refused: {exc.message}", code="bad_channel") from None
        named = [(signed["release"], signed["manifest"])]
        if signed.get("rollout"):
            named.append((signed["rollout"]["release"], signed["rollout"]["manifest"]))
        # per-node rollback (cas/pins.py): a pinned client fetches its pinned release from the mirror too
        named += [(pin["release"], pin["manifest"]) for pin in signed.get("pins", [])]
        for version, digest in named:
            if version not in manifests:
                manifests[version] = self.sync_manifest(root, product, version, digest)
            elif manifests[version][0] != digest:
                raise MirrorError(f"channel {key} names {version} with another manifest", code="bad_channel")
        self.state.data["channels"][key] = signed["sequence"]
        self._keep(rel, body, headers)


# --------------------------------------------------------------------------- export

@dataclass
class ExportStats:
    documents: int = 0
    objects: int = 0
    linked: int = 0
    copied: int = 0


def iter_documents(store: Path) -> Iterator[str]:
    root = docs_dir(store)
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            if not name.startswith(".tmp-"):
                yield str((Path(dirpath) / name).relative_to(root))


def export(repo: Repo, dest: Path) -> ExportStats:
    """A static tree of the read API: objects first, then the documents that name them."""
    store = Path(repo.config.store)
    if not (mirror_dir(store) / "state.json").exists():
        raise MirrorError(f"{store} is not a mirror (run cas mirror sync first)", code="not_a_mirror")
    dest = Path(dest)
    stats = ExportStats()
    objects = dest / "v1" / "objects"
    for digest in repo.objects.iter_digests():
        target = objects / digest[:2] / digest[2:]
        stats.objects += 1
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{digest[2:]}"
        tmp.unlink(missing_ok=True)
        with repo.objects.local_copy(digest) as source:
            how = link_or_copy(source, tmp)
        if how == "copy":
            os.chmod(tmp, 0o444)
        os.replace(tmp, target)
        stats.linked += how == "link"
        stats.copied += how == "copy"
    src = docs_dir(store)
    for rel in iter_documents(store):
        target = dest / rel
        data = (src / rel).read_bytes()
        if not target.exists() or target.read_bytes() != data:
            _write_atomic(target, data)
        stats.documents += 1
    return stats


def is_mirror(store: Path) -> bool:
    return (mirror_dir(store) / "state.json").exists()
