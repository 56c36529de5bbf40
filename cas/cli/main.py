"""The ``cas`` parser, built from one ``register`` per command group, and ``main``."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import NoReturn

import httpx

from casformat.errors import DocumentError
from deltagen.errors import DeltaError
from deltagen.output import stdout_closed

from ..errors import CasError
from ..remote import RemoteError
from . import (
    channel,
    dashboard,
    deltas,
    demo,
    keys,
    mirror,
    pin,
    publish,
    release,
    rollout,
    serve,
    static,
    store,
    tokens,
)
from .command import Subcommands, report_error

CLOSED_PIPE = 141   # the reader of standard output went away (128 + SIGPIPE, as a shell reports it)

# in the order ``cas --help`` lists the commands
GROUPS: tuple[Callable[[Subcommands], None], ...] = (
    serve.register, keys.register, tokens.register, publish.register, release.register, channel.register, rollout.register, pin.register,
    store.register_checkout, deltas.register, mirror.register, static.register, demo.register, store.register,
    dashboard.register)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are raised (``UsageError``) so ``--json`` can report them."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


class UsageError(Exception):
    """A command line the parser refused: ``parser`` (the subcommand's) and argparse's message."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser, self.message = parser, message


def build_parser() -> argparse.ArgumentParser:
    """``cas`` and every subcommand."""
    parser = _Parser(prog="cas", description="deltacas server and publisher")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in GROUPS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; any server, format, delta or OS error is one ``cas: error:`` line and exit 1."""
    words = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(words)
    except UsageError as exc:   # argparse's usage and message, exit 2; under --json also one object
        if "--json" in words:
            print(json.dumps({"ok": False, "code": "usage", "message": f"{exc.parser.prog}: {exc.message}",
                              "detail": None}, sort_keys=True))
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr)
        return 2
    as_json = bool(getattr(args, "json", False))
    try:
        status: int = args.func(args)
        sys.stdout.flush()   # a closed pipe shows here, not at exit
    except (CasError, DocumentError, DeltaError, OSError) as exc:
        if stdout_closed(exc):
            return CLOSED_PIPE
        return report_error(exc, as_json)
    except httpx.HTTPError as exc:  # a request outside cas/remote.request: still one line with a code
        return report_error(RemoteError(0, "connection_failed", f"{type(exc).__name__}: {exc}"), as_json)
    except KeyboardInterrupt:
        return 130
    return status
