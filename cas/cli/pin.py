"""``cas pin set|remove|list``: per-node rollback, client ids pinned to a release on a channel."""
from __future__ import annotations

import argparse
from typing import Any

from .. import pins
from ..remote import call
from .command import Subcommands, add_command, add_group, add_remote, emit, local_repo, remote_of


def _human(data: dict[str, Any]) -> str:
    lines = [f"{data['product']}/{data['channel']} (sequence {data['sequence']}, release {data['release']}): "
             f"{len(data['pins'])} pinned clients"]
    lines += [f"  {p['client_id']:40} -> {p['release']:16} {p['actor']}  {p['at']}  {p['reason']}"
              for p in data["pins"]]
    return "\n".join(lines)


def _path(args: argparse.Namespace, tail: str = "") -> str:
    return f"/v1/products/{args.product}/channels/{args.channel}/pins{tail}"


def cmd_pin_set(args: argparse.Namespace) -> int:
    """Pin client ids to a release; they take it at their next check."""
    ids = pins.read_ids(args.client, args.clients)
    remote = remote_of(args)
    if remote:
        data = call(*remote, "POST", _path(args), json={"release": args.version, "clients": ids,
                                                         "reason": args.reason or ""})
    else:
        data = pins.pin(local_repo(args), args.product, args.channel, args.version, ids, "local", args.reason or "")
    emit(args, data, _human(data))
    return 0


def cmd_pin_remove(args: argparse.Namespace) -> int:
    """Remove pins; those clients follow the channel (or its rollout) again at their next check."""
    ids = pins.read_ids(args.client, args.clients)
    remote = remote_of(args)
    if remote:
        body: dict[str, Any] = {"all": True} if args.all else {"clients": ids}
        data = call(*remote, "POST", _path(args, "/remove"), json={**body, "reason": args.reason or ""})
    else:
        data = pins.unpin(local_repo(args), args.product, args.channel, None if args.all else ids, "local",
                          args.reason or "", every=args.all)
    emit(args, data, _human(data))
    return 0


def cmd_pin_list(args: argparse.Namespace) -> int:
    """A channel's pins and its latest pin events."""
    remote = remote_of(args)
    data = call(*remote, "GET", _path(args)) if remote else pins.status(local_repo(args), args.product, args.channel)
    lines = [_human(data)] + [f"  {e['at']}  {e['event']:5} {e['client_id']} {e['release'] or ''}  {e['actor']}  "
                              f"{e['reason']}" for e in data["events"][:20]]
    emit(args, data, "\n".join(lines))
    return 0


def register(sub: Subcommands) -> None:
    """``cas pin ...``."""
    g = add_group(sub, "pin", "pin client ids to a release on a channel (per-node rollback)")
    for name, func, text in (("set", cmd_pin_set, "pin client ids to a release (taken at their next check)"),
                             ("remove", cmd_pin_remove, "remove pins (clients follow the channel again)"),
                             ("list", cmd_pin_list, "a channel's pins and pin events")):
        p = add_command(g, name, func, help=text)
        p.add_argument("product")
        p.add_argument("channel")
        if name == "set":
            p.add_argument("version", help="a trusted release the channel may offer")
        if name != "list":
            p.add_argument("--client", action="append", default=[], help="a client id (repeat for a batch)")
            p.add_argument("--clients", action="append", default=[], metavar="FILE",
                           help="a file of client ids, one a line")
            p.add_argument("--reason", default=None, help="recorded with the change")
        if name == "remove":
            p.add_argument("--all", action="store_true", help="remove every pin of the channel")
        add_remote(p)
