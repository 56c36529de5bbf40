"""The ``cas`` parser, built from one ``register`` per command group, and ``main``."""
from __future__ import annotations

import argparse
from collections.abc import Callable

import httpx

from casformat.errors import DocumentError
from deltagen.errors import DeltaError

from ..errors import CasError
from ..remote import RemoteError
from . import channel, dashboard, deltas, demo, keys, mirror, pin, publish, release, rollout, serve, store, tokens
from .command import Subcommands, report_error

# in the order ``cas --help`` lists the commands
GROUPS: tuple[Callable[[Subcommands], None], ...] = (
    serve.register, keys.register, tokens.register, publish.register, release.register, channel.register, rollout.register, pin.register,
    store.register_checkout, deltas.register, mirror.register, demo.register, store.register,
    dashboard.register)


def build_parser() -> argparse.ArgumentParser:
    """``cas`` and every subcommand."""
    parser = argparse.ArgumentParser(prog="cas", description="deltacas server and publisher")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in GROUPS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; any server, format, delta or OS error is one ``cas: error:`` line and exit 1."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except (CasError, DocumentError, DeltaError, OSError) as exc:
        return report_error(exc)
    except httpx.HTTPError as exc:  # a request outside cas/remote.request: still one line with a code
        return report_error(RemoteError(0, "connection_failed", f"{type(exc).__name__}: {exc}"))
    except KeyboardInterrupt:
        return 130
    return status
