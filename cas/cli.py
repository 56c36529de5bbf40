"""``cas``: the server, publisher and admin command line."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from casformat.errors import DocumentError

from . import channels, checkout, deltas, gc, keys, publisher, releases, rollouts
from .clock import clock_from_env
from .config import load_config
from .errors import CasError
from .remote import RemoteError, call
from .repo import Repo, open_repo
from .trees import TreeError, scan_tree


def _repo(args: argparse.Namespace) -> Repo:
    return open_repo(load_config(args.store, getattr(args, "config", None)))


def _remote(args: argparse.Namespace) -> tuple[str, str | None] | None:
    server = getattr(args, "server", None) or os.environ.get("CAS_SERVER")
    if not server:
        return None
    return server, getattr(args, "token", None) or os.environ.get("CAS_TOKEN")


def _print(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if getattr(args, "json", False) else human)


def _progress(total: int, label: str, enabled: bool):
    """A rich progress bar (bytes, rate, ETA) on stderr, or a no-op."""
    if not enabled or total == 0:
        return None, (lambda n: None)
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
    bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=total)
    return bar, (lambda n: bar.advance(task, n))


# --------------------------------------------------------------------------- commands

def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn
    config = load_config(args.store, args.config, host=args.host, port=args.port)
    repo = open_repo(config)
    if args.init_keys and repo.root() is None:
        keys.init_keys(Path(config.store), repo.meta)
        repo.reload_keys()
        print(f"cas: made new keys; clients trust {config.store}/root.json", file=sys.stderr)
    if repo.root() is None and config.enforce_signatures and not config.mirror_of:
        print(f"cas: warning: no keys in {config.store}; run `cas keys init --store {config.store}` "
              "(publishing is refused until then)", file=sys.stderr)
    common: dict[str, Any] = dict(host=config.host, port=config.port, log_level=args.log_level,
                                  access_log=args.access_log, http="httptools", loop="uvloop",
                                  timeout_keep_alive=30)
    os.environ["CAS_STORE"] = str(config.store)
    if args.config:
        os.environ["CAS_CONFIG"] = str(Path(args.config).resolve())
    if args.workers > 1:
        uvicorn.run("cas.http.serve:make_app", factory=True, workers=args.workers, **common)
    else:
        from .http.app import create_app
        uvicorn.run(create_app(repo), **common)
    return 0


def cmd_keys_init(args: argparse.Namespace) -> int:
    repo = _repo(args)
    envelope = keys.init_keys(Path(repo.config.store), repo.meta)
    roles = envelope["signed"]["roles"]
    _print(args, envelope, f"keys written to {repo.config.store}/keys; root document: "
           f"{repo.config.store}/root.json\n" + "\n".join(
               f"  {role:8} {spec['keyids'][0][:16]}" for role, spec in roles.items()))
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    repo = _repo(args)
    envelope = keys.rotate_keys(Path(repo.config.store), repo.meta, args.role, args.count, args.threshold,
                                args.keep_old)
    renewed = []
    if args.role == "channel":
        renewed = channels.resign_expiring(repo, margin_seconds=float("inf"))
    signed = envelope["signed"]
    _print(args, envelope, f"root v{signed['version']}: {args.role} keys "
           f"{', '.join(k[:16] for k in signed['roles'][args.role]['keyids'])} "
           f"(threshold {signed['roles'][args.role]['threshold']}); {repo.config.store}/root.json updated"
           + (f"; re-signed {len(renewed)} channel documents" if renewed else ""))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    show = not args.json and sys.stderr.isatty()
    key_files = args.key or ([os.environ["CAS_RELEASE_KEY"]] if os.environ.get("CAS_RELEASE_KEY") else [])
    remote = _remote(args)
    if key_files:
        signing = [keys.load_private_key(Path(f)) for f in key_files]
    elif remote is not None:
        raise CasError("publishing to a server needs --key FILE (the release key)", code="no_key")
    else:
        signing = keys.load_role_keys(Path(load_config(args.store).store), "release")
        if not signing:
            raise CasError("no release key in the store (run `cas keys init`) and no --key", code="no_key")
    tree = scan_tree(Path(args.dir))
    envelope = publisher.signed_manifest(args.product, args.version, tree, signing)
    if args.cms_cert or args.cms_key:  # enterprise CMS signature (cas/cms_signing.py)
        if not (args.cms_cert and args.cms_key):
            raise CasError("--cms-cert and --cms-key go together", code="bad_request")
        from .cms_signing import add_cms
        envelope = add_cms(envelope, args.cms_cert, args.cms_key, args.cms_chain)
    bar, advance = _progress(tree.logical_bytes, "storing", show)
    try:
        if bar:
            bar.start()
        if remote is None:
            repo = _repo(args)
            result = publisher.publish_local(repo, tree, envelope, advance)
        else:
            result = asyncio.run(publisher.publish_remote_async(remote[0], remote[1], tree, envelope,
                                                                args.jobs, advance))
    finally:
        if bar:
            bar.stop()
    steps = {"testing": ["testing"], "released": ["testing", "released"]}.get(args.status or "", [])
    for status in steps:
        if result.status == status or (status == "testing" and result.status == "released"):
            continue
        _move(args, args.product, args.version, status, "cas publish --status")
        result.status = status
    if args.channel:
        _set_channel(args, args.product, args.channel, args.version, None)
    saved = result.logical_bytes - result.uploaded_bytes
    _print(args, result.__dict__,
           f"{'published' if result.created else 'already published'} {result.product} {result.version} "
           f"({result.status}): {result.files} entries, {result.logical_bytes:,} bytes; "
           f"stored {result.uploaded_objects} new objects ({result.uploaded_bytes:,} bytes, "
           f"{saved:,} deduplicated); manifest {result.manifest[:16]}")
    return 0


def _move(args: argparse.Namespace, product: str, version: str, status: str, reason: str,
          move_channel_to: str | None = None) -> dict[str, Any]:
    remote = _remote(args)
    if remote:
        body = {"status": status, "reason": reason}
        if move_channel_to:
            body["move_channel_to"] = move_channel_to
        return call(*remote, "POST", f"/v1/products/{product}/releases/{version}/status", json=body)
    release = releases.move_status(_repo(args), product, version, status, "local", reason, move_channel_to)
    return {"product": product, **release.summary()}


def _set_channel(args: argparse.Namespace, product: str, channel: str, version: str,
                 min_status: str | None) -> dict[str, Any]:
    remote = _remote(args)
    body: dict[str, Any] = {"release": version}
    if min_status:
        body["min_status"] = min_status
    if remote:
        return call(*remote, "PUT", f"/v1/products/{product}/channels/{channel}", json=body)
    ch = channels.set_channel(_repo(args), product, channel, version, min_status)
    return {"product": product, "channel": channel, "release": ch.release, "sequence": ch.sequence,
            "min_status": ch.min_status}


def cmd_release_status(args: argparse.Namespace) -> int:
    data = _move(args, args.product, args.version, args.status, args.reason or "cas release status",
                 args.move_channel_to)
    _print(args, data, f"{args.product} {args.version} is {data['status']}")
    return 0


def cmd_release_critical(args: argparse.Namespace) -> int:
    remote = _remote(args)
    critical = not args.off
    if remote:
        data = call(*remote, "POST", f"/v1/products/{args.product}/releases/{args.version}/critical",
                    json={"critical": critical, "reason": args.reason or ""})
    else:
        release = channels.mark_critical(_repo(args), args.product, args.version, critical, "local",
                                         args.reason or "")
        data = {"product": args.product, **release.summary()}
    _print(args, data, f"{args.product} {args.version} is {'critical' if data['critical'] else 'not critical'}; "
           "channels offering it were re-signed")
    return 0


def cmd_release_delete(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote:
        call(*remote, "DELETE", f"/v1/products/{args.product}/releases/{args.version}",
             params={"reason": args.reason or ""})
    else:
        gc.delete_release(_repo(args), args.product, args.version, "local", args.reason or "")
    _print(args, {"deleted": f"{args.product} {args.version}"},
           f"deleted {args.product} {args.version}; its objects go at the next `cas gc` runs")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    remote = _remote(args)
    body = {"dry_run": args.dry_run, "grace_seconds": args.grace, "retain": args.retain}
    if remote:
        data = call(*remote, "POST", "/v1/admin/gc", json=body)
    else:
        data = gc.collect(_repo(args), args.grace, args.dry_run, args.retain, "local").to_dict()
    if args.dry_run:
        human = (f"dry run: would delete {len(data['would_delete'])} objects, mark {len(data['would_mark'])} "
                 f"unreferenced ones, delete releases: {', '.join(data['releases_deleted']) or 'none'}")
    else:
        human = (f"deleted {len(data['deleted'])} objects ({data['deleted_bytes']:,} bytes), marked "
                 f"{data['marked']} unreferenced objects (deleted after {args.grace}s if still unreferenced), "
                 f"revived {data['revived']}, pruned {data['recipes_pruned']} recipes; releases deleted: "
                 f"{', '.join(data['releases_deleted']) or 'none'}")
    _print(args, data, human)
    return 0


def cmd_release_history(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote:
        data = call(*remote, "GET", f"/v1/products/{args.product}/releases/{args.version}")
    else:
        repo = _repo(args)
        release = releases.get_release(repo, args.product, args.version)
        data = {"product": args.product, **release.summary(),
                "history": repo.meta.release_history(args.product, args.version)}
    lines = [f"{args.product} {args.version}: {data['status']}"] + [
        f"  {h['at']}  {h['from'] or '-':10} -> {h['to']:10} {h['actor']}  {h['reason']}" for h in data["history"]]
    _print(args, data, "\n".join(lines))
    return 0


def cmd_channel_set(args: argparse.Namespace) -> int:
    data = _set_channel(args, args.product, args.channel, args.version, args.min_status)
    _print(args, data, f"{args.product}/{args.channel} -> {data['release']} (sequence {data['sequence']})")
    return 0


def _rollout_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"release": args.version, "strategy": args.strategy,
                            "max_failure_rate": args.max_failure_rate, "min_reports": args.min_reports,
                            "auto_abort": args.auto_abort}
    if args.strategy == "staged":
        body["stages"] = [int(p) for p in args.stages.split(",")] if _stages_ok(args.stages) else args.stages
    if args.strategy == "batches":
        if not args.clients:
            raise CasError("the batches strategy needs --clients FILE (one client id a line)", code="bad_clients")
        with open(args.clients, encoding="utf-8") as fh:
            body["clients"] = rollouts.read_clients(fh)
        body.update(batch_size=args.batch_size, max_failures=args.max_failures,
                    stage_duration=args.interval or args.stage_duration)
        if args.max_concurrent is not None:
            body["max_concurrent"] = args.max_concurrent
    else:
        body["stage_duration"] = args.stage_duration
    if args.salt:
        body["salt"] = args.salt
    if args.reason:
        body["reason"] = args.reason
    return body


def _stages_ok(text: str) -> bool:
    return all(part.strip().isdigit() for part in text.split(","))


def _rollout_human(data: dict[str, Any]) -> str:
    h = data["health"]
    line = (f"{data['product']}/{data['channel']}: {data['strategy']} rollout of {data['release']} "
            f"(from {data['previous']}) {data['state']} at {data['percent']}%")
    if data["strategy"] == "staged":
        line += f", stage {data['stage'] + 1}/{len(data['stages'])} {data['stages']}"
    if data.get("batches"):
        b = data["batches"]
        line += f", {b['admitted']}/{b['clients']} clients admitted ({h['done']} done, {h['failing']} failing)"
    line += (f"\n  stage started {data['stage_started']}, next check {data['next_check']}; reports {h['reports']}"
             f" (failed {h['failed']}, rolled back {h['rolled_back']}, rate {h['failure_rate'] or '-'}"
             f" / max {data['max_failure_rate']}, min {data['min_reports']})")
    if data["reason"]:
        line += f"\n  {data['reason']}"
    return line


def cmd_rollout_start(args: argparse.Namespace) -> int:
    body = _rollout_body(args)
    remote = _remote(args)
    if remote:
        data = call(*remote, "POST", f"/v1/products/{args.product}/channels/{args.channel}/rollout", json=body)
    else:
        repo, clock = _repo(args), clock_from_env()
        version, reason = body.pop("release"), body.pop("reason", "")
        r = rollouts.start(repo, clock, args.product, args.channel, version, "local", reason=reason, **body)
        data = rollouts.describe(repo, clock, r)
    _print(args, data, _rollout_human(data))
    return 0


def cmd_rollout_status(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote:
        data = call(*remote, "GET", f"/v1/products/{args.product}/channels/{args.channel}/rollout")
    else:
        data = rollouts.status(_repo(args), clock_from_env(), args.product, args.channel)
    lines = [_rollout_human(data)] + [f"  {e['at']}  {e['event']:12} {e['percent']:3}%  {e['actor']}  {e['reason']}"
                                      for e in data["events"]]
    _print(args, data, "\n".join(lines))
    return 0


def cmd_rollout_action(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote:
        data = call(*remote, "POST", f"/v1/products/{args.product}/channels/{args.channel}/rollout/{args.action}",
                    json={"reason": args.reason or ""})
    else:
        repo, clock = _repo(args), clock_from_env()
        r = rollouts.act(repo, clock, args.product, args.channel, args.action, "local", args.reason or "")
        data = rollouts.describe(repo, clock, r)
    _print(args, data, _rollout_human(data))
    return 0


def cmd_rollout_tick(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote:
        query = f"?product={args.product}" if args.product else ""
        data = call(*remote, "POST", f"/v1/admin/rollouts/tick{query}")
    else:
        data = {"steps": rollouts.evaluate(_repo(args), clock_from_env(), args.product)}
    _print(args, data, "\n".join(f"{s['product']}/{s['channel']}: {s['action']} -> {s['state']} at "
                                 f"{s['percent']}% ({s['reason']})" for s in data["steps"]) or "nothing to do")
    return 0


def cmd_checkout(args: argparse.Namespace) -> int:
    report = checkout.checkout(_repo(args), args.product, args.version, Path(args.dest))
    _print(args, report.__dict__, f"checked out {args.product} {args.version} to {args.dest}: "
           f"{report.linked} hardlinked, {report.copied} copied, {report.symlinks} symlinks")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    import time

    from .dashboard import record_fsck
    repo = _repo(args)
    started = time.time()
    report = repo.objects.fsck(quarantine=not args.no_quarantine)
    missing = [d for d, _ in repo.meta.referenced_objects() if not repo.objects.exists(d)]
    data = {**report.__dict__, "missing_referenced": missing}
    record_fsck(repo.config.store, data, started, time.time())  # STORE/fsck-last.json, shown by the dashboard
    human = (f"checked {report.checked} objects ({report.bytes:,} bytes): {len(report.corrupt)} corrupt"
             + "".join(f"\n  corrupt {d} -> quarantined" if not args.no_quarantine else f"\n  corrupt {d}"
                       for d in report.corrupt)
             + (f"\n  {len(missing)} objects referenced by releases are missing" if missing else ""))
    _print(args, data, human)
    return 1 if report.corrupt or missing else 0


def cmd_stats(args: argparse.Namespace) -> int:
    from .dashboard import store_stats
    remote = _remote(args) if args.server or not args.store else None  # an explicit --store reads it
    # The same figures as the dashboard's overview (GET /v1/admin/dashboard/overview -> "stats").
    data = call(*remote, "GET", "/v1/admin/dashboard/overview")["stats"] if remote else store_stats(_repo(args))
    count, stored, logical = data["objects"], data["stored_bytes"], data["logical_bytes"]
    referenced = data["unique_referenced_bytes"]
    ratio = f"{data['dedup_ratio']:.2f}x" if data["dedup_ratio"] else "n/a"
    _print(args, data, f"releases      {data['releases']}\nobjects       {count}\n"
           f"logical bytes {logical:,}\nunique bytes  {referenced:,}\nstored bytes  {stored:,}\n"
           f"dedup ratio   {ratio} (logical / unique release bytes)")
    return 0


DASHBOARD_VIEWS = ("overview", "deltas", "channels", "health")


def _dashboard_human(view: str, data: dict[str, Any]) -> str:
    lines: list[str] = []
    if view == "overview":
        for p in data["products"]:
            lines.append(f"{p['name']}: channels " + (", ".join(f"{c['channel']} -> {c['release']}" + (
                f" (rolling out {c['candidate']})" if c["candidate"] else "") for c in p["channels"]) or "none"))
            lines += [f"  {r['version']:12} {r['status']:10} {r['files']:6} files  {r['logical_bytes']:>14,} logical"
                      f"  {r['new_bytes']:>14,} new in store  {r['deduplicated_bytes']:>14,} deduplicated"
                      for r in p["releases"]]
        st = data["stats"]
        lines.append(f"store: {st['objects']} objects, {st['stored_bytes']:,} bytes stored, "
                     f"dedup ratio {st['dedup_ratio'] or 'n/a'}")
    elif view == "deltas":
        c = data["queue"]["counts"]
        lines.append("builds: " + ", ".join(f"{k} {v}" for k, v in c.items()))
        for p in data["products"]:
            for r in p["releases"]:
                for b in r["bases"]:
                    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(b["bytes"]["by_kind"].items()))
                    lines.append(f"{p['name']} {r['version']} from {b['from']}: "
                                 f"{'complete' if b['complete'] else 'building'}; {b['bytes']['recipes']:,} of "
                                 f"{b['bytes']['full']:,} bytes (saves {b['savings_percent']}%): {kinds}")
                    lines += [f"  failed {f['path'] or f['target'][:12]}: {f['error']}" for f in b["failed"]]
    elif view == "channels":
        for p in data["products"]:
            for ch in p["channels"]:
                line = f"{p['name']}/{ch['channel']} -> {ch['release']} (sequence {ch['sequence']})"
                r = ch["rollout"]
                if r:
                    line += (f"; {r['strategy']} rollout of {r['release']} {r['state']} at {r['percent']}%; "
                             + ", ".join(f"stage {st['percent']}%: {st['success']} ok, {st['failed']} failed, "
                                         f"{st['rolled_back']} rolled back" for st in r["stage_reports"]))
                lines.append(line)
    else:
        st, f, rq = data["store"], data["fsck"], data["requests"]
        lines.append(f"store: {st['objects']} objects, {st['stored_bytes']:,} bytes; quarantined {st['quarantined']}")
        lines.append("last fsck: " + ("never" if not f else f.get("error") or
                                      f"{'ok' if f['ok'] else 'PROBLEMS'} at {f['finished']} ({f['checked']} objects)"))
        lines.append("gc: " + data["gc"]["message"])
        lines.append("delta builds: " + ", ".join(f"{k} {v}" for k, v in data["deltas"].items()))
        if rq:
            lines.append(f"requests: {rq['total']} ({rq['client_errors']} 4xx, {rq['server_errors']} 5xx), "
                         f"{rq['average_per_second']}/s on average")
    return "\n".join(lines) or "nothing yet"


def cmd_dashboard(args: argparse.Namespace) -> int:
    remote = _remote(args) if args.server or not args.store else None  # an explicit --store reads it
    if remote:
        query = f"?product={args.product}" if args.product and args.view in ("deltas", "channels") else ""
        data = call(*remote, "GET", f"/v1/admin/dashboard/{args.view}{query}")
    else:  # the same documents from the local store (no request counters: those live in the server)
        from . import dashboard
        repo, figures = _repo(args), dashboard.Figures()
        if args.view == "overview":
            data = dashboard.overview(repo, figures)
        elif args.view == "deltas":
            data = dashboard.deltas(repo, figures, args.product)
        elif args.view == "channels":
            data = dashboard.channels_view(repo, clock_from_env(), args.product)
        else:
            data = dashboard.health(repo, figures)
    _print(args, data, _dashboard_human(args.view, data))
    return 0


def cmd_deltas_build(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if args.product:
        if not args.version:
            raise CasError("name the release: cas deltas build P V [--from BASE ...]", code="bad_request")
        body: dict[str, Any] = {"product": args.product, "version": args.version}
        if args.base:
            body["from"] = args.base
        if remote:
            data = call(*remote, "POST", "/v1/admin/deltas/build", json=body)
        else:
            repo = _repo(args)
            target = releases.get_release(repo, args.product, args.version)
            if args.base:
                queued = sum(deltas.queue_pair(repo, releases.get_release(repo, args.product, b), target)
                             for b in args.base)
            else:
                queued = deltas.queue_release(repo, target)
            data = {"queued": queued}
    else:
        data = {"queued": None}
    if not remote and not args.queue_only:
        data["built"] = deltas.drain(_repo(args))
    _print(args, data, f"queued {data['queued'] if data['queued'] is not None else 'nothing new'}"
           + (f", built {data['built']} jobs" if "built" in data else " (the server's worker builds them)"))
    return 0


def cmd_deltas_status(args: argparse.Namespace) -> int:
    remote = _remote(args)
    data = call(*remote, "GET", "/v1/admin/deltas") if remote else _repo(args).meta.jobs_summary()
    counts = data["counts"]
    lines = [" ".join(f"{k} {v}" for k, v in counts.items())]
    lines += [f"  running {j['base'][:12] or '(compress)'} -> {j['target'][:12]}" for j in data["running"]]
    lines += [f"  failed  {j['base'][:12] or '(compress)'} -> {j['target'][:12]}: {j['error']}"
              for j in data["failed"]]
    _print(args, data, "\n".join(lines))
    return 0


def cmd_deltas_worker(args: argparse.Namespace) -> int:
    import logging
    import signal
    logging.basicConfig(level=logging.WARNING, format="cas deltas worker: %(message)s")
    builder = deltas.DeltaBuilder(_repo(args))

    def stop(signum: int, frame: Any) -> None:
        builder.repo.meta.release_jobs(builder.owner)  # unfinished jobs go back to the queue
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    builder.run_forever()
    return 0


def cmd_mirror_sync(args: argparse.Namespace) -> int:
    from .mirror import MirrorSync
    repo = _repo(args)
    upstream = args.upstream or repo.config.mirror_of
    if not upstream:
        raise CasError("name the upstream: cas mirror sync --upstream URL", code="bad_request")
    trusted = Path(args.root).read_bytes() if args.root else None
    sync = MirrorSync(repo, upstream, trusted, args.product, jobs=args.jobs,
                      token=args.token or os.environ.get("CAS_UPSTREAM_TOKEN"),
                      log=lambda m: print(f"cas mirror: {m}", file=sys.stderr))
    stats = sync.run()
    _print(args, stats.__dict__, f"mirrored {upstream}: {stats.documents_updated} documents updated, "
           f"{stats.documents_unchanged} unchanged, {stats.objects_fetched} objects fetched "
           f"({stats.object_bytes:,} bytes), {stats.requests} requests, {stats.bytes_downloaded:,} bytes")
    return 0


def cmd_mirror_export(args: argparse.Namespace) -> int:
    from .mirror import export
    stats = export(_repo(args), Path(args.dest))
    _print(args, stats.__dict__, f"exported to {args.dest}: {stats.documents} documents, {stats.objects} objects "
           f"({stats.linked} hardlinked, {stats.copied} copied); serve it with docs/nginx-mirror.conf")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo(keep=args.keep, workdir=args.dir)


# --------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cas", description="deltacas server and publisher")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], parent: Any = sub, **kw: Any):
        p = parent.add_parser(name, **kw)
        p.set_defaults(func=func)
        p.add_argument("--store", default=None, help="store directory (default $CAS_STORE or ./cas-data)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    def remote(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", default=None, help="server URL (default $CAS_SERVER)")
        p.add_argument("--token", default=None, help="bearer token (default $CAS_TOKEN)")

    p = add("serve", cmd_serve, help="run the HTTP server")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--init-keys", action="store_true", help="make keys first when the store has none")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--access-log", action="store_true")

    k = sub.add_parser("keys", help="signing keys").add_subparsers(dest="keys_command", required=True)
    add("init", cmd_keys_init, k, help="make root, release and channel keys and root.json")
    p = add("rotate", cmd_keys_rotate, k, help="new keys for a role and the next root version")
    p.add_argument("--role", required=True, choices=["root", "release", "channel"])
    p.add_argument("--count", type=int, default=1, help="how many new keys the role gets")
    p.add_argument("--threshold", type=int, default=1, help="signatures the role needs")
    p.add_argument("--keep-old", action="store_true", help="keep trusting the old keys (a transition)")

    p = add("publish", cmd_publish, help="publish a release tree")
    p.add_argument("dir")
    p.add_argument("--product", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--key", action="append", default=None,
                   help="release key; repeat for a role with a threshold (default: the store's release keys)")
    p.add_argument("--status", choices=["testing", "released"], default=None)
    p.add_argument("--channel", default=None)
    p.add_argument("--jobs", type=int, default=4, help="parallel uploads")
    p.add_argument("--cms-cert", default=None, help="X.509 code-signing certificate (PEM) for a detached CMS "
                   "signature of the manifest (docs/enterprise-signing.md)")
    p.add_argument("--cms-key", default=None, help="its private key (PEM; passphrase in $CAS_CMS_KEY_PASSWORD)")
    p.add_argument("--cms-chain", default=None, help="intermediate certificates (PEM) to embed in the signature")
    remote(p)

    r = sub.add_parser("release", help="release lifecycle").add_subparsers(dest="release_command", required=True)
    p = add("status", cmd_release_status, r, help="move a release: draft|testing|released|deprecated")
    p.add_argument("product")
    p.add_argument("version")
    p.add_argument("status", choices=["draft", "testing", "released", "deprecated"])
    p.add_argument("--reason", default=None)
    p.add_argument("--move-channel-to", default=None, metavar="VERSION",
                   help="first point every channel on this release at VERSION")
    remote(p)
    p = add("delete", cmd_release_delete, r, help="delete a draft or deprecated release")
    p.add_argument("product")
    p.add_argument("version")
    p.add_argument("--reason", default=None)
    remote(p)
    p = add("critical", cmd_release_critical, r, help="mark a release critical (applied outside windows)")
    p.add_argument("product")
    p.add_argument("version")
    p.add_argument("--off", action="store_true", help="remove the mark")
    p.add_argument("--reason", default=None)
    remote(p)
    p = add("history", cmd_release_history, r, help="lifecycle moves of a release")
    p.add_argument("product")
    p.add_argument("version")
    remote(p)

    c = sub.add_parser("channel", help="channels").add_subparsers(dest="channel_command", required=True)
    p = add("set", cmd_channel_set, c, help="point a channel at a release")
    p.add_argument("product")
    p.add_argument("channel")
    p.add_argument("version")
    p.add_argument("--min-status", choices=["testing", "released"], default=None)
    remote(p)

    ro = sub.add_parser("rollout", help="staged rollouts on a channel").add_subparsers(dest="rollout_command",
                                                                                      required=True)
    p = add("start", cmd_rollout_start, ro, help="start rolling a release out on a channel")
    p.add_argument("product")
    p.add_argument("channel")
    p.add_argument("version")
    p.add_argument("--strategy", choices=["staged", "all-at-once", "batches"], default="staged")
    p.add_argument("--stages", default="1,5,25,100", help="percents, increasing (staged)")
    p.add_argument("--stage-duration", default="1h", help="minimum time per stage: 30s, 10m, 1h, 2d")
    p.add_argument("--max-failure-rate", default="0.05", help="(failed + rolled_back) / reports above which "
                   "the rollout halts")
    p.add_argument("--min-reports", type=int, default=20, help="reports a stage needs before it advances")
    p.add_argument("--auto-abort", action="store_true", help="abort instead of halting when unhealthy")
    p.add_argument("--clients", default=None, help="batches: file of client ids, one a line")
    p.add_argument("--batch-size", type=int, default=10, help="batches: clients admitted per batch")
    p.add_argument("--interval", default=None, help="batches: minimum time between batches")
    p.add_argument("--max-failures", type=int, default=1, help="batches: failing clients that halt the rollout")
    p.add_argument("--max-concurrent", type=int, default=None, help="batches: clients updating at once "
                   "(caps the batch size)")
    p.add_argument("--salt", default=None, help="cohort salt (hex; default random)")
    p.add_argument("--reason", default=None)
    remote(p)
    p = add("status", cmd_rollout_status, ro, help="state, stage, health and history of the channel's rollout")
    p.add_argument("product")
    p.add_argument("channel")
    remote(p)
    for action, text in [("promote", "next stage now (or finish at the last)"), ("halt", "stop advancing"),
                         ("resume", "advance again (the stage's window restarts)"),
                         ("abort", "back to the previous release (new channel document)"),
                         ("flip-back", "all-at-once: point the channel back at the previous release")]:
        p = add(action, cmd_rollout_action, ro, help=text)
        p.set_defaults(action=action)
        p.add_argument("product")
        p.add_argument("channel")
        p.add_argument("--reason", default=None)
        remote(p)
    p = add("tick", cmd_rollout_tick, ro, help="run the health gate now (the server also runs it periodically)")
    p.add_argument("--product", default=None)
    remote(p)

    p = add("checkout", cmd_checkout, help="hardlink tree of a release")
    p.add_argument("product")
    p.add_argument("version")
    p.add_argument("dest")

    d = sub.add_parser("deltas", help="ahead-of-time deltas").add_subparsers(dest="deltas_command",
                                                                             required=True)
    p = add("build", cmd_deltas_build, d, help="queue builds for a release (and build them locally)")
    p.add_argument("product", nargs="?")
    p.add_argument("version", nargs="?")
    p.add_argument("--from", dest="base", action="append", help="base version (repeatable)")
    p.add_argument("--queue-only", action="store_true", help="only queue; leave building to the server")
    remote(p)
    p = add("status", cmd_deltas_status, d, help="queued, running, done and failed builds")
    remote(p)
    add("worker", cmd_deltas_worker, d, help="build queued deltas until stopped (run by cas serve)")

    mi = sub.add_parser("mirror", help="read-only mirrors of another server").add_subparsers(
        dest="mirror_command", required=True)
    p = add("sync", cmd_mirror_sync, mi, help="copy releases, channels, roots, deltas and objects, verified")
    p.add_argument("--upstream", default=None, help="upstream server URL (default: mirror_of in config.toml)")
    p.add_argument("--product", action="append", default=None, help="only this product (repeatable)")
    p.add_argument("--root", default=None, help="trusted root.json (default: trust on first use, with a warning)")
    p.add_argument("--jobs", type=int, default=4, help="parallel object downloads")
    p.add_argument("--token", default=None, help="read token for the upstream (default $CAS_UPSTREAM_TOKEN)")
    p.add_argument("--config", default=None)
    p = add("export", cmd_mirror_export, mi, help="write a static tree of the read API (docs/nginx-mirror.conf)")
    p.add_argument("dest")

    p = sub.add_parser("demo", help="start a server, publish, update a client, roll back; then clean up")
    p.set_defaults(func=cmd_demo)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--dir", default=None, help="work here instead of a new temporary directory")

    p = add("gc", cmd_gc, help="delete unreferenced objects (mark, tombstone, sweep)")
    p.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    p.add_argument("--grace", type=int, default=6 * 3600, help="seconds an object stays tombstoned first")
    p.add_argument("--retain", type=int, default=None, help="keep the last N released versions per product")
    remote(p)

    p = add("fsck", cmd_fsck, help="re-hash every object, quarantine corrupt ones")
    p.add_argument("--no-quarantine", action="store_true")
    p = add("stats", cmd_stats, help="logical and stored bytes, dedup ratio")
    remote(p)
    p = add("dashboard", cmd_dashboard, help="the operator dashboard's views (the JSON the web page at / renders)")
    p.add_argument("view", choices=list(DASHBOARD_VIEWS))
    p.add_argument("--product", default=None, help="deltas and channels: only this product")
    remote(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CasError, RemoteError, DocumentError, TreeError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        detail = getattr(exc, "detail", None)
        print(f"cas: error: {message}", file=sys.stderr)
        if detail:
            for line in (detail if isinstance(detail, list) else [detail])[:20]:
                print(f"  {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"cas: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
