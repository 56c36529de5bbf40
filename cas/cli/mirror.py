"""``cas mirror sync|export``: a verified copy of another server, and a static tree of it."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import CasError
from .command import Subcommands, add_command, add_group, emit, local_repo


def cmd_mirror_sync(args: argparse.Namespace) -> int:
    """Copy an upstream's roots, releases, channels, deltas and objects, verified, incrementally."""
    from ..mirror import MirrorSync
    repo = local_repo(args)
    upstream = args.upstream or repo.config.mirror_of
    if not upstream:
        raise CasError("name the upstream: cas mirror sync --upstream URL", code="bad_request")
    trusted = Path(args.root).read_bytes() if args.root else None
    sync = MirrorSync(repo, upstream, trusted, args.product, jobs=args.jobs,
                      token=args.token or os.environ.get("CAS_UPSTREAM_TOKEN"),
                      log=lambda m: print(f"cas mirror: {m}", file=sys.stderr))
    stats = sync.run()
    emit(args, stats.__dict__, f"mirrored {upstream}: {stats.documents_updated} documents updated, "
         f"{stats.documents_unchanged} unchanged, {stats.objects_fetched} objects fetched "
         f"({stats.object_bytes:,} bytes), {stats.requests} requests, {stats.bytes_downloaded:,} bytes")
    return 0


def cmd_mirror_export(args: argparse.Namespace) -> int:
    """Write a static tree of the read API for nginx."""
    from ..mirror import export
    stats = export(local_repo(args), Path(args.dest))
    emit(args, stats.__dict__, f"exported to {args.dest}: {stats.documents} documents, {stats.objects} objects "
         f"({stats.linked} hardlinked, {stats.copied} copied); serve it with docs/nginx-mirror.conf")
    return 0


def register(sub: Subcommands) -> None:
    """``cas mirror sync|export``."""
    mi = add_group(sub, "mirror", "read-only mirrors of another server")
    p = add_command(mi, "sync", cmd_mirror_sync, help="copy releases, channels, roots, deltas and objects, verified")
    p.add_argument("--upstream", default=None, help="upstream server URL (default: mirror_of in config.toml)")
    p.add_argument("--product", action="append", default=None, help="only this product (repeatable)")
    p.add_argument("--root", default=None, help="trusted root.json (default: trust on first use, with a warning)")
    p.add_argument("--jobs", type=int, default=4, help="parallel object downloads")
    p.add_argument("--token", default=None, help="read token for the upstream (default $CAS_UPSTREAM_TOKEN)")
    p.add_argument("--config", default=None)
    p = add_command(mi, "export", cmd_mirror_export, help="write a static tree of the read API (docs/nginx-mirror.conf)")
    p.add_argument("dest")
