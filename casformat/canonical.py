"""Canonical JSON: the one owner of document bytes.

Pure functions over bytes and values; no disk, no network.  Canonical JSON is UTF-8,
keys sorted, no insignificant whitespace and no floats.  Untrusted JSON is parsed with
size, depth, float and duplicate-key limits (``parse_json``).
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from deltagen.digests import blake3_bytes

from .errors import DocumentError, DocumentTooLarge

MAX_DOCUMENT_BYTES = 64 << 20  # a manifest of ~200k files fits
#: The one cap on a manifest envelope's canonical bytes: what the server takes at publish
#: (``max_document_bytes`` may only lower it), what a client accepts over the network, full
#: or rebuilt from a delta (``max_manifest_bytes`` may only lower it), and what it reads
#: back from its cache.
MAX_MANIFEST_BYTES = MAX_DOCUMENT_BYTES
MAX_DEPTH = 32


# --------------------------------------------------------------------------- JSON

def _check_value(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise DocumentError("document nested too deeply")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        raise DocumentError("floats are not allowed in canonical JSON")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise DocumentError("object keys must be strings")
            _check_value(item, depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_value(item, depth + 1)
        return
    raise DocumentError(f"type {type(value).__name__} cannot be encoded")


def canonical_bytes(value: Any) -> bytes:
    """The canonical encoding of a JSON value."""
    _check_value(value)
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 encoding
        raise DocumentError("document holds a string that is not valid Unicode (lone surrogate)") from exc


def document_digest(value: Any) -> str:
    """BLAKE3 of the canonical bytes (the manifest digest is this of ``signed``)."""
    return blake3_bytes(canonical_bytes(value))


def _nesting_depth(data: bytes) -> int:
    """Maximum bracket depth of a JSON text, strings skipped (linear scan)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _reject_float(text: str) -> Any:
    raise DocumentError(f"floats are not allowed: {text[:20]}")


def _reject_constant(text: str) -> Any:
    raise DocumentError(f"{text} is not allowed")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DocumentError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_json(data: bytes, max_bytes: int = MAX_DOCUMENT_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON with size, depth, float and duplicate-key limits."""
    if len(data) > max_bytes:
        raise DocumentTooLarge(f"document of {len(data)} bytes exceeds the limit of {max_bytes}")
    if _nesting_depth(data) > max_depth:
        raise DocumentError(f"document nested deeper than {max_depth}")
    try:
        text = data.decode("utf-8")
        value = json.loads(text, parse_float=_reject_float, parse_constant=_reject_constant,
                           object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as exc:
        raise DocumentError("document is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise DocumentError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except ValueError as exc:  # e.g. an integer beyond Python's int conversion digit limit
        raise DocumentError(f"malformed JSON: {exc}"[:200]) from exc
    if "\\u" in text:
        # A \u escape can decode to a lone surrogate, which has no canonical (UTF-8) bytes.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DocumentError("document holds an unpaired surrogate (\\uD800-\\uDFFF)") from exc
    return value
