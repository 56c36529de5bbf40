"""``cas demo``: the whole product on a temporary store, then clean up (``cas/demo.py``)."""
from __future__ import annotations

import argparse

from .command import Subcommands


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a server, publish, update a client, roll back."""
    from ..demo import run_demo
    return run_demo(keep=args.keep, workdir=args.dir)


def register(sub: Subcommands) -> None:
    """``cas demo`` (no ``--store``: it makes its own)."""
    p = sub.add_parser("demo", help="start a server, publish, update a client, roll back; then clean up")
    p.set_defaults(func=cmd_demo)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--dir", default=None, help="work here instead of a new temporary directory")
