"""``cas deltas build|status|worker``: ahead-of-time delta builds."""
from __future__ import annotations

import argparse
from typing import Any

from deltagen.children import die_with_parent

from .. import deltas, releases
from ..errors import CasError
from ..remote import call
from .command import Subcommands, add_command, add_group, add_remote, emit, local_repo, remote_of


def cmd_deltas_build(args: argparse.Namespace) -> int:
    """Queue builds for a release; locally also build everything queued (unless ``--queue-only``)."""
    remote = remote_of(args)
    if args.product:
        if not args.version:
            raise CasError("name the release: cas deltas build P V [--from BASE ...]", code="bad_request")
        body: dict[str, Any] = {"product": args.product, "version": args.version}
        if args.base:
            body["from"] = args.base
        if remote:
            data = call(*remote, "POST", "/v1/admin/deltas/build", json=body)
        else:
            repo = local_repo(args)
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
        data["built"] = deltas.drain(local_repo(args))
    emit(args, data, f"queued {data['queued'] if data['queued'] is not None else 'nothing new'}"
         + (f", built {data['built']} jobs" if "built" in data else " (the server's worker builds them)"))
    return 0


def cmd_deltas_status(args: argparse.Namespace) -> int:
    """Queued, running, done and failed builds (with their errors)."""
    remote = remote_of(args)
    data = call(*remote, "GET", "/v1/admin/deltas") if remote else local_repo(args).meta.jobs_summary()
    counts = data["counts"]
    lines = [" ".join(f"{k} {v}" for k, v in counts.items())]
    lines += [f"  running {j['base'][:12] or '(compress)'} -> {j['target'][:12]}" for j in data["running"]]
    lines += [f"  failed  {j['base'][:12] or '(compress)'} -> {j['target'][:12]}: {j['error']}"
              for j in data["failed"]]
    emit(args, data, "\n".join(lines))
    return 0


def cmd_deltas_worker(args: argparse.Namespace) -> int:
    """Build queued deltas until SIGTERM, which ends the running builds (their temp
    directories removed) and hands their jobs back to the queue.

    Started by ``cas serve`` (as ``python -m cas.deltas_worker``, the same without the
    command line's imports), it dies with the server (``deltagen.children``); only one
    worker builds per store at a time (``deltas.worker_lock``), a second one waits."""
    die_with_parent()
    return deltas.run_worker(local_repo(args))


def register(sub: Subcommands) -> None:
    """``cas deltas build|status|worker``."""
    d = add_group(sub, "deltas", "ahead-of-time deltas")
    p = add_command(d, "build", cmd_deltas_build, help="queue builds for a release (and build them locally)")
    p.add_argument("product", nargs="?")
    p.add_argument("version", nargs="?")
    p.add_argument("--from", dest="base", action="append", help="base version (repeatable)")
    p.add_argument("--queue-only", action="store_true", help="only queue; leave building to the server")
    add_remote(p)
    p = add_command(d, "status", cmd_deltas_status, help="queued, running, done and failed builds")
    add_remote(p)
    add_command(d, "worker", cmd_deltas_worker, help="build queued deltas until stopped (run by cas serve)")
