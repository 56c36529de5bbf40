"""Release manifests and channel documents: structure checks, pure functions.

``manifest_problems`` lists everything wrong with a manifest's ``signed`` part
so that a publisher sees all of it at once; ``check_manifest`` raises with that
list.  Signatures are checked by ``documents.verify`` against a root role.
"""
from __future__ import annotations

from typing import Any, cast

from deltagen.digests import is_digest

from .chunks import check_index_size
from .compat import check_policy
from .errors import DocumentError, InvalidPath
from .paths import check_name, check_tree
from .times import parse_time

MANIFEST_FIELDS = {"schema", "product", "version", "created", "files"}
FILE_FIELDS = {"path", "type", "mode", "size", "blake3", "sha256"}
CHUNKED_FIELDS = FILE_FIELDS | {"chunks"}   # a chunked file also names its index (casformat/chunks.py)
CHUNKS_FIELDS = {"index", "size"}
SYMLINK_FIELDS = {"path", "type", "target"}
MAX_FILES = 1_000_000


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def chunks_problems(chunks: Any, file_size: Any) -> list[str]:
    """What is wrong with a file entry's ``chunks`` member ({index, size})."""
    if not isinstance(chunks, dict) or set(chunks) != CHUNKS_FIELDS:
        return [f"chunks must be exactly {sorted(CHUNKS_FIELDS)}"]
    problems = []
    if not is_digest(chunks["index"]):
        problems.append("chunks index must be 64 lowercase hex chars")
    if not _is_int(chunks["size"]):
        problems.append("chunks size must be an integer")
    elif _is_int(file_size) and file_size >= 0:
        problems.extend(check_index_size(chunks["size"], file_size))
    return problems


def is_chunked(entry: Any) -> bool:
    """A file entry whose content is stored as chunks (it names a chunk index)."""
    return isinstance(entry, dict) and entry.get("type") == "file" and "chunks" in entry


def manifest_problems(signed: Any, casefold: bool = False) -> list[str]:
    if not isinstance(signed, dict):
        return ["manifest 'signed' must be an object"]
    problems: list[str] = []
    unknown = set(signed) - MANIFEST_FIELDS
    if unknown:
        problems.append(f"unknown manifest fields: {sorted(unknown)}")
    if signed.get("schema") != 1:
        problems.append("schema must be 1")
    for field in ("product", "version"):
        try:
            check_name(field, signed.get(field))
        except InvalidPath as exc:
            problems.append(exc.message)
    try:
        parse_time(signed.get("created"))
    except DocumentError as exc:
        problems.append(f"created: {exc.message}")
    files = signed.get("files")
    if not isinstance(files, list):
        return problems + ["files must be a list"]
    if len(files) > MAX_FILES:
        return problems + [f"more than {MAX_FILES} files"]
    tree: list[tuple[object, str, object]] = []
    for index, entry in enumerate(files):
        where = f"files[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where} must be an object")
            continue
        kind = entry.get("type")
        path = entry.get("path")
        where = f"{where} ({path!r})" if isinstance(path, str) else where
        if kind == "file":
            fields = CHUNKED_FIELDS if "chunks" in entry else FILE_FIELDS
            if set(entry) != fields:
                problems.append(f"{where}: fields must be exactly {sorted(FILE_FIELDS)} (and optionally chunks)")
                continue
            mode, size = entry["mode"], entry["size"]
            if not _is_int(mode) or not 0 <= mode <= 0o7777:
                problems.append(f"{where}: mode must be an integer 0..4095")
            elif mode & 0o6000:
                problems.append(f"{where}: setuid/setgid bits are not allowed")
            if not _is_int(size) or size < 0:
                problems.append(f"{where}: size must be a non-negative integer")
            if not is_digest(entry["blake3"]) or not is_digest(entry["sha256"]):
                problems.append(f"{where}: blake3 and sha256 must be 64 lowercase hex chars")
            if "chunks" in entry:
                problems.extend(f"{where}: {p}" for p in chunks_problems(entry["chunks"], size))
            tree.append((path, "file", None))
        elif kind == "symlink":
            if set(entry) != SYMLINK_FIELDS:
                problems.append(f"{where}: fields must be exactly {sorted(SYMLINK_FIELDS)}")
                continue
            tree.append((path, "symlink", entry["target"]))
        else:
            problems.append(f"{where}: unknown type {kind!r} (file or symlink)")
    paths = [p for p, _, _ in tree if isinstance(p, str)]
    if paths != sorted(paths):
        problems.append("files must be sorted by path (code point order) so deltas rebuild them exactly")
    problems.extend(check_tree(tree, casefold=casefold))
    return problems


def check_manifest(signed: Any, casefold: bool = False) -> dict[str, Any]:
    problems = manifest_problems(signed, casefold=casefold)
    if problems:
        raise DocumentError("invalid manifest", detail=problems)
    return cast(dict[str, Any], signed)


MAX_ROLLOUT_CLIENTS = 10_000
MAX_PINNED_RELEASES = 64
CHANNEL_FIELDS = {"schema", "product", "channel", "sequence", "expires", "release", "manifest", "rollout"}


def check_pins(pins: Any) -> None:
    """A channel document's optional ``pins`` (per-node rollback, a departure from the contract,
    docs/rollouts.md): ``[{release, manifest, clients: [ids]}]``, each client id in one pin."""
    if not isinstance(pins, list) or len(pins) > MAX_PINNED_RELEASES:
        raise DocumentError(f"pins must be a list of at most {MAX_PINNED_RELEASES} {{release, manifest, clients}}")
    seen: set[str] = set()
    for pin in pins:
        if not isinstance(pin, dict) or set(pin) != {"release", "manifest", "clients"}:
            raise DocumentError("each pin is {release, manifest, clients}")
        check_name("version", pin["release"])
        if not is_digest(pin["manifest"]):
            raise DocumentError("pin manifest must be a digest")
        clients = pin["clients"]
        if (not isinstance(clients, list) or not clients
                or not all(isinstance(c, str) and 1 <= len(c) <= 128 for c in clients)):
            raise DocumentError("pin clients must be a non-empty list of client ids")
        if seen.intersection(clients) or len(set(clients)) != len(clients):
            raise DocumentError("a client id is pinned twice")
        seen.update(clients)
    if len(seen) > MAX_ROLLOUT_CLIENTS:
        raise DocumentError(f"at most {MAX_ROLLOUT_CLIENTS} pinned client ids")


def check_channel(signed: Any) -> dict[str, Any]:
    """Structure of a channel document's ``signed`` part."""
    if not isinstance(signed, dict) or set(signed) - {"critical", "pins", "policy"} != CHANNEL_FIELDS:
        raise DocumentError(f"channel document fields must be exactly {sorted(CHANNEL_FIELDS)} "
                            "(and optionally critical, pins, policy)")
    check_pins(signed.get("pins", []))
    if "policy" in signed:   # version compatibility policy (casformat/compat.py)
        check_policy(signed["policy"])
    critical = signed.get("critical", [])
    if not isinstance(critical, list) or len(critical) > 2 or not all(isinstance(v, str) for v in critical):
        raise DocumentError("critical must be a list of at most two versions")
    if signed["schema"] != 1:
        raise DocumentError("channel schema must be 1")
    check_name("product", signed["product"])
    check_name("channel", signed["channel"])
    check_name("version", signed["release"])
    if not _is_int(signed["sequence"]) or signed["sequence"] < 1:
        raise DocumentError("channel sequence must be a positive integer")
    parse_time(signed["expires"])
    if not is_digest(signed["manifest"]):
        raise DocumentError("channel manifest must be a digest")
    rollout = signed["rollout"]
    if rollout is not None:
        keys = set(rollout) if isinstance(rollout, dict) else set()
        if not isinstance(rollout, dict) or keys - {"clients"} != {"release", "manifest", "percent", "salt"}:
            raise DocumentError("rollout must be null or {release, manifest, percent, salt[, clients]}")
        # Departure from the contract (docs/rollouts.md): the batches strategy lists admitted client ids.
        clients = rollout.get("clients", [])
        if (not isinstance(clients, list) or len(clients) > MAX_ROLLOUT_CLIENTS
                or not all(isinstance(c, str) and 1 <= len(c) <= 128 for c in clients)):
            raise DocumentError(f"rollout clients must be a list of at most {MAX_ROLLOUT_CLIENTS} client ids")
        check_name("version", rollout["release"])
        if not is_digest(rollout["manifest"]):
            raise DocumentError("rollout manifest must be a digest")
        if not _is_int(rollout["percent"]) or not 0 <= rollout["percent"] <= 100:
            raise DocumentError("rollout percent must be an integer 0..100")
        if not isinstance(rollout["salt"], str):
            raise DocumentError("rollout salt must be a string")
    return signed
