"""Client configuration and limits: named values with defaults, stored in ROOT/.cas/config.json."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClientConfig:
    servers: tuple[str, ...]
    product: str
    channel: str
    client_id: str
    health_cmd: str | None = None
    health_timeout_s: float = 60.0
    # Fetching.
    concurrency: int = 4
    bandwidth_bytes_per_s: int = 0          # 0: unlimited
    attempts: int = 4                       # per server, per object
    backoff_s: float = 0.5                  # first retry delay, doubled each time, with jitter
    max_backoff_s: float = 30.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0            # a sender silent this long is cut off
    # Documents without a size in signed metadata are capped.
    max_channel_bytes: int = 64 << 10
    max_root_bytes: int = 1 << 20
    max_manifest_bytes: int = 64 << 20
    max_delta_bytes: int = 128 << 20
    max_root_rotations: int = 32
    free_space_factor: float = 2.0
    keep_partial_downloads: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["servers"] = list(self.servers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClientConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["servers"] = tuple(values["servers"])
        return cls(**values)
