"""``cas channel set``: point a channel at a release (a new signed channel document);
``cas channel policy``: show or set a channel's version compatibility policy."""
from __future__ import annotations

import argparse
from typing import Any

from casformat.compat import RULES

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


def cmd_channel_policy(args: argparse.Namespace) -> int:
    """Show, set or remove (``none``) the version compatibility policy of a channel or (``*``) a product."""
    remote = remote_of(args)
    path = f"/v1/products/{args.product}/channels/{args.channel}/policy"
    rule = None if args.rule in (None, "none") else args.rule
    if args.rule is None:
        data: dict[str, Any] = (call(*remote, "GET", path) if remote
                                else channels.policy_of(local_repo(args), args.product, args.channel))
    elif remote:
        data = call(*remote, "PUT", path, json={"rule": rule})
    else:
        data = channels.set_policy(local_repo(args), args.product, args.channel, rule, "local")
    where = "every channel of " + args.product if args.channel == "*" else f"{args.product}/{args.channel}"
    if data["rule"] is None:
        human = f"{where}: no version policy (clients move to any release)"
    else:
        human = f"{where}: version policy {data['rule']}" + (
            " (from the product's policy)" if data["source"] == "product" and args.channel != "*" else "")
    if "resigned" in data:
        human += f"; re-signed {', '.join(data['resigned']) or 'no channel'}"
    emit(args, data, human)
    return 0


def register(sub: Subcommands) -> None:
    """``cas channel set``, ``cas channel policy``."""
    c = add_group(sub, "channel", "channels")
    p = add_command(c, "set", cmd_channel_set, help="point a channel at a release")
    p.add_argument("product")
    p.add_argument("channel")
    p.add_argument("version")
    p.add_argument("--min-status", choices=["testing", "released"], default=None)
    add_remote(p)
    p = add_command(c, "policy", cmd_channel_policy,
                    help="show or set the version compatibility policy clients check (signed in the channel)")
    p.add_argument("product")
    p.add_argument("channel", help="a channel, or '*' for every channel of the product without its own")
    p.add_argument("rule", nargs="?", choices=[*RULES, "none"],
                   help="any | no-downgrade | same-major (same major, minor >=) | none (remove); omit to show")
    add_remote(p)
