"""``cas static export``: the static document tree nginx serves (cas/static.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .command import Subcommands, add_command, add_group, emit, local_repo


def cmd_static_export(args: argparse.Namespace) -> int:
    """Bring the static document tree up to date: write what changed, remove what is gone."""
    from ..static import export, tree_of
    repo = local_repo(args)
    tree = Path(args.tree) if args.tree else tree_of(repo)
    stats = export(repo, tree)
    skipped = "".join(f"\n  left out {s}" for s in stats.skipped)
    emit(args, {"tree": str(tree), **stats.to_dict()},
         f"static tree {tree}: {stats.written} written, {stats.unchanged} unchanged, "
         f"{stats.removed} removed{skipped}")
    return 0


def register(sub: Subcommands) -> None:
    """``cas static export``."""
    st = add_group(sub, "static", "the static document tree nginx serves (docs/deploy.md)")
    p = add_command(st, "export", cmd_static_export,
                    help="write the public documents as files for nginx (docs/nginx-production.conf)")
    p.add_argument("--tree", default=None, help="the tree (default: static_tree in config.toml)")
    p.add_argument("--config", default=None)
