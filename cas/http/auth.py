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


def token_scope(config: Config, token: str) -> str | None:
    offered = hash_token(token)
    found: str | None = None
    for digest, scope in config.token_hashes.items():
        if hmac.compare_digest(offered, digest) and (found is None or RANK[scope] > RANK[found]):
            found = scope
    return found


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
    header = request.headers.get("authorization")
    if header is None:
        return None
    failures = request.app.state.auth_failures
    address = request.client.host if request.client else "unknown"
    if failures.exhausted(address):
        raise TooManyRequests("too many failed authentications from this address; try later")
    kind, _, token = header.partition(" ")
    scope = token_scope(request.app.state.config, token.strip()) if kind.lower() == "bearer" else None
    if scope is None:
        failures.hit(address)
        if kind.lower() != "bearer" or not token.strip():
            raise Unauthorized("use 'Authorization: Bearer <token>'", code="bad_token")
        raise Unauthorized("unknown token", code="bad_token")
    return scope


def require(request: Request, needed: str) -> str:
    """Check the request may act with ``needed`` scope; returns an actor label."""
    config: Config = request.app.state.config
    scope = caller(request)
    if scope is None:
        if needed == "read" and config.anonymous_read:
            return "anonymous"
        raise Unauthorized(f"a {needed} token is required", code="token_required")
    if RANK[scope] < RANK[needed]:
        raise Forbidden(f"a {scope} token cannot do this; {needed} is required", code="insufficient_scope")
    return f"token:{scope}"


def token_owner(request: Request) -> str:
    """Who a request's quota is counted for: its token's ``token_fingerprint``, or "anonymous"."""
    return token_fingerprint(request) or "anonymous"
