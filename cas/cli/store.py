"""``cas checkout|gc|fsck|stats``: the store itself -- trees out of it, garbage, integrity, size."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import checkout, gc
from ..dashboard.figures import store_stats
from ..dashboard.fsck import record_fsck
from ..remote import call
from .command import Subcommands, add_command, add_remote, emit, explicit_remote, local_repo, remote_of

GC_GRACE_SECONDS = 6 * 3600


def cmd_checkout(args: argparse.Namespace) -> int:
    """A tree of a release: reflinks or copies (own inodes); with --hardlink, the store's files."""
    if args.hardlink:
        print(checkout.HARDLINK_WARNING, file=sys.stderr)
    report = checkout.checkout(local_repo(args), args.product, args.version, Path(args.dest),
                               hardlink=args.hardlink)
    emit(args, report.__dict__, f"checked out {args.product} {args.version} to {args.dest}: "
         f"{report.reflinked} reflinked, {report.copied} copied, {report.linked} hardlinked, "
         f"{report.symlinks} symlinks")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """Mark unreferenced objects, delete those tombstoned longer than ``--grace``."""
    remote = remote_of(args)
    body = {"dry_run": args.dry_run, "grace_seconds": args.grace, "retain": args.retain}
    if remote:
        data = call(*remote, "POST", "/v1/admin/gc", json=body)
    else:
        data = gc.collect(local_repo(args), args.grace, args.dry_run, args.retain, "local").to_dict()
    if args.dry_run:
        human = (f"dry run: would delete {len(data['would_delete'])} objects, mark {len(data['would_mark'])} "
                 f"unreferenced ones, delete releases: {', '.join(data['releases_deleted']) or 'none'}")
    else:
        human = (f"deleted {len(data['deleted'])} objects ({data['deleted_bytes']:,} bytes), marked "
                 f"{data['marked']} unreferenced objects (deleted after {args.grace}s if still unreferenced), "
                 f"revived {data['revived']}, pruned {data['recipes_pruned']} recipes and {data['reports_pruned']} "
                 f"reports; releases deleted: "
                 f"{', '.join(data['releases_deleted']) or 'none'}")
    emit(args, data, human)
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    """Re-hash every object (quarantining corrupt ones) and every per-mode variant of ``--hardlink``
    checkouts, look for referenced objects that are missing (release files, recipe objects, bundle objects).

    The result is kept in ``STORE/fsck-last.json`` for the dashboard; exit 1 when anything is wrong."""
    repo = local_repo(args)
    started = time.time()
    report = repo.objects.fsck(quarantine=not args.no_quarantine)
    # Every reference: release files, recipe objects, bundle objects.
    missing = [d for d, _ in repo.meta.referenced_objects() if not repo.objects.exists(d)]
    dangling = [{"kind": "release", "object": d, "by": "release files"} for d in missing]
    dangling += [ref for ref in repo.meta.build_references() if not repo.objects.exists(ref["object"])]
    missing = list(dict.fromkeys(ref["object"] for ref in dangling))
    variants = checkout.fsck_variants(repo, quarantine=not args.no_quarantine)  # --hardlink's per-mode copies
    holders = checkout.damaged_checkouts(repo, report, variants)  # hardlink checkouts sharing a damaged inode
    data = {**report.__dict__, "missing_referenced": missing, "dangling": dangling, "damaged_in_checkouts": holders,
            "variants": variants.__dict__}
    record_fsck(repo.config.store, data, started, time.time())
    by_kind = {kind: sum(1 for ref in dangling if ref["kind"] == kind) for kind in ("release", "recipe", "bundle")}
    human = (f"checked {report.checked} objects ({report.bytes:,} bytes): {len(report.corrupt)} corrupt"
             + "".join(f"\n  corrupt {d} -> quarantined" if not args.no_quarantine else f"\n  corrupt {d}"
                       for d in report.corrupt)
             + (f"\nchecked {variants.checked} checkout variants: {len(variants.corrupt)} corrupt"
                if variants.checked else "")
             + "".join(f"\n  corrupt variant {v['mode']} of {v['digest']}"
                       + (" -> quarantined (made again by the next checkout)" if not args.no_quarantine else "")
                       for v in variants.corrupt)
             + "".join(f"\n  {'variant ' + h['variant'] + ' of ' if 'variant' in h else ''}{h['digest']} shares "
                       f"its inode with {h['checkout']}/{h['path']} "
                       f"(hardlink checkout of {h['product']} {h['version']})" for h in holders)
             + (f"\n  {by_kind['release']} objects referenced by releases are missing" if by_kind["release"] else "")
             + "".join(f"\n  {ref['kind']} object {ref['object']} is missing ({ref['by']})"
                       for ref in dangling if ref["kind"] != "release"))
    emit(args, data, human)
    return 1 if report.corrupt or variants.corrupt or missing else 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Releases, objects, logical, unique and stored bytes, dedup ratio."""
    remote = explicit_remote(args)
    # The same figures as the dashboard's overview (GET /v1/admin/dashboard/overview -> "stats").
    data = call(*remote, "GET", "/v1/admin/dashboard/overview")["stats"] if remote else store_stats(local_repo(args))
    count, stored, logical = data["objects"], data["stored_bytes"], data["logical_bytes"]
    referenced = data["unique_referenced_bytes"]
    ratio = f"{data['dedup_ratio']:.2f}x" if data["dedup_ratio"] else "n/a"
    emit(args, data, f"releases      {data['releases']}\nobjects       {count}\n"
         f"logical bytes {logical:,}\nunique bytes  {referenced:,}\nstored bytes  {stored:,}\n"
         f"dedup ratio   {ratio} (logical / unique release bytes)")
    return 0


def register_checkout(sub: Subcommands) -> None:
    """``cas checkout``."""
    p = add_command(sub, "checkout", cmd_checkout, help="a tree of a release (reflinks or copies)")
    p.add_argument("product")
    p.add_argument("version")
    p.add_argument("dest")
    p.add_argument("--hardlink", action="store_true",
                   help="hardlink the store's own files (fast, but a write into the tree corrupts objects)")


def register(sub: Subcommands) -> None:
    """``cas gc``, ``cas fsck`` and ``cas stats``."""
    p = add_command(sub, "gc", cmd_gc, help="delete unreferenced objects (mark, tombstone, sweep)")
    p.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    p.add_argument("--grace", type=int, default=GC_GRACE_SECONDS, help="seconds an object stays tombstoned first")
    p.add_argument("--retain", type=int, default=None, help="keep the last N released versions per product")
    add_remote(p)
    p = add_command(sub, "fsck", cmd_fsck, help="re-hash every object, quarantine corrupt ones")
    p.add_argument("--no-quarantine", action="store_true")
    p = add_command(sub, "stats", cmd_stats, help="logical and stored bytes, dedup ratio")
    add_remote(p)
