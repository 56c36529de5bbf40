"""``cas serve``: the HTTP server (uvicorn, uvloop, httptools with cas/http/protocol.py's limits) and its delta worker."""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Any

from .. import keys
from ..config import load_config
from ..repo import open_repo
from .command import Subcommands, add_command


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server; ``--init-keys`` makes keys first on a store that has none."""
    import uvicorn

    from ..http.memtrace import install_from_env, set_arena_max
    from ..http.protocol import ConnectionLimits, LimitedHttpToolsProtocol
    install_from_env()  # CAS_MEMTRACE_DIR, CAS_TRACEMALLOC: opt-in memory dumps on SIGUSR2 (cas/http/memtrace.py)
    config = load_config(args.store, args.config, host=args.host, port=args.port)
    if config.malloc_arena_max > 0 and "MALLOC_ARENA_MAX" not in os.environ:
        set_arena_max(config.malloc_arena_max)  # before any thread: per-thread arenas keep freed memory
    repo = open_repo(config)
    if args.init_keys and repo.root() is None:
        keys.init_keys(Path(config.store), repo.meta)
        repo.reload_keys()
        print(f"cas: made new keys; clients trust {config.store}/root.json", file=sys.stderr)
    if repo.root() is None and config.enforce_signatures and not config.mirror_of:
        print(f"cas: warning: no keys in {config.store}; run `cas keys init --store {config.store}` "
              "(publishing is refused until then)", file=sys.stderr)
    limits = ConnectionLimits(max_header_bytes=config.http_max_header_bytes,
                              header_timeout_seconds=config.http_header_timeout_seconds,
                              body_idle_timeout_seconds=config.http_body_idle_timeout_seconds)
    common: dict[str, Any] = dict(host=config.host, port=config.port, log_level=args.log_level,
                                  access_log=args.access_log, loop="uvloop",
                                  http=functools.partial(LimitedHttpToolsProtocol, limits=limits),
                                  h11_max_incomplete_event_size=config.http_max_header_bytes,
                                  timeout_keep_alive=config.http_keep_alive_seconds)
    os.environ["CAS_STORE"] = str(config.store)
    if args.config:
        os.environ["CAS_CONFIG"] = str(Path(args.config).resolve())
    if args.workers > 1:
        uvicorn.run("cas.http.serve:make_app", factory=True, workers=args.workers, **common)
    else:
        from ..http.app import create_app
        uvicorn.run(create_app(repo), **common)
    return 0


def register(sub: Subcommands) -> None:
    """``cas serve``."""
    p = add_command(sub, "serve", cmd_serve, help="run the HTTP server")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--init-keys", action="store_true", help="make keys first when the store has none")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--access-log", action="store_true")
