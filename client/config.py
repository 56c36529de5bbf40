"""Client configuration and limits: named values with defaults, stored in ROOT/.cas/config.json."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from casformat.canonical import MAX_MANIFEST_BYTES

if TYPE_CHECKING:
    from casformat.cms import CmsPolicy


@dataclass(frozen=True)
class ClientConfig:
    servers: tuple[str, ...]
    product: str
    channel: str
    client_id: str
    health_cmd: str | None = None
    health_timeout_s: float = 60.0
    # Maintenance windows (client/windows.py): when empty, updates apply at any time.
    windows: tuple[str, ...] = ()           # e.g. "mon-fri 02:00-04:00"
    blackouts: tuple[str, ...] = ()         # e.g. "2026-12-20/2027-01-05"
    timezone: str = "UTC"                   # IANA name the windows are in
    report_token: str | None = None         # sent with reports when the server requires one
    report_url: str | None = None           # where reports (and report_token) go; default: the last server
    # Fetching.
    concurrency: int = 4
    bandwidth_bytes_per_s: int = 0          # 0: unlimited
    attempts: int = 4                       # per server, per object
    backoff_s: float = 0.5                  # first retry delay, doubled each time, with jitter
    max_backoff_s: float = 30.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0            # a sender silent this long is cut off
    min_rate_bytes_per_s: int = 1024        # a sender slower than this on average ...
    slow_grace_s: float = 15.0              # ... once this long has passed is cut off (and retried)
    # Documents without a size in signed metadata are capped.
    max_channel_bytes: int = 64 << 10       # the server signs at most rollout_max_document_bytes (60 KiB)
    max_root_bytes: int = 1 << 20
    max_manifest_bytes: int = MAX_MANIFEST_BYTES  # may only be lowered: the cache is read with casformat's cap
    max_delta_bytes: int = 128 << 20
    max_root_rotations: int = 32
    free_space_factor: float = 2.0
    fresh_install_delta: bool = True        # first install: ask for the delta from nothing (compressed forms)
    report_timeout_s: float = 10.0          # reports are best effort and never hold an update longer
    keep_partial_downloads: bool = True
    # Enterprise CMS signing (casformat/cms.py): X.509 trust anchors as inline PEM or an absolute PEM
    # file path; require_cms refuses any manifest without a valid CMS code-signing signature.
    cms_trust_anchors: str | None = None
    require_cms: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.max_manifest_bytes <= MAX_MANIFEST_BYTES:
            raise ValueError(f"max_manifest_bytes must be 1..{MAX_MANIFEST_BYTES} (casformat's MAX_MANIFEST_BYTES), "
                             f"not {self.max_manifest_bytes}")

    def cms_policy(self) -> CmsPolicy | None:
        """The CMS policy for ``trust.accept_manifest`` (``None`` when not configured); fails closed."""
        from casformat.cms import policy_from_settings
        return policy_from_settings(self.cms_trust_anchors, self.require_cms)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["servers"] = list(self.servers)
        data["windows"], data["blackouts"] = list(self.windows), list(self.blackouts)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["servers"] = tuple(values["servers"])
        for name in ("windows", "blackouts"):
            values[name] = tuple(values.get(name, ()))
        return cls(**values)
