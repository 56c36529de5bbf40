"""Client configuration: named settings with defaults, ranges and one validation, stored in
ROOT/.cas/config.json.

``SETTINGS`` describes every setting (type, allowed range, unit, whether ``cas-client
config set`` may change it).  The same checks run wherever a value comes from: the file
(``ClientConfig.from_dict``), ``cas-client config set`` (``parse_value`` then
``ClientConfig.from_dict`` of the changed file), the flags of ``init``/``update``
(``parse_value``) and the library (``ClientConfig(...)``, in ``__post_init__``).  A bad
value raises ``ConfigError`` naming the setting and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from casformat.canonical import MAX_MANIFEST_BYTES

from .errors import ClientError

if TYPE_CHECKING:
    from casformat.cms import CmsPolicy


class ConfigError(ClientError):
    """A setting has a value outside its type or range (nothing was written)."""

    code = "bad_config"


@dataclass(frozen=True)
class Setting:
    """What one setting accepts."""

    kind: str                       # int | float | bool | str | list | urls
    help: str
    low: float | None = None
    high: float | None = None
    optional: bool = False          # None (unset) allowed
    settable: bool = True           # False: fixed at init (product, channel, client id)
    unit: str = ""                  # bytes | s | "" (for parsing "10MiB", "30s" and for messages)
    zero: str = ""                  # what 0 means, when it means something special

    def allowed(self) -> str:
        """The allowed values in words, for error messages and ``config show``."""
        if self.kind == "bool":
            return "true or false"
        if self.kind in ("str", "list", "urls"):
            what = {"str": "a string", "list": "a list of strings",
                    "urls": "a non-empty list of http(s) URLs"}[self.kind]
            return what + (" (or unset)" if self.optional else "")
        number = "an integer" if self.kind == "int" else "a number"
        if self.unit == "bytes":
            words = f"a size from {_size(self.low)} to {_size(self.high)} (bytes, or with K, M, G, T: 10M = 10 MiB)"
        else:
            unit = " seconds" if self.unit == "s" else ""
            words = f"{number} from {_num(self.low)} to {_num(self.high)}{unit}"
        return words + (f" (0: {self.zero})" if self.zero else "")


def _num(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


def _size(value: float | None) -> str:
    if not value:
        return "0"
    for unit, scale in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if value >= scale and value % scale == 0:
            return f"{int(value // scale)} {unit}"
    return _num(value)

SETTINGS: dict[str, Setting] = {
    "servers": Setting("urls", "servers and mirrors, tried in order (mirrors first, the origin last)"),
    "product": Setting("str", "the product (fixed at init)", settable=False),
    "channel": Setting("str", "the channel (fixed at init)", settable=False),
    "client_id": Setting("str", "this client's stable id (fixed at init)", settable=False),
    "health_cmd": Setting("str", "health check run in ROOT/current after a swap", optional=True),
    "health_timeout_s": Setting("float", "a health check running longer fails", 1, 86400, unit="s"),
    "keep_versions": Setting("int", "after a successful update, keep the most recently installed versions "
                             "(current, previous and factory are always kept)", 0, 1000, zero="never remove "
                             "versions automatically"),
    "windows": Setting("list", "maintenance windows, e.g. 'mon-fri 02:00-04:00'; none: always open"),
    "blackouts": Setting("list", "no updates in START/END, e.g. 2026-12-20/2027-01-05"),
    "timezone": Setting("str", "IANA time zone of the windows and blackouts"),
    "report_token": Setting("str", "token sent with reports (only to report_url)", optional=True),
    "report_url": Setting("str", "the server (the origin) that takes reports; default: the last server",
                          optional=True),
    "concurrency": Setting("int", "downloads in parallel", 1, 64),
    "bandwidth_bytes_per_s": Setting("int", "download bandwidth limit", 0, TIB, unit="bytes",
                                     zero="unlimited"),
    "attempts": Setting("int", "tries per server and object", 1, 20),
    "backoff_s": Setting("float", "first retry delay, doubled at each retry", 0, 3600, unit="s"),
    "max_backoff_s": Setting("float", "longest retry delay (the cap of the doubling)", 0, 3600, unit="s"),
    "backoff_jitter": Setting("float", "each retry delay is varied by up to this fraction (spreads a fleet)",
                              0, 1),
    "connect_timeout_s": Setting("float", "connecting to a server", 0.1, 600, unit="s"),
    "read_timeout_s": Setting("float", "a sender silent this long is cut off", 0.1, 3600, unit="s"),
    "min_rate_bytes_per_s": Setting("int", "a sender slower than this on average ...", 0, TIB, unit="bytes",
                                    zero="no minimum"),
    "slow_grace_s": Setting("float", "... once this long has passed is cut off (and retried)", 0, 3600,
                            unit="s"),
    "max_channel_bytes": Setting("int", "largest channel document accepted", KIB, 16 * MIB, unit="bytes"),
    "max_root_bytes": Setting("int", "largest root document accepted", KIB, 64 * MIB, unit="bytes"),
    "max_manifest_bytes": Setting("int", "largest manifest accepted (may only lower casformat's MAX_MANIFEST_BYTES)",
                                  KIB, MAX_MANIFEST_BYTES, unit="bytes"),
    "max_delta_bytes": Setting("int", "largest manifest delta accepted", KIB, 4 * GIB, unit="bytes"),
    "max_root_rotations": Setting("int", "root rotations followed in one run", 1, 1024),
    "free_space_factor": Setting("float", "free space needed, times the bytes to write", 1, 100),
    "fresh_install_delta": Setting("bool", "a first install asks for the delta from nothing "
                                   "(compressed forms)"),
    "report_timeout_s": Setting("float", "a report never holds an update longer", 0.1, 600, unit="s"),
    "keep_partial_downloads": Setting("bool", "keep partial downloads for resuming"),
    "cms_trust_anchors": Setting("str", "X.509 trust anchors for CMS signatures: inline PEM or an absolute "
                                 "PEM file path", optional=True),
    "require_cms": Setting("bool", "refuse any manifest without a valid CMS code-signing signature"),
}


@dataclass(frozen=True)
class ClientConfig:
    servers: tuple[str, ...]
    product: str
    channel: str
    client_id: str
    health_cmd: str | None = None
    health_timeout_s: float = 30.0
    keep_versions: int = 3                  # after a successful update; 0: only ``cas-client gc`` removes
    # Maintenance windows (client/windows.py): when empty, updates apply at any time.
    windows: tuple[str, ...] = ()           # e.g. "mon-fri 02:00-04:00"
    blackouts: tuple[str, ...] = ()         # e.g. "2026-12-20/2027-01-05"
    timezone: str = "UTC"                   # IANA name the windows are in
    report_token: str | None = None         # sent with reports when the server requires one
    report_url: str | None = None           # where reports (and report_token) go; default: the last server
    # Fetching.
    concurrency: int = 4
    bandwidth_bytes_per_s: int = 0          # 0: unlimited
    attempts: int = 5                       # per server, per object: retries after 1, 2, 4, 8 s
    backoff_s: float = 1.0                  # first retry delay, doubled each time ...
    max_backoff_s: float = 8.0              # ... up to this
    backoff_jitter: float = 0.0             # each delay varied by up to this fraction
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
        for name, setting in SETTINGS.items():
            object.__setattr__(self, name, check_value(name, getattr(self, name), setting))
        check_together(self)

    def cms_policy(self) -> CmsPolicy | None:
        """The CMS policy for ``trust.accept_manifest`` (``None`` when not configured); fails closed."""
        from casformat.cms import policy_from_settings
        return policy_from_settings(self.cms_trust_anchors, self.require_cms)

    def retry_delay(self, retry: int, random_fraction: float = 0.5) -> float:
        """The wait before retry number ``retry`` (0-based): ``backoff_s`` doubled each time, capped
        at ``max_backoff_s``, varied by ``backoff_jitter`` (``random_fraction`` in [0, 1))."""
        base = min(self.backoff_s * float(2 ** min(retry, 60)), self.max_backoff_s)
        return max(0.0, base * (1 + self.backoff_jitter * (2 * random_fraction - 1)))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["servers"] = list(self.servers)
        data["windows"], data["blackouts"] = list(self.windows), list(self.blackouts)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientConfig:
        """The configuration in ``data`` (the file's JSON), every value checked (``ConfigError``)."""
        if not isinstance(data, dict):
            raise ConfigError("the client configuration must be a JSON object")
        missing = [n for n in ("servers", "product", "channel", "client_id") if n not in data]
        if missing:
            raise ConfigError(f"the client configuration lacks {', '.join(missing)} (run cas-client init)")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if not isinstance(values.get("extra", {}), dict):
            values["extra"] = {}
        for name in ("servers", "windows", "blackouts"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_value(name: str, value: Any, setting: Setting | None = None) -> Any:
    """``value`` for setting ``name``, normalised (int, float, tuple), or ``ConfigError``."""
    setting = setting or SETTINGS[name]

    def bad(got: object) -> ConfigError:
        shown = repr(got) if isinstance(got, str) else str(got)
        return ConfigError(f"{name} must be {setting.allowed()}; got {shown[:200]}")

    if setting.optional and (value is None or value == ""):
        return None   # unset (an empty optional string, e.g. --health-cmd "", is unset too)
    if setting.kind == "bool":
        if not isinstance(value, bool):
            raise bad(value)
        return value
    if setting.kind in ("int", "float"):
        if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
            raise bad(value)
        if setting.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise bad(value)
            value = int(value)
        else:
            value = float(value)
        if (setting.low is not None and value < setting.low) or (setting.high is not None and value > setting.high):
            raise bad(value)
        return value
    if setting.kind == "str":
        if not isinstance(value, str) or not value or len(value) > 64 * KIB or "\x00" in value:
            raise bad(value)
        return value
    # lists
    if not isinstance(value, list | tuple) or len(value) > 64 or not all(
            isinstance(v, str) and v and len(v) <= 4096 for v in value):
        raise bad(value)
    if setting.kind == "urls":
        if not value:
            raise bad("an empty list")
        for url in value:
            check_url(name, url)
    return tuple(value)


def check_url(name: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{name}: {url!r} is not an http(s) URL of a server (scheme, host, optional path)")
    return url


def check_together(config: ClientConfig) -> None:
    """The checks that involve several settings, or parse a value (windows, time zone, URLs)."""
    from . import windows
    if config.report_url is not None:
        check_url("report_url", config.report_url)
    if config.report_token and len(config.servers) > 1 and not config.report_url:
        raise ConfigError("with several servers, say which one takes reports and the report token "
                          "(report_url, --report-url: the origin): it must never go to a mirror")
    if config.max_backoff_s < config.backoff_s:
        raise ConfigError(f"max_backoff_s ({config.max_backoff_s:g}) must be at least backoff_s "
                          f"({config.backoff_s:g})")
    try:
        windows.schedule(config.windows, config.blackouts, config.timezone)
    except ClientError as exc:
        raise ConfigError(exc.message) from None


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def parse_value(name: str, texts: list[str]) -> Any:
    """The value of setting ``name`` from command-line words (``config set``, flags), checked.

    Sizes take K/M/G/T (binary: 10M = 10 MiB), durations ms/s/m/h; a list takes one word per
    element; ``none`` unsets an optional string."""
    setting = SETTINGS.get(name)
    if setting is None:
        raise unknown_setting(name)
    if setting.kind in ("list", "urls"):
        return check_value(name, list(texts), setting)
    if len(texts) != 1:
        raise ConfigError(f"{name} takes one value, {setting.allowed()}; got {len(texts)}")
    text = texts[0]
    value: Any = text
    if setting.kind == "bool":
        low = text.strip().lower()
        if low not in _TRUE + _FALSE:
            raise ConfigError(f"{name} must be {setting.allowed()}; got {text!r}")
        value = low in _TRUE
    elif setting.kind in ("int", "float"):
        value = _parse_number(name, text, setting)
    elif setting.optional and text.strip().lower() in ("none", "null", ""):
        value = None
    return check_value(name, value, setting)


def _parse_number(name: str, text: str, setting: Setting) -> float:
    error = ConfigError(f"{name} must be {setting.allowed()}; got {text!r}")
    if setting.unit == "bytes":
        match = _SIZE.match(text)
        if not match:
            raise error
        return float(match.group(1)) * {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": TIB}[match.group(2).lower()]
    if setting.unit == "s":
        match = _DURATION.match(text)
        if not match:
            raise error
        scale = {None: 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600}[(match.group(2) or "").lower() or None]
        return float(match.group(1)) * scale
    try:
        number = float(text)
    except ValueError:
        raise error from None
    if not math.isfinite(number):
        raise error
    return number


def unknown_setting(name: str) -> ConfigError:
    import difflib
    close = difflib.get_close_matches(name, list(SETTINGS), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"there is no setting {name!r}{hint}; `cas-client config show ROOT` lists them")


def default_of(name: str) -> Any:
    """The default of setting ``name`` (None for the ones fixed at init)."""
    spec = next(f for f in dataclasses.fields(ClientConfig) if f.name == name)
    if spec.default is not dataclasses.MISSING:
        value = spec.default
        return list(value) if isinstance(value, tuple) else value
    return None


def changed(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The file's JSON ``data`` with ``changes`` (None: back to the default, the key removed)
    applied, after checking the result as a whole; the caller writes it only when this returns."""
    for name in changes:
        setting = SETTINGS.get(name)
        if setting is None:
            raise unknown_setting(name)
        if not setting.settable:
            raise ConfigError(f"{name} is fixed at init (it names this client's place in the channel); "
                              "initialise a new install root to change it")
    merged = dict(data)
    for name, value in changes.items():
        if value is None:
            if name == "servers":
                raise ConfigError("servers cannot be unset: the client needs at least one server")
            merged.pop(name, None)
        else:
            merged[name] = list(value) if isinstance(value, tuple) else value
    config = ClientConfig.from_dict(merged)
    if config.cms_trust_anchors or config.require_cms:
        from casformat.errors import DocumentError
        try:
            config.cms_policy()
        except DocumentError as exc:
            raise ConfigError(f"cms_trust_anchors / require_cms: {exc.message}") from None
    return merged


def stored_form(config: ClientConfig, given: dict[str, Any]) -> dict[str, Any]:
    """What ``init`` writes: the settings fixed at init and the ones given (not None); every
    other setting stays at its default, so a later default applies (``config show`` marks them)."""
    data = config.to_dict()
    keep = {"servers", "product", "channel", "client_id"} | {k for k, v in given.items() if v is not None}
    return {k: data[k] for k in SETTINGS if k in keep}
