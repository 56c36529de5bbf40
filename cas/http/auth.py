"""Bearer tokens with scopes read < publish < admin, and ``report`` (reports only).

Tokens are kept only as SHA-256 hashes and compared in constant time against
every configured hash.
"""
from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from ..config import Config, hash_token
from ..errors import Forbidden, TooManyRequests, Unauthorized

#: ``report`` is below ``read``: a fleet's report token may send reports and nothing else.
RANK = {"report": -1, "read": 0, "publish": 1, "admin": 2}


def token_identity(config: Config, token: str) -> tuple[str, str] | None:
    """(scope, label) of a token: its label is its configured name, else its scope."""
    offered = hash_token(token)
    found: tuple[str, str] | None = None
    for digest, scope in config.token_hashes.items():
        if hmac.compare_digest(offered, digest) and (found is None or RANK[scope] > RANK[found[0]]):
            found = scope, config.token_names.get(digest, scope)
    return found


def token_scope(config: Config, token: str) -> str | None:
    identity = token_identity(config, token)
    return identity[0] if identity else None


def token_fingerprint(request: Request) -> str | None:
    """A short, stable, non-reversible label of the request's bearer token (after ``caller``
    accepted it): the first 16 hex of SHA-256 of its SHA-256, or None without a token."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    _, _, token = header.partition(" ")
    return hashlib.sha256(hash_token(token.strip()).encode()).hexdigest()[:16]


def caller(request: Request) -> str | None:
    """The scope of the request's bearer token; raises on a bad token."""
    identity = caller_identity(request)
    return identity[0] if identity else None


def caller_identity(request: Request) -> tuple[str, str] | None:
    """(scope, label) of the request's bearer token (label: its name, else its scope); raises
    on a bad token."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    failures = request.app.state.auth_failures
    address = request.client.host if request.client else "unknown"
    if failures.exhausted(address):
        raise TooManyRequests("too many failed authentications from this address; try later")
    kind, _, token = header.partition(" ")
    identity = token_identity(request.app.state.config, token.strip()) if kind.lower() == "bearer" else None
    if identity is None:
        failures.hit(address)
        if kind.lower() != "bearer" or not token.strip():
            raise Unauthorized("use 'Authorization: Bearer <token>'", code="bad_token")
        raise Unauthorized("unknown token", code="bad_token")
    return identity


def require(request: Request, needed: str) -> str:
    """Check the request may act with ``needed`` scope; returns an actor label for audit logs:
    ``token:NAME`` (the token's configured name, else its scope) or ``anonymous``."""
    config: Config = request.app.state.config
    identity = caller_identity(request)
    if identity is None:
        if needed == "read" and config.anonymous_read:
            return "anonymous"
        raise Unauthorized(f"a {needed} token is required", code="token_required")
    scope, label = identity
    if RANK[scope] < RANK[needed]:
        raise Forbidden(f"a {scope} token cannot do this; {needed} is required", code="insufficient_scope")
    return f"token:{label}"


def token_owner(request: Request) -> str:
    """Who a request's quota is counted for: its token's ``token_fingerprint``, or "anonymous"."""
    return token_fingerprint(request) or "anonymous"
