"""``cas-client``: the thin update client's command line."""
from __future__ import annotations

import argparse
import errno
import json
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from casformat.errors import DocumentError
from deltagen.output import stdout_closed

from .config import SETTINGS, ClientConfig, ConfigError, default_of, parse_value, unknown_setting
from .errors import ClientError
from .updater import Updater, UpdateResult

Command = Callable[[argparse.Namespace], int]


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return str(value)


def _emit(args: argparse.Namespace, data: Mapping[str, object], human: str, ok: bool = True) -> None:
    """The command's one JSON object (with ``ok`` unless the data has its own) or its human summary."""
    if args.json:
        print(json.dumps({"ok": ok, **data}, indent=2, sort_keys=True, default=str))
    else:
        print(human)


def _updater(args: argparse.Namespace, with_progress: bool = False) -> Updater:
    log = (lambda m: None) if args.json else (lambda m: print(f"cas-client: {m}", file=sys.stderr))
    if not with_progress or args.json or not sys.stderr.isatty():
        return Updater(args.root, log=log)
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
    bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task("downloading", total=None)
    bar.start()
    args._bar = bar
    return Updater(args.root, log=log, progress=lambda n: bar.advance(task, n),
                   progress_total=lambda n: bar.update(task, total=n))


# Flags for the common settings: (flag, setting); each value goes through config.parse_value.
INIT_FLAGS = (("--health-timeout", "health_timeout_s"), ("--keep-versions", "keep_versions"),
              ("--concurrency", "concurrency"), ("--bandwidth-limit", "bandwidth_bytes_per_s"),
              ("--attempts", "attempts"), ("--cms-trust-anchors", "cms_trust_anchors"))
UPDATE_FLAGS = (("--health-timeout", "health_timeout_s"), ("--concurrency", "concurrency"),
                ("--bandwidth-limit", "bandwidth_bytes_per_s"), ("--attempts", "attempts"))


def _flag_settings(args: argparse.Namespace, flags: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """The settings given as flags (and ``--set NAME=VALUE``), each checked by ``parse_value``."""
    values: dict[str, Any] = {}
    words: dict[str, list[str]] = {}
    for item in getattr(args, "set", None) or []:
        name, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes NAME=VALUE; got {item!r}")
        words.setdefault(name.strip(), []).append(text)   # a list setting: one --set per element
    for name, texts in words.items():
        values[name] = parse_value(name, texts)
    for flag, name in flags:
        text = getattr(args, flag.lstrip("-").replace("-", "_"))
        if text is not None:
            values[name] = parse_value(name, [text])
    return values


def cmd_init(args: argparse.Namespace) -> int:
    root_doc = Path(args.root_file).read_bytes()
    settings = _flag_settings(args, INIT_FLAGS)
    for flag, name in (("window", "windows"), ("blackout", "blackouts")):
        if getattr(args, flag):
            settings[name] = parse_value(name, getattr(args, flag))
    for name in ("timezone", "report_token", "report_url"):
        if getattr(args, name) is not None:
            settings[name] = parse_value(name, [getattr(args, name)])
    if args.require_cms:
        settings["require_cms"] = True
    updater = Updater.init(args.root, args.server, args.product, args.channel, root_doc,
                           client_id=args.client_id, health_cmd=args.health_cmd, **settings)
    config = updater.config
    _emit(args, config.to_dict(), f"initialised {args.root} for {config.product}/{config.channel} "
          f"(client id {config.client_id})")
    return 0


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(repr(v) for v in value) if value else "(none)"
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _config_rows(updater: Updater) -> dict[str, dict[str, Any]]:
    stored = updater.stored_config()
    current = ClientConfig.from_dict(stored).to_dict()
    rows: dict[str, dict[str, Any]] = {}
    for name, setting in SETTINGS.items():
        value = current[name]
        if name == "report_token" and value:
            value = "(set)"   # a secret: shown only by `config get`
        rows[name] = {"value": value, "default": default_of(name), "set": name in stored,
                      "allowed": setting.allowed(), "help": setting.help, "settable": setting.settable}
    return rows


def cmd_config_show(args: argparse.Namespace) -> int:
    rows = _config_rows(Updater(args.root))
    lines = []
    for name, row in rows.items():
        mark = "" if row["set"] or not row["settable"] else "  (default)"
        lines.append(f"{name:22} {_shown(row['value'])}{mark}")
    _emit(args, {"settings": rows}, "\n".join(lines))
    return 0


def cmd_config_get(args: argparse.Namespace) -> int:
    updater = Updater(args.root)
    if args.name not in SETTINGS:
        raise unknown_setting(args.name)
    value = updater.config.to_dict()[args.name]
    _emit(args, {"name": args.name, "value": value, "default": default_of(args.name),
                 "set": args.name in updater.stored_config()}, _shown(value))
    return 0


def cmd_config_set(args: argparse.Namespace) -> int:
    value = parse_value(args.name, args.value)
    config = Updater(args.root).set_config({args.name: value})
    stored = config.to_dict()[args.name]
    _emit(args, {"name": args.name, "value": stored}, f"{args.name} = {_shown(stored)}")
    return 0


def cmd_config_unset(args: argparse.Namespace) -> int:
    config = Updater(args.root).set_config({args.name: None})
    value = config.to_dict()[args.name]
    _emit(args, {"name": args.name, "value": value},
          f"{args.name} = {_shown(value)} (the default)")
    return 0


def _summary(result: UpdateResult) -> str:
    if result.outcome == "up_to_date":
        return f"up to date at {result.current}"
    if result.outcome == "skipped_failed":
        return result.steps[0] if result.steps else f"{result.to_version} failed here before; skipped"
    if result.outcome == "deferred":
        return (f"{result.to_version} is available; outside the maintenance window, next window opens "
                f"{result.next_window or 'never (blackout or no window)'}")
    warned = "".join(f"\n  warning: {w}" for w in result.warnings)
    saved = result.bytes_full - result.bytes_downloaded
    pct = 100 * saved / result.bytes_full if result.bytes_full else 0
    head = {"updated": f"updated {result.from_version or '(nothing)'} -> {result.to_version}",
            "rolled_back": f"update to {result.to_version} failed its health check; rolled back to {result.current}",
            }.get(result.outcome, result.outcome)
    return (f"{head}\n  {result.files} files ({result.files_local} already present), "
            f"downloaded {_human_bytes(result.bytes_downloaded)} of {_human_bytes(result.bytes_full)} "
            f"({pct:.1f}% saved{', via delta' if result.used_delta else ''}) in {result.seconds:.2f}s{warned}")


def cmd_update(args: argparse.Namespace) -> int:
    updater = _updater(args, with_progress=True)
    updater.overrides = _flag_settings(args, UPDATE_FLAGS)
    updater.config  # noqa: B018 - check the overrides against the stored settings before any work
    try:
        result = updater.update(to=args.to, health_cmd=args.health_cmd, ignore_window=args.ignore_window,
                                retry_failed=args.retry_failed, allow_downgrade=args.allow_downgrade,
                                allow_major=args.allow_major)
    finally:
        if getattr(args, "_bar", None):
            args._bar.stop()
    status = 0 if result.outcome in ("updated", "up_to_date", "deferred", "skipped_failed") else 2
    data: dict[str, object] = dict(result.__dict__)
    if status:
        data.update(code=result.outcome, message=_summary(result).splitlines()[0])
    _emit(args, data, _summary(result), ok=status == 0)
    return status


def cmd_rollback(args: argparse.Namespace) -> int:
    data = _updater(args).rollback(args.to, args.health_cmd)
    _emit(args, data, f"rolled back {data['from'] or '(nothing)'} -> {data['to']} ({data['health']}); "
          f"previous is now {data['previous'] or '(none)'}, factory {data['factory'] or '(none)'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    data = _updater(args).status(online=not args.offline)
    lines = [f"{data['product']}/{data['channel']} at {data['root']}"]
    for name in ("current", "previous", "factory"):
        lines.append(f"  {name:9} {data[name] or '-'}")
    if "channel_release" in data:
        lines.append(f"  channel   {data['channel_release']} (sequence {data['channel_sequence']})"
                     + ("  update pending" if data["update_pending"] else "  up to date"))
        if data.get("channel_policy"):
            lines.append(f"  policy    {data['channel_policy']['rule']} (the channel's version policy)")
    elif "channel_error" in data:
        lines.append(f"  channel   unavailable: {data['channel_error']}")
    if "next_window" in data:
        lines.append("  window    open now" if data["window_open"] else
                     f"  window    next opens {data['next_window'] or 'never'}")
    for row in data["failed_releases"]:
        lines.append(f"  failed    {row.get('version')} (manifest {row['manifest'][:16]}): failed its health "
                     "check here; skipped until a newer release or update --retry-failed")
    if data["journal"]:
        lines.append(f"  unfinished update to {data['journal'].get('target')} ({data['journal'].get('phase')})")
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    data = _updater(args).verify(args.version)
    if not data["ok"]:
        data.update(code="damaged", message=f"{data['version']} is damaged: {len(data['problems'])} problems")
    _emit(args, data, f"{data['version']}: " + ("intact" if data["ok"] else
                                                "DAMAGED\n  " + "\n  ".join(data["problems"][:50])))
    return 0 if data["ok"] else 1


def cmd_gc(args: argparse.Namespace) -> int:
    data = _updater(args).gc()
    _emit(args, data, f"removed {', '.join(data['removed']) or 'nothing'}; kept {', '.join(data['kept'])}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cas-client", description="deltacas update client")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        p.add_argument("root", help="install root")
        p.add_argument("--json", action="store_true")
        return p

    p = add("init", cmd_init, help="pin a root document and the servers")
    p.add_argument("--server", action="append", required=True, help="server or mirror URL (repeatable)")
    p.add_argument("--product", required=True)
    p.add_argument("--channel", required=True)
    p.add_argument("--root", dest="root_file", required=True, help="trusted root.json, given out of band")
    p.add_argument("--client-id", default=None)
    p.add_argument("--health-cmd", default=None)
    p.add_argument("--window", action="append", help="maintenance window, e.g. 'mon-fri 02:00-04:00' (repeatable)")
    p.add_argument("--blackout", action="append", help="no updates in START/END, e.g. 2026-12-20/2027-01-05")
    p.add_argument("--timezone", default=None, help="IANA time zone of the windows (default UTC)")
    p.add_argument("--report-token", default=None, help="token sent with update reports")
    p.add_argument("--report-url", default=None,
                   help="the server (the origin) that takes reports and the report token; default: the last --server")
    _setting_flags(p, INIT_FLAGS)
    p.add_argument("--require-cms", action="store_true", help="refuse manifests without a valid CMS signature")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="any other setting (see `cas-client config show`); repeatable")
    p = add("update", cmd_update, help="update to the channel's release")
    p.add_argument("--to", default=None)
    p.add_argument("--health-cmd", default=None)
    p.add_argument("--ignore-window", action="store_true", help="apply now even outside the window")
    p.add_argument("--retry-failed", action="store_true",
                   help="try again a release that failed its health check here (cleared mark)")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="install an older release than the current one although the channel's version policy forbids it")
    p.add_argument("--allow-major", action="store_true",
                   help="change the major version although the channel's policy is same-major")
    _setting_flags(p, UPDATE_FLAGS, " (this run only)")
    p = add("rollback", cmd_rollback, help="go back to previous, factory or a version")
    p.add_argument("--to", default="previous")
    p.add_argument("--health-cmd", default=None)
    p = add("status", cmd_status, help="installed versions and the channel")
    p.add_argument("--offline", action="store_true")
    p = add("verify", cmd_verify, help="re-hash an installed tree")
    p.add_argument("--version", default=None)
    add("gc", cmd_gc, help="remove versions other than current, previous and factory")

    group = sub.add_parser("config", help="show or change the settings in ROOT/.cas/config.json")
    csub = group.add_subparsers(dest="config_command", required=True)

    def add_config(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        p = csub.add_parser(name, help=help)
        p.set_defaults(func=func)
        p.add_argument("root", help="install root")
        p.add_argument("--json", action="store_true")
        return p

    add_config("show", cmd_config_show, help="every setting, its value and whether it is the default")
    add_config("get", cmd_config_get, help="one setting's value").add_argument("name")
    p = add_config("set", cmd_config_set, help="change a setting (checked; nothing written when refused)")
    p.add_argument("name")
    p.add_argument("value", nargs="+", help="the value (lists: one word per element)")
    add_config("unset", cmd_config_unset, help="put a setting back to its default").add_argument("name")
    return parser


def _setting_flags(p: argparse.ArgumentParser, flags: tuple[tuple[str, str], ...], note: str = "") -> None:
    for flag, name in flags:
        setting = SETTINGS[name]
        p.add_argument(flag, default=None, metavar="VALUE",
                       help=f"{setting.help}: {setting.allowed()}{note} (setting {name})")


CLOSED_PIPE = 141   # the reader of standard output went away (128 + SIGPIPE, as a shell reports it)
USAGE = 2           # argparse's status for a command line it cannot parse


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are raised (``UsageError``) so ``--json`` can report them."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


class UsageError(Exception):
    """A command line the parser refused: ``parser`` (the subcommand's) and argparse's message."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser, self.message = parser, message


def _fail(as_json: bool, code: str, message: str, detail: object = None) -> None:
    """A failed command: one JSON object on stdout under ``--json``; the error line on stderr always."""
    if as_json:
        print(json.dumps({"ok": False, "code": code, "message": message, "detail": detail}, sort_keys=True,
                         default=str))
    print(f"cas-client: error: {message}", file=sys.stderr)
    if isinstance(detail, list):
        for line in detail[:10]:
            print(f"  {line}", file=sys.stderr)
    elif isinstance(detail, dict) and code != "policy_refused":
        for key, value in detail.items():
            print(f"  {key}: {value}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure is one ``cas-client: error:`` line (and, under ``--json``,
    one ``{"ok": false, "code", "message", "detail"}`` object on stdout) and its documented status."""
    words = sys.argv[1:] if argv is None else argv
    as_json = "--json" in words
    try:
        args = build_parser().parse_args(words)
    except UsageError as exc:
        if as_json:
            print(json.dumps({"ok": False, "code": "usage", "message": f"{exc.parser.prog}: {exc.message}",
                              "detail": None}, sort_keys=True))
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr)
        return USAGE
    func: Command = args.func
    try:
        status = func(args)
        sys.stdout.flush()   # a closed pipe shows here, not at exit
        return status
    except ClientError as exc:
        _fail(as_json, exc.code, exc.message, exc.detail)
        return exc.exit_code
    except DocumentError as exc:
        _fail(as_json, exc.code, f"refused: {exc.message}", exc.detail)
        return 1
    except OSError as exc:
        if stdout_closed(exc):
            return CLOSED_PIPE
        code = errno.errorcode.get(exc.errno or 0, "os_error")
        _fail(as_json, code, f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return 1
    except KeyboardInterrupt:
        _fail(as_json, "interrupted", "interrupted")
        return 130
    except Exception as exc:   # a bug: still one JSON object under --json, and the traceback
        if not as_json:
            raise
        _fail(as_json, "internal", f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
