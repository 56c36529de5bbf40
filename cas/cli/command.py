"""What every ``cas`` command shares: its parser entry, where it acts, its output, its error line.

A command acts on the local store (``--store DIR``, ``$CAS_STORE``, default ``./cas-data``)
or, where it can, on a server (``--server URL --token T``, ``$CAS_SERVER``, ``$CAS_TOKEN``).
It prints one human summary or, with ``--json``, the data behind it.  Any error of the
server, the wire format or deltagen becomes one ``cas: error: <message>`` line (plus
indented detail lines) and exit status 1 (``report_error``); with ``--json`` also one JSON
object ``{"ok": false, "code", "message", "detail"}`` on stdout.  A closed standard output
(``cas ... | head``) ends the command quietly (exit 141, as a shell reports SIGPIPE).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from casformat.errors import DocumentError
from deltagen.errors import DeltaError

from .. import keys
from ..config import load_config
from ..errors import CasError
from ..repo import Repo, open_repo

Command = Callable[[argparse.Namespace], int]
Subcommands = argparse._SubParsersAction  # what ``add_subparsers`` returns
Remote = tuple[str, str | None]
Progress = Callable[[int], None]

MAX_DETAIL_LINES = 20


def add_command(parent: Subcommands, name: str, func: Command, **kw: Any) -> argparse.ArgumentParser:
    """A subcommand running ``func``, with the ``--store`` and ``--json`` every command takes."""
    p: argparse.ArgumentParser = parent.add_parser(name, **kw)
    p.set_defaults(func=func)
    p.add_argument("--store", default=None, help="store directory (default $CAS_STORE or ./cas-data)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def add_group(parent: Subcommands, name: str, help: str) -> Subcommands:
    """A command group (``cas keys ...``): its own subcommands, one of them required."""
    group: Subcommands = parent.add_parser(name, help=help).add_subparsers(dest=f"{name}_command", required=True)
    return group


def add_remote(p: argparse.ArgumentParser) -> None:
    """``--server`` and ``--token``: the command can act on a server instead of the store."""
    p.add_argument("--server", default=None, help="server URL (default $CAS_SERVER)")
    p.add_argument("--token", default=None, help="bearer token (default $CAS_TOKEN)")


def local_repo(args: argparse.Namespace) -> Repo:
    """The store named by ``--store`` (and ``--config`` where the command has it)."""
    return open_repo(load_config(args.store, getattr(args, "config", None)))


def release_keys(args: argparse.Namespace, store: str | os.PathLike[str] | None) -> list[Ed25519PrivateKey]:
    """The release keys a command signs with: ``--key`` files, else ``CAS_RELEASE_KEY``, else the
    store's own release keys (``store`` None: there is no store to fall back to)."""
    files = args.key or ([os.environ["CAS_RELEASE_KEY"]] if os.environ.get("CAS_RELEASE_KEY") else [])
    if files:
        return [keys.load_private_key(Path(f)) for f in files]
    if store is None:
        raise CasError("publishing to a server needs --key FILE (the release key)", code="no_key")
    signing = keys.load_role_keys(Path(store), "release")
    if not signing:
        raise CasError("no release key in the store (run `cas keys init`) and no --key", code="no_key")
    return signing


def remote_of(args: argparse.Namespace) -> Remote | None:
    """(server URL, token) when the command should act on a server, else None (the local store)."""
    server = getattr(args, "server", None) or os.environ.get("CAS_SERVER")
    if not server:
        return None
    return server, getattr(args, "token", None) or os.environ.get("CAS_TOKEN")


def explicit_remote(args: argparse.Namespace) -> Remote | None:
    """Read-only views: an explicit ``--store`` wins over ``$CAS_SERVER``; ``--server`` wins over both."""
    return remote_of(args) if args.server or not args.store else None


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    """Print ``data`` as JSON under ``--json``, else the human summary."""
    print(json.dumps(data, indent=2, sort_keys=True) if getattr(args, "json", False) else human)


@contextmanager
def progress_bar(total: int, label: str, enabled: bool) -> Iterator[Progress]:
    """A rich progress bar (bytes, rate, ETA) on stderr while the block runs, or a no-op.

    Yields the function that advances it by a number of bytes."""
    if not enabled or total == 0:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
    bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=total)
    bar.start()
    try:
        yield lambda n: bar.advance(task, n)
    finally:
        bar.stop()


def detail_lines(detail: Any) -> list[str]:
    """An error's detail as human lines: a mapping as ``key: value``, lists joined, never a repr."""
    def words(value: Any) -> str:
        if isinstance(value, list | tuple | set):
            return ", ".join(words(v) for v in value) or "(none)"
        if isinstance(value, dict):
            return "; ".join(f"{k} {words(v)}" for k, v in value.items())
        return "-" if value is None else str(value)

    if not detail:
        return []
    if isinstance(detail, dict):
        return [f"{key}: {words(value)}" for key, value in detail.items()][:MAX_DETAIL_LINES]
    return [words(line) for line in (detail if isinstance(detail, list) else [detail])][:MAX_DETAIL_LINES]


def report_error(exc: CasError | DocumentError | DeltaError | OSError, as_json: bool = False) -> int:
    """Report a failed command and return its exit status (1): one ``cas: error: <message> (<code>)``
    line and its detail lines on stderr; with ``as_json`` (``--json``) also one JSON object
    ``{"ok": false, "code", "message", "detail"}`` on stdout."""
    if isinstance(exc, OSError):
        code = errno.errorcode.get(exc.errno or 0, "os_error")
        message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        detail: Any = None
    else:
        code, message, detail = exc.code, exc.message, exc.detail
    if as_json:
        print(json.dumps({"ok": False, "code": code, "message": message, "detail": detail}, sort_keys=True,
                         default=str))
    print(f"cas: error: {message} ({code})", file=sys.stderr)
    for line in detail_lines(detail):
        print(f"  {line}", file=sys.stderr)
    return 1
