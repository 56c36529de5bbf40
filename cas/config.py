"""Server configuration: every limit is named here with its default.

Read from ``STORE/config.toml`` (or ``--config FILE``; ``cas tokens`` edits its tokens); environment variables
override the file: CAS_STORE, CAS_ADMIN_TOKEN, CAS_PUBLISH_TOKEN, CAS_READ_TOKEN,
CAS_REPORT_TOKEN, CAS_METADATA_URL.
"""
from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Mapping, cast

from casformat.canonical import MAX_MANIFEST_BYTES
from deltagen.limits import Algorithm, DeltaLimits

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
    # sha256(token) -> name, recorded in audit logs as "token:NAME" (`cas tokens add`); a token
    # without a name (older configs, CAS_*_TOKEN) is recorded by its scope, "token:publish".
    token_names: Mapping[str, str] = field(default_factory=dict)
    anonymous_read: bool = True
    auth_failures_per_minute: int = 30   # per client address; then 429 until the window passes
    rate_limit_max_keys: int = 10_000    # keys each rate limiter keeps (memory bound; exhausted keys kept first)
    sqlite_cache_kib: int = 1024         # page cache per SQLite connection (one per thread)
    dashboard_cache_releases: int = 256  # releases whose file maps the dashboard keeps (dedup figures)
    malloc_arena_max: int = 2            # glibc malloc arenas of `cas serve` (0: glibc's 8 per core; docs/performance.md)
    dashboard_cache_bytes: int = 16 << 20  # ... and the manifest JSON bytes behind its parsed manifests, and its maps
    metrics_store_usage_seconds: float = 60.0  # /metrics: the object store's objects and bytes are walked
                                               # (listed, for S3) at most this often
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
    max_document_bytes: int = MAX_MANIFEST_BYTES  # a published manifest; may only be lowered (clients cap it there)
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
    # `cas gc` deletes client reports older than this many days (0: keep them all).  Reports
    # are the largest table of a big fleet's database (docs/scale.md); the gate window above
    # must fit inside it.
    report_retention_days: int = 90
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
    delta_workers: int = 0               # concurrent builds; 0: one per CPU
    delta_memory_bytes: int = 4 << 30    # builds wait while their estimated peaks would pass this
    delta_time_budget_s: float = 300.0   # per file pair
    # A claimed job is its builder's for this long, renewed every third of it while the builder
    # lives (a killed build host's jobs return to the queue within it); 0: 3 x budget + 60 s.
    delta_lease_seconds: float = 0.0
    delta_bsdiff_max_bytes: int = 64 << 20
    delta_hdiffpatch_max_bytes: int = 128 << 20
    delta_zstd_patch_max_bytes: int = 1 << 30
    # which patch algorithms may be built; ["zstd", "bsdiff4"]: only recipes stock zstd/bspatch read
    delta_patch_algorithms: tuple[str, ...] = ("hdiffpatch", "zstd", "bsdiff4", "lzma-from", "gzip-inner")
    delta_build_policy: str = "auto"     # "auto" (per file class, deltagen/policy.py) or "exhaustive"
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
    postgres_pool_size: int = 10              # PostgreSQL connections per process at most (psycopg_pool)
    postgres_pool_timeout_seconds: float = 5.0  # a query waits this long for one, then 503 + Retry-After
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
    # Reads at nginx speed (docs/deploy.md, docs/nginx-production.conf, cas/static.py): a
    # directory where the public documents are kept as files for nginx ("": off), checked for
    # changes made elsewhere every static_tree_poll_seconds (SQLite: any commit; PostgreSQL: a
    # channel write) and rewritten in full at least every static_tree_refresh_seconds.
    static_tree: str = ""
    static_tree_poll_seconds: float = 0.5
    static_tree_refresh_seconds: float = 10.0
    # With anonymous_read = false behind nginx: GET /v1/objects/{d} checks the token, then
    # answers with X-Accel-Redirect: {prefix}ab/cdef... (an `internal` nginx location over
    # STORE/objects/) so nginx sends the bytes ("": off; filesystem store only).
    accel_redirect_prefix: str = ""
    # Read-only mirror (cas/mirror.py): serve what `cas mirror sync` copied from this upstream.
    mirror_of: str = ""

    def delta_limits(self) -> DeltaLimits:
        """The delta builder's caps from these settings (ValueError names a bad one)."""
        return DeltaLimits(bsdiff_max_bytes=self.delta_bsdiff_max_bytes, time_budget_s=self.delta_time_budget_s,
                           tiny_bytes=self.delta_tiny_bytes, hdiffpatch_max_bytes=self.delta_hdiffpatch_max_bytes,
                           zstd_patch_max_bytes=self.delta_zstd_patch_max_bytes,
                           patch_algorithms=cast(tuple[Algorithm, ...], tuple(self.delta_patch_algorithms)),
                           build_policy=cast(Literal["auto", "exhaustive"], self.delta_build_policy))

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


_SIMPLE = {f.name for f in fields(Config)} - {"store", "token_hashes", "token_names"}
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_token_name(name: Any) -> str:
    """A token name: 1..64 of letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit."""
    if not isinstance(name, str) or not _TOKEN_NAME.match(name):
        raise ValueError(f"token name {name!r} must be 1..64 letters, digits, '.', '_' or '-' "
                         "(starting with a letter or digit)")
    return name


def parse_tokens(entries: Any) -> tuple[dict[str, str], dict[str, str]]:
    """``tokens = [{name = "ci", scope = "publish", sha256 = "..."}]`` (``token = "..."`` instead
    of ``sha256`` and no ``name`` are accepted too): (sha256 -> scope, sha256 -> name)."""
    if not isinstance(entries, list):
        raise ValueError("tokens must be a list of {name, scope, sha256} tables")
    hashes: dict[str, str] = {}
    names: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or set(entry) - {"name", "scope", "sha256", "token"}:
            raise ValueError("each token is {name = \"...\", scope = \"...\", sha256 = \"...\"}")
        scope = entry.get("scope")
        if scope not in SCOPES:
            raise ValueError(f"token scope must be one of {SCOPES}")
        if "sha256" in entry:
            digest = entry["sha256"]
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError("token sha256 must be 64 lowercase hex digits")
        elif isinstance(entry.get("token"), str) and entry["token"]:
            digest = hash_token(entry["token"])
        else:
            raise ValueError("each token needs sha256 (or token)")
        hashes[digest] = scope
        if "name" in entry:
            name = check_token_name(entry["name"])
            if name in names.values():
                raise ValueError(f"two tokens are named {name!r}")
            names[digest] = name
    return hashes, names


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
    for key in ("delta_build_on", "delta_patch_algorithms"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    if kwargs.get("object_store", "filesystem") not in ("filesystem", "s3"):
        raise ValueError('object_store must be "filesystem" or "s3"')
    if "webhooks" in kwargs:
        kwargs["webhooks"] = check_webhooks(kwargs["webhooks"])
    if not 0 < kwargs.get("max_document_bytes", MAX_MANIFEST_BYTES) <= MAX_MANIFEST_BYTES:
        raise ValueError(f"max_document_bytes must be 1..{MAX_MANIFEST_BYTES}: clients refuse a larger manifest "
                         "(casformat's MAX_MANIFEST_BYTES)")
    for key in ("static_tree_poll_seconds", "static_tree_refresh_seconds"):
        value = kwargs.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{key} must be a number of seconds above 0")
    prefix = kwargs.get("accel_redirect_prefix", "")
    if prefix and not re.fullmatch(r"/[A-Za-z0-9._~/-]*/", prefix):
        raise ValueError("accel_redirect_prefix must be a URI path starting and ending with '/', "
                         'e.g. "/_deltacas/objects/"')
    config = Config(store=store_path, **kwargs)
    if config.report_retention_days < 0 or (
            config.report_retention_days and config.report_retention_days * 86400 < config.reports_gate_window_seconds):
        raise ValueError("report_retention_days must be 0 (keep all) or hold the rollout gate's window "
                         f"(reports_gate_window_seconds = {config.reports_gate_window_seconds})")
    config.delta_limits()  # a bad delta setting is refused here, with DeltaLimits's message
    # tokens = [{name = "ci", scope = "admin", sha256 = "..."}] or {scope = ..., token = "..."}
    hashes, names = parse_tokens(data.get("tokens", []))
    config = replace(config, token_hashes=hashes, token_names=names)
    config = config.with_tokens(admin=env.get("CAS_ADMIN_TOKEN"), publish=env.get("CAS_PUBLISH_TOKEN"),
                                read=env.get("CAS_READ_TOKEN"), report=env.get("CAS_REPORT_TOKEN"))
    if env.get("CAS_METADATA_URL"):
        config = replace(config, metadata_url=env["CAS_METADATA_URL"])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(config, **overrides) if overrides else config
