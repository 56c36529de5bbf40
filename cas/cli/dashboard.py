"""``cas dashboard VIEW``: the dashboard's JSON views (``cas/dashboard/views.py``), or a text summary."""
from __future__ import annotations

import argparse
from typing import Any

from ..clock import clock_from_env
from ..remote import call
from .command import Subcommands, add_command, add_remote, emit, explicit_remote, local_repo

VIEWS = ("overview", "deltas", "channels", "health")
PRODUCT_VIEWS = ("deltas", "channels")  # the views ``--product`` narrows


def _overview(data: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for p in data["products"]:
        lines.append(f"{p['name']}: channels " + (", ".join(f"{c['channel']} -> {c['release']}" + (
            f" (rolling out {c['candidate']})" if c["candidate"] else "") for c in p["channels"]) or "none"))
        lines += [f"  {r['version']:12} {r['status']:10} {r['files']:6} files  {r['logical_bytes']:>14,} logical"
                  f"  {r['new_bytes']:>14,} new in store  {r['deduplicated_bytes']:>14,} deduplicated"
                  for r in p["releases"]]
    st = data["stats"]
    lines.append(f"store: {st['objects']} objects, {st['stored_bytes']:,} bytes stored, "
                 f"dedup ratio {st['dedup_ratio'] or 'n/a'}")
    return lines


def _deltas(data: dict[str, Any]) -> list[str]:
    c = data["queue"]["counts"]
    lines = ["builds: " + ", ".join(f"{k} {v}" for k, v in c.items())]
    for p in data["products"]:
        for r in p["releases"]:
            for b in r["bases"]:
                kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(b["bytes"]["by_kind"].items()))
                lines.append(f"{p['name']} {r['version']} from {b['from']}: "
                             f"{'complete' if b['complete'] else 'building'}; {b['bytes']['recipes']:,} of "
                             f"{b['bytes']['full']:,} bytes (saves {b['savings_percent']}%): {kinds}")
                lines += [f"  failed {f['path'] or f['target'][:12]}: {f['error']}" for f in b["failed"]]
    return lines


def _channels(data: dict[str, Any]) -> list[str]:
    lines = []
    for p in data["products"]:
        for ch in p["channels"]:
            line = f"{p['name']}/{ch['channel']} -> {ch['release']} (sequence {ch['sequence']})"
            r = ch["rollout"]
            if r:
                line += (f"; {r['strategy']} rollout of {r['release']} {r['state']} at {r['percent']}%; "
                         + ", ".join(f"stage {st['percent']}%: {st['success']} ok, {st['failed']} failed, "
                                     f"{st['rolled_back']} rolled back" for st in r["stage_reports"]))
            lines.append(line)
    return lines


def _health(data: dict[str, Any]) -> list[str]:
    st, f, rq = data["store"], data["fsck"], data["requests"]
    lines = [f"store: {st['objects']} objects, {st['stored_bytes']:,} bytes; quarantined {st['quarantined']}",
             "last fsck: " + ("never" if not f else f.get("error") or
                              f"{'ok' if f['ok'] else 'PROBLEMS'} at {f['finished']} ({f['checked']} objects)"),
             "gc: " + data["gc"]["message"],
             "delta builds: " + ", ".join(f"{k} {v}" for k, v in data["deltas"].items())]
    if rq:
        lines.append(f"requests: {rq['total']} ({rq['client_errors']} 4xx, {rq['server_errors']} 5xx), "
                     f"{rq['average_per_second']}/s on average")
    return lines


HUMAN = {"overview": _overview, "deltas": _deltas, "channels": _channels, "health": _health}


def cmd_dashboard(args: argparse.Namespace) -> int:
    """One view, from the server (``GET /v1/admin/dashboard/VIEW``) or computed from the local store."""
    remote = explicit_remote(args)
    if remote:
        query = f"?product={args.product}" if args.product and args.view in PRODUCT_VIEWS else ""
        data = call(*remote, "GET", f"/v1/admin/dashboard/{args.view}{query}")
    else:  # the same documents from the local store (no request counters: those live in the server)
        from ..dashboard import views
        from ..dashboard.figures import Figures
        repo, figures = local_repo(args), Figures()
        if args.view == "overview":
            data = views.overview(repo, figures)
        elif args.view == "deltas":
            data = views.deltas(repo, figures, args.product)
        elif args.view == "channels":
            data = views.channels_view(repo, clock_from_env(), args.product)
        else:
            data = views.health(repo, figures)
    emit(args, data, "\n".join(HUMAN[args.view](data)) or "nothing yet")
    return 0


def register(sub: Subcommands) -> None:
    """``cas dashboard VIEW``."""
    p = add_command(sub, "dashboard", cmd_dashboard,
                    help="the operator dashboard's views (the JSON the web page at / renders)")
    p.add_argument("view", choices=list(VIEWS))
    p.add_argument("--product", default=None, help="deltas and channels: only this product")
    add_remote(p)
