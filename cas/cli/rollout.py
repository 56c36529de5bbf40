"""``cas rollout start|status|promote|halt|resume|abort|flip-back|tick``: rollouts on a channel."""
from __future__ import annotations

import argparse
from typing import Any

from .. import rollouts
from ..clock import clock_from_env
from ..errors import CasError
from ..remote import call
from .command import Subcommands, add_command, add_group, add_remote, emit, local_repo, remote_of

# operator steps on a running rollout: (action, help)
ACTIONS = [("promote", "next stage now (or finish at the last)"), ("halt", "stop advancing"),
           ("resume", "advance again (the stage's window restarts)"),
           ("abort", "back to the previous release (new channel document)"),
           ("flip-back", "all-at-once: point the channel back at the previous release")]


def _stages_ok(text: str) -> bool:
    return all(part.strip().isdigit() for part in text.split(","))


def start_body(args: argparse.Namespace) -> dict[str, Any]:
    """The rollout a ``cas rollout start`` asks for, as the body of ``POST .../rollout``."""
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


def describe_human(data: dict[str, Any]) -> str:
    """A rollout's state and health in a few lines."""
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
    """Start rolling a release out on a channel."""
    body = start_body(args)
    remote = remote_of(args)
    if remote:
        data = call(*remote, "POST", f"/v1/products/{args.product}/channels/{args.channel}/rollout", json=body)
    else:
        repo, clock = local_repo(args), clock_from_env()
        version, reason = body.pop("release"), body.pop("reason", "")
        r = rollouts.start(repo, clock, args.product, args.channel, version, "local", reason=reason, **body)
        data = rollouts.describe(repo, clock, r)
    emit(args, data, describe_human(data))
    return 0


def cmd_rollout_status(args: argparse.Namespace) -> int:
    """State, stage, health and history of the channel's rollout."""
    remote = remote_of(args)
    if remote:
        data = call(*remote, "GET", f"/v1/products/{args.product}/channels/{args.channel}/rollout")
    else:
        data = rollouts.status(local_repo(args), clock_from_env(), args.product, args.channel)
    lines = [describe_human(data)] + [f"  {e['at']}  {e['event']:12} {e['percent']:3}%  {e['actor']}  {e['reason']}"
                                      for e in data["events"]]
    emit(args, data, "\n".join(lines))
    return 0


def cmd_rollout_action(args: argparse.Namespace) -> int:
    """One operator step (``args.action``, one of ``ACTIONS``)."""
    remote = remote_of(args)
    if remote:
        data = call(*remote, "POST", f"/v1/products/{args.product}/channels/{args.channel}/rollout/{args.action}",
                    json={"reason": args.reason or ""})
    else:
        repo, clock = local_repo(args), clock_from_env()
        r = rollouts.act(repo, clock, args.product, args.channel, args.action, "local", args.reason or "")
        data = rollouts.describe(repo, clock, r)
    emit(args, data, describe_human(data))
    return 0


def cmd_rollout_tick(args: argparse.Namespace) -> int:
    """Run the health gate now."""
    remote = remote_of(args)
    if remote:
        query = f"?product={args.product}" if args.product else ""
        data = call(*remote, "POST", f"/v1/admin/rollouts/tick{query}")
    else:
        data = {"steps": rollouts.evaluate(local_repo(args), clock_from_env(), args.product)}
    emit(args, data, "\n".join(f"{s['product']}/{s['channel']}: {s['action']} -> {s['state']} at "
                               f"{s['percent']}% ({s['reason']})" for s in data["steps"]) or "nothing to do")
    return 0


def register(sub: Subcommands) -> None:
    """``cas rollout ...``."""
    ro = add_group(sub, "rollout", "staged rollouts on a channel")
    p = add_command(ro, "start", cmd_rollout_start, help="start rolling a release out on a channel")
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
    add_remote(p)
    p = add_command(ro, "status", cmd_rollout_status, help="state, stage, health and history of the channel's rollout")
    p.add_argument("product")
    p.add_argument("channel")
    add_remote(p)
    for action, text in ACTIONS:
        p = add_command(ro, action, cmd_rollout_action, help=text)
        p.set_defaults(action=action)
        p.add_argument("product")
        p.add_argument("channel")
        p.add_argument("--reason", default=None)
        add_remote(p)
    p = add_command(ro, "tick", cmd_rollout_tick, help="run the health gate now (the server also runs it periodically)")
    p.add_argument("--product", default=None)
    add_remote(p)
