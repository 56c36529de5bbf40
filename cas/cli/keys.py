"""``cas keys init|rotate``: the store's signing keys and its root document."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import channels, keys
from .command import Subcommands, add_command, add_group, emit, local_repo


def cmd_keys_init(args: argparse.Namespace) -> int:
    """Root, release and channel keys and the signed root v1."""
    repo = local_repo(args)
    envelope = keys.init_keys(Path(repo.config.store), repo.meta)
    roles = envelope["signed"]["roles"]
    emit(args, envelope, f"keys written to {repo.config.store}/keys; root document: "
         f"{repo.config.store}/root.json\n" + "\n".join(
             f"  {role:8} {spec['keyids'][0][:16]}" for role, spec in roles.items()))
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """New keys for a role in the next root version; channel documents re-signed after a channel rotation."""
    repo = local_repo(args)
    envelope = keys.rotate_keys(Path(repo.config.store), repo.meta, args.role, args.count, args.threshold,
                                args.keep_old)
    renewed = []
    if args.role == "channel":
        renewed = channels.resign_expiring(repo, margin_seconds=float("inf"))
    signed = envelope["signed"]
    emit(args, envelope, f"root v{signed['version']}: {args.role} keys "
         f"{', '.join(k[:16] for k in signed['roles'][args.role]['keyids'])} "
         f"(threshold {signed['roles'][args.role]['threshold']}); {repo.config.store}/root.json updated"
         + (f"; re-signed {len(renewed)} channel documents" if renewed else ""))
    return 0


def register(sub: Subcommands) -> None:
    """``cas keys init|rotate``."""
    k = add_group(sub, "keys", "signing keys")
    add_command(k, "init", cmd_keys_init, help="make root, release and channel keys and root.json")
    p = add_command(k, "rotate", cmd_keys_rotate, help="new keys for a role and the next root version")
    p.add_argument("--role", required=True, choices=["root", "release", "channel"])
    p.add_argument("--count", type=int, default=1, help="how many new keys the role gets")
    p.add_argument("--threshold", type=int, default=1, help="signatures the role needs")
    p.add_argument("--keep-old", action="store_true", help="keep trusting the old keys (a transition)")
