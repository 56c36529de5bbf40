"""``cas release status|delete|critical|history|resign``: a release's lifecycle, here or on a server."""
from __future__ import annotations

import argparse
from typing import Any

from .. import channels, gc, releases
from ..errors import Invalid
from ..remote import call
from .command import Subcommands, add_command, add_group, add_remote, emit, local_repo, release_keys, remote_of

STATUSES = ["draft", "testing", "released", "deprecated"]


def move_status(args: argparse.Namespace, product: str, version: str, status: str, reason: str,
                move_channel_to: str | None = None) -> dict[str, Any]:
    """Move a release to ``status`` (after pointing its channels at ``move_channel_to``); its summary."""
    remote = remote_of(args)
    if remote:
        body = {"status": status, "reason": reason}
        if move_channel_to:
            body["move_channel_to"] = move_channel_to
        data: dict[str, Any] = call(*remote, "POST", f"/v1/products/{product}/releases/{version}/status", json=body)
        return data
    release = releases.move_status(local_repo(args), product, version, status, "local", reason, move_channel_to)
    return {"product": product, **release.summary()}


def cmd_release_status(args: argparse.Namespace) -> int:
    """A lifecycle move; an illegal one exits 1."""
    data = move_status(args, args.product, args.version, args.status, args.reason or "cas release status",
                       args.move_channel_to)
    emit(args, data, f"{args.product} {args.version} is {data['status']}")
    return 0


def cmd_release_critical(args: argparse.Namespace) -> int:
    """Mark (or unmark) a release critical: clients apply it outside their windows."""
    remote = remote_of(args)
    critical = not args.off
    if remote:
        data = call(*remote, "POST", f"/v1/products/{args.product}/releases/{args.version}/critical",
                    json={"critical": critical, "reason": args.reason or ""})
    else:
        release = channels.mark_critical(local_repo(args), args.product, args.version, critical, "local",
                                         args.reason or "")
        data = {"product": args.product, **release.summary()}
    emit(args, data, f"{args.product} {args.version} is {'critical' if data['critical'] else 'not critical'}; "
         "channels offering it were re-signed")
    return 0


def cmd_release_delete(args: argparse.Namespace) -> int:
    """Delete a draft or deprecated release; its objects go at the next ``cas gc``."""
    remote = remote_of(args)
    if remote:
        call(*remote, "DELETE", f"/v1/products/{args.product}/releases/{args.version}",
             params={"reason": args.reason or ""})
    else:
        gc.delete_release(local_repo(args), args.product, args.version, "local", args.reason or "")
    emit(args, {"deleted": f"{args.product} {args.version}"},
         f"deleted {args.product} {args.version}; its objects go at the next `cas gc` runs")
    return 0


def cmd_release_history(args: argparse.Namespace) -> int:
    """Who moved the release when and why."""
    remote = remote_of(args)
    if remote:
        data = call(*remote, "GET", f"/v1/products/{args.product}/releases/{args.version}")
    else:
        repo = local_repo(args)
        release = releases.get_release(repo, args.product, args.version)
        data = {"product": args.product, **release.summary(),
                "history": repo.meta.release_history(args.product, args.version)}
    lines = [f"{args.product} {args.version}: {data['status']}"] + [
        f"  {h['at']}  {h['from'] or '-':10} -> {h['to']:10} {h['actor']}  {h['reason']}" for h in data["history"]]
    emit(args, data, "\n".join(lines))
    return 0


def cmd_release_resign(args: argparse.Namespace) -> int:
    """Re-sign releases with the current release key(s) after a rotation (on the store)."""
    if args.all == bool(args.product):
        raise Invalid("name a release (cas release resign P V) or give --all", code="bad_request")
    if args.product and not args.version:
        raise Invalid("name the version: cas release resign P V", code="bad_request")
    repo = local_repo(args)
    signing = release_keys(args, repo.config.store)
    if args.all:
        done = releases.resign_all(repo, signing, "local")
    else:
        done = [releases.resign(repo, args.product, args.version, signing, "local")]
    data = {"resigned": [{"product": r.product, "version": r.version, "manifest": r.manifest_digest}
                         for r in done]}
    emit(args, data, "\n".join(f"re-signed {r.product} {r.version}" for r in done) or "nothing to re-sign")
    return 0


def _release_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("product")
    p.add_argument("version")


def register(sub: Subcommands) -> None:
    """``cas release status|delete|critical|history``."""
    r = add_group(sub, "release", "release lifecycle")
    p = add_command(r, "status", cmd_release_status, help="move a release: draft|testing|released|deprecated")
    _release_args(p)
    p.add_argument("status", choices=STATUSES)
    p.add_argument("--reason", default=None)
    p.add_argument("--move-channel-to", default=None, metavar="VERSION",
                   help="first point every channel on this release at VERSION")
    add_remote(p)
    p = add_command(r, "delete", cmd_release_delete, help="delete a draft or deprecated release")
    _release_args(p)
    p.add_argument("--reason", default=None)
    add_remote(p)
    p = add_command(r, "critical", cmd_release_critical, help="mark a release critical (applied outside windows)")
    _release_args(p)
    p.add_argument("--off", action="store_true", help="remove the mark")
    p.add_argument("--reason", default=None)
    add_remote(p)
    p = add_command(r, "resign", cmd_release_resign,
                    help="re-sign releases with the current release key (after `cas keys rotate`)")
    p.add_argument("product", nargs="?")
    p.add_argument("version", nargs="?")
    p.add_argument("--all", action="store_true",
                   help="every release whose signatures the current root does not accept")
    p.add_argument("--key", action="append", default=[], metavar="FILE",
                   help="release key PEM (repeatable; default the store's keys/release*.pem)")
    p = add_command(r, "history", cmd_release_history, help="lifecycle moves of a release")
    _release_args(p)
    add_remote(p)
