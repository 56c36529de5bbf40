"""``cas tokens add|list|remove``: named bearer tokens in the server's ``config.toml``.

A token is kept only as its SHA-256 (``[[tokens]] name, scope, sha256``); ``add`` prints the
secret once.  The file is edited with tomlkit, so its comments and other settings stay as
they were, and the edited text is parsed again (``load_config``'s own checks) before it
replaces the file atomically.  A running server reads its tokens when it starts: restart it
after a change.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

import tomlkit

from ..config import SCOPES, check_token_name, hash_token, load_config
from ..errors import Conflict, Invalid, NotFound
from .command import Subcommands, add_command, add_group, emit

SECRET_BYTES = 32


def _config_path(args: argparse.Namespace) -> Path:
    config = args.config or os.environ.get("CAS_CONFIG")
    if config:
        return Path(config)
    store = args.store or os.environ.get("CAS_STORE") or "./cas-data"
    return Path(store) / "config.toml"


def _read(path: Path) -> tomlkit.TOMLDocument:
    if not path.exists():
        return tomlkit.document()
    try:
        return tomlkit.parse(path.read_text(encoding="utf-8"))
    except tomlkit.exceptions.TOMLKitError as exc:
        raise Invalid(f"{path} is not valid TOML: {exc}", code="bad_config") from None


def _entries(doc: tomlkit.TOMLDocument) -> Any:
    tokens = doc.get("tokens")
    if tokens is None:
        return []
    if not isinstance(tokens, list):
        raise Invalid("tokens in config.toml must be a list of {name, scope, sha256} tables", code="bad_config")
    return tokens


def _write(path: Path, args: argparse.Namespace, doc: tomlkit.TOMLDocument) -> None:
    """Replace ``path`` with ``doc`` after checking the server would accept it."""
    text = tomlkit.dumps(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.", suffix=".toml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            load_config(args.store or path.parent, tmp, env={})
        except ValueError as exc:
            raise Invalid(f"the change would make the configuration invalid: {exc}", code="bad_config") from None
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _describe(entry: Any) -> dict[str, str]:
    digest = entry.get("sha256") or hash_token(str(entry.get("token", "")))
    return {"name": str(entry.get("name", "")), "scope": str(entry.get("scope", "")), "sha256": str(digest)}


def new_secret() -> str:
    """A random token (``SECRET_BYTES`` of entropy, URL-safe) that never begins with '-': one
    in 64 did, and ``--token "$(cat ops.token)"`` then read as an option (``cas-client init
    --report-token``: "expected one argument")."""
    while True:
        secret = secrets.token_urlsafe(SECRET_BYTES)
        if not secret.startswith("-"):
            return secret


def cmd_tokens_add(args: argparse.Namespace) -> int:
    """A new random token with a name and a scope; its hash goes to config.toml, the secret is printed once."""
    try:
        name = check_token_name(args.name)
    except ValueError as exc:
        raise Invalid(str(exc), code="bad_token_name") from None
    path = _config_path(args)
    doc = _read(path)
    entries = _entries(doc)
    if any(entry.get("name") == name for entry in entries):
        raise Conflict(f"a token named {name!r} exists; remove it first (cas tokens remove {name})",
                       code="token_exists")
    secret = new_secret()
    table = tomlkit.table()
    table.add("name", name)
    table.add("scope", args.scope)
    table.add("sha256", hash_token(secret))
    if "tokens" in doc:  # [[tokens]] tables or an inline ``tokens = [...]`` array
        doc["tokens"].append(table)
    else:
        aot = tomlkit.aot()
        aot.append(table)
        doc.append("tokens", aot)
    _write(path, args, doc)
    data = {"name": name, "scope": args.scope, "sha256": hash_token(secret), "token": secret, "config": str(path)}
    emit(args, data, secret)
    if not args.json:
        print(f"cas: token {name!r} ({args.scope}) added to {path}; the secret above is shown only now. "
              "Restart the server to use it.", file=sys.stderr)
    return 0


def cmd_tokens_list(args: argparse.Namespace) -> int:
    """The configured tokens: name, scope and the start of their hash (never a secret)."""
    path = _config_path(args)
    listed = [_describe(entry) for entry in _entries(_read(path))]
    lines = [f"{t['name'] or '(unnamed)':24} {t['scope']:8} sha256:{t['sha256'][:16]}" for t in listed]
    emit(args, listed, "\n".join(lines) if lines else f"no tokens in {path}")
    return 0


def cmd_tokens_remove(args: argparse.Namespace) -> int:
    """Remove a named token from config.toml (it stops working when the server restarts)."""
    path = _config_path(args)
    doc = _read(path)
    entries = _entries(doc)
    found = [i for i, entry in enumerate(entries) if entry.get("name") == args.name]
    if not found:
        raise NotFound(f"no token named {args.name!r} in {path}", code="unknown_token")
    removed = _describe(entries[found[0]])
    del entries[found[0]]
    if not entries:
        del doc["tokens"]
    _write(path, args, doc)
    emit(args, removed, f"removed token {args.name!r} ({removed['scope']}) from {path}; restart the server")
    return 0


def register(sub: Subcommands) -> None:
    """``cas tokens add|list|remove``."""
    t = add_group(sub, "tokens", "named bearer tokens in config.toml")
    for name, func, help in (("add", cmd_tokens_add, "make a token, print its secret once"),
                             ("list", cmd_tokens_list, "list tokens (names, scopes, hash prefixes)"),
                             ("remove", cmd_tokens_remove, "remove a token by name")):
        p = add_command(t, name, func, help=help)
        p.add_argument("--config", default=None, help="config file (default $CAS_CONFIG or STORE/config.toml)")
        if name != "list":
            p.add_argument("name", help="the token's name (recorded in audit logs as token:NAME)")
        if name == "add":
            p.add_argument("--scope", required=True, choices=SCOPES)

