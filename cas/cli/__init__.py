"""``cas``: the server, publisher and admin command line.

One module per command group (``serve``, ``keys``, ``publish``, ``release``, ``channel``,
``rollout``, ``deltas``, ``mirror``, ``store``, ``dashboard``, ``demo``), each with a
``register`` that adds its subcommands; ``main`` builds the parser from them and
``command`` holds what they share (arguments, local store or server, output, errors).
"""
from __future__ import annotations

import argparse

__all__ = ["build_parser", "main"]


# ``cas.cli.main`` imports every command group (httpx, rich, the CMS stack...): imported when a
# command runs, not with the package, so that a process using one module of it (the server's
# delta worker, ``cas.deltas_worker``, reports errors with ``command.report_error``) stays lean.
def main(argv: list[str] | None = None) -> int:
    from .main import main as run
    return run(argv)


def build_parser() -> argparse.ArgumentParser:
    from .main import build_parser as build
    return build()
