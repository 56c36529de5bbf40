"""``cas channel set``: point a channel at a release (a new signed channel document)."""
from __future__ import annotations

import argparse
from typing import Any

from .. import channels
from ..remote import call
from .command import Subcommands, add_command, add_group, add_remote, emit, local_repo, remote_of


def set_channel(args: argparse.Namespace, product: str, channel: str, version: str,
                min_status: str | None) -> dict[str, Any]:
    """Point ``product/channel`` at ``version``, here or on the server; the channel's new state."""
    remote = remote_of(args)
    body: dict[str, Any] = {"release": version}
    if min_status:
        body["min_status"] = min_status
    if remote:
        data: dict[str, Any] = call(*remote, "PUT", f"/v1/products/{product}/channels/{channel}", json=body)
        return data
    ch = channels.set_channel(local_repo(args), product, channel, version, min_status)
    return {"product": product, "channel": channel, "release": ch.release, "sequence": ch.sequence,
            "min_status": ch.min_status}


def cmd_channel_set(args: argparse.Namespace) -> int:
    """Sign a new channel document with the next sequence."""
    data = set_channel(args, args.product, args.channel, args.version, args.min_status)
    emit(args, data, f"{args.product}/{args.channel} -> {data['release']} (sequence {data['sequence']})")
    return 0


def register(sub: Subcommands) -> None:
    """``cas channel set``."""
    c = add_group(sub, "channel", "channels")
    p = add_command(c, "set", cmd_channel_set, help="point a channel at a release")
    p.add_argument("product")
    p.add_argument("channel")
    p.add_argument("version")
    p.add_argument("--min-status", choices=["testing", "released"], default=None)
    add_remote(p)
