"""Server configuration: every limit is named here with its default.

Read from ``STORE/config.toml`` (or ``--config FILE``); environment variables
override the file: CAS_STORE, CAS_ADMIN_TOKEN, CAS_PUBLISH_TOKEN, CAS_READ_TOKEN,
CAS_REPORT_TOKEN, CAS_METADATA_URL.
"""
from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

SCOPES = ("report", "read", "publish", "admin")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Config:
    store: Path = Path("./cas-data")
    host: str = "127.0.0.1"
    port: int = 8080
    # Auth: sha256(token) -> scope.  Tokens are only ever kept hashed.
    token_hashes: Mapping[str, str] = field(default_factory=dict)
    anonymous_read: bool = True
    auth_failures_per_minute: int = 30   # per client address; then 429 until the window passes
    rate_limit_max_keys: int = 10_000    # keys each rate limiter keeps (memory bound; exhausted keys kept first)
    sqlite_cache_kib: int = 1024         # page cache per SQLite connection (one per thread)
    dashboard_cache_releases: int = 256  # releases whose file maps the dashboard keeps (dedup figures)
    enforce_signatures: bool = True
    casefold_paths: bool = False
    # Enterprise CMS signing (cas/cms_signing.py): X.509 trust anchors as a PEM file (relative to
    # the store) or inline PEM; require_cms refuses manifests without a valid CMS signature.
    cms_trust_anchors: str | None = None
    require_cms: bool = False
    # HTTP connections of `cas serve` (cas/http/protocol.py): request line + headers, the time
    # to send them, a request body that stops arriving, an idle keep-alive connection.
    http_max_header_bytes: int = 64 << 10
    http_header_timeout_seconds: float = 30.0
    http_body_idle_timeout_seconds: float = 60.0
    http_keep_alive_seconds: int = 30
    # Limits.
    max_object_bytes: int = 16 << 30
    max_document_bytes: int = 64 << 20
    max_request_json_bytes: int = 1 << 20
    max_missing_query: int = 100_000
    upload_ttl_seconds: int = 24 * 3600  # an upload idle this long is removed by the sweep
    upload_max_per_token: int = 64       # uploads in progress per token (then 429 upload_quota)
    upload_max_bytes_per_token: int = 32 << 30  # bytes of a token's uploads in progress (then 413 upload_quota)
    channel_ttl_seconds: int = 7 * 24 * 3600
    resign_interval_seconds: int = 300
    small_object_cache_bytes: int = 64 << 20
    small_object_max_bytes: int = 64 << 10
    channel_max_age_seconds: int = 60
    # Client reports.
    max_report_bytes: int = 4096
    reports_per_client_per_minute: int = 30
    reports_per_address_per_minute: int = 120  # per source address, whatever client ids it sends
    reports_require_token: bool = False  # reports need a token (report, read or higher) even with anonymous reads
    # The rollout health gate counts only reports sent with a token (a per-fleet `report`
    # token, or read/publish/admin); anonymous reports are stored and shown but not counted
    # unless this is true (D9).
    reports_gate_anonymous: bool = False
    # The gate counts at most this many distinct client ids per reporter (token @ source
    # address) within the window; further ids from that reporter are stored, not counted.
    reports_gate_ids_per_source: int = 16
    reports_gate_window_seconds: int = 24 * 3600
    # Staged rollouts (cas/rollouts.py) and webhooks (cas/webhooks.py).
    rollout_tick_seconds: float = 30.0   # how often the server evaluates running rollouts
    rollout_max_clients: int = 10_000    # ids in a batches rollout
    rollout_max_document_bytes: int = 60 << 10  # channel document with every batch admitted (clients cap 64 KiB)
    webhooks: tuple[Mapping[str, str], ...] = ()  # [{url = "...", secret = "..."}]
    webhook_poll_seconds: float = 2.0
    webhook_timeout_seconds: float = 5.0
    webhook_max_attempts: int = 8
    webhook_backoff_seconds: float = 5.0  # first retry delay, doubled each attempt
    webhook_max_backoff_seconds: float = 3600.0
    # Content-defined chunking (cas/chunked.py, casformat/chunks.py): files of at least
    # chunk_min_file_bytes are published as FastCDC chunks plus a chunk index.  The default is
    # hdiffpatch's per-file cap (deltagen/limits.py): below it a patch is built and beats chunks
    # on small edits; at and above it no patch is built quickly (bsdiff4 and HDiffPatch refuse,
    # zstd patch-from takes minutes near its 1 GiB), so chunks move only what changed.
    chunk_min_file_bytes: int = 128 << 20
    chunk_min_bytes: int = 16 << 10     # FastCDC minimum, average and maximum chunk (casync's);
    chunk_avg_bytes: int = 64 << 10     # pyfastcdc's real average is avg + min (~80 KiB)
    chunk_max_bytes: int = 256 << 10
    # Ahead-of-time deltas.
    delta_builder: bool = True          # run `cas deltas worker` beside `cas serve`
    delta_build_on: tuple[str, ...] = ("testing", "released")
    delta_bases: int = 3                 # last K released versions (plus the factory release)
    delta_workers: int = 0               # 0: max(1, cpus // 2), capped by delta_memory_bytes
    delta_memory_bytes: int = 4 << 30    # budget for concurrent builds (bsdiff: ~20x the file)
    delta_time_budget_s: float = 300.0   # per file pair
    delta_bsdiff_max_bytes: int = 64 << 20
    delta_tiny_bytes: int = 512
    delta_max_attempts: int = 3
    delta_bundles: bool = True           # also build bundle recipes per release pair (deltagen/bundles.py)
    delta_poll_seconds: float = 1.0
    delta_db_backoff_seconds: float = 1.0       # a database outage: first wait, doubled ...
    delta_db_max_backoff_seconds: float = 30.0  # ... up to this
    delta_db_attempts: int = 8                  # tries to give a claimed job back before its lease does
    delta_plan_cache_entries: int = 32   # planned release pairs kept per process (GET .../delta)
    # Metadata (cas/metadata/): empty for SQLite at STORE/meta.db (the embedded default),
    # "postgresql://user@host:5432/db" for PostgreSQL shared by replicas (cas/metadata/postgres.py).
    metadata_url: str = ""
    # Object store (cas/objectstore/): "filesystem" (STORE/objects, the default) or "s3".
    # S3 credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE...).
    object_store: str = "filesystem"
    s3_endpoint: str = ""                # empty: AWS's own endpoint for the region
    s3_bucket: str = ""
    s3_prefix: str = ""                  # keys are {prefix}/objects/ab/cdef...
    s3_region: str = ""
    s3_presign_downloads: bool = False   # GET /v1/objects/{d} answers 307 to a presigned URL
    s3_presign_seconds: int = 3600
    s3_multipart_threshold_bytes: int = 64 << 20
    s3_multipart_chunk_bytes: int = 16 << 20
    # Read-only mirror (cas/mirror.py): serve what `cas mirror sync` copied from this upstream.
    mirror_of: str = ""

    def with_tokens(self, **scoped: str | None) -> Config:
        hashes = dict(self.token_hashes)
        for scope, token in scoped.items():
            if token:
                if scope not in SCOPES:
                    raise ValueError(f"unknown scope {scope}")
                hashes[hash_token(token)] = scope
        return replace(self, token_hashes=hashes)


def check_webhooks(entries: Any) -> tuple[Mapping[str, str], ...]:
    """``webhooks = [{url = "http(s)://...", secret = "..."}]``, validated."""
    if not isinstance(entries, list):
        raise ValueError("webhooks must be a list of {url, secret} tables")
    out = []
    for entry in entries:
        if (not isinstance(entry, dict) or set(entry) - {"url", "secret"}
                or not isinstance(entry.get("url"), str) or not isinstance(entry.get("secret"), str)
                or not entry["url"].startswith(("http://", "https://")) or not entry["secret"]):
            raise ValueError("each webhook is {url = \"http(s)://...\", secret = \"...\"}")
        out.append({"url": entry["url"], "secret": entry["secret"]})
    return tuple(out)


_SIMPLE = {f.name for f in fields(Config)} - {"store", "token_hashes"}


def load_config(store: str | os.PathLike[str] | None = None, config_file: str | None = None,
                env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    env = os.environ if env is None else env
    store_path = Path(store or env.get("CAS_STORE") or "./cas-data")
    data: dict[str, Any] = {}
    config_file = config_file or env.get("CAS_CONFIG") or None
    path = Path(config_file) if config_file else store_path / "config.toml"
    if path.exists():
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    elif config_file:
        raise FileNotFoundError(f"config file {config_file} not found")
    kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in _SIMPLE}
    unknown = set(data) - _SIMPLE - {"tokens"}
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    if "delta_build_on" in kwargs:
        kwargs["delta_build_on"] = tuple(kwargs["delta_build_on"])
    if kwargs.get("object_store", "filesystem") not in ("filesystem", "s3"):
        raise ValueError('object_store must be "filesystem" or "s3"')
    if "webhooks" in kwargs:
        kwargs["webhooks"] = check_webhooks(kwargs["webhooks"])
    config = Config(store=store_path, **kwargs)
    # tokens = [{scope = "admin", sha256 = "..."}] or {scope = ..., token = "..."}
    hashes: dict[str, str] = {}
    for entry in data.get("tokens", []):
        scope = entry.get("scope")
        if scope not in SCOPES:
            raise ValueError(f"token scope must be one of {SCOPES}")
        digest = entry.get("sha256") or hash_token(entry["token"])
        hashes[digest] = scope
    config = replace(config, token_hashes=hashes)
    config = config.with_tokens(admin=env.get("CAS_ADMIN_TOKEN"), publish=env.get("CAS_PUBLISH_TOKEN"),
                                read=env.get("CAS_READ_TOKEN"), report=env.get("CAS_REPORT_TOKEN"))
    if env.get("CAS_METADATA_URL"):
        config = replace(config, metadata_url=env["CAS_METADATA_URL"])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(config, **overrides) if overrides else config
