"""``python -m cas.deltas_worker --store DIR``: the server's delta worker (``cas deltas worker``)
without the command line's imports.

``cas serve`` starts its delta builder this way: through ``cas.cli`` the process imported
every command group (httpx, rich, pygments, the CMS signing stack) and stood at ~58 MiB
before building anything; this way it imports what building needs (``cas.deltas``), ~37 MiB.
Errors are reported as the command line reports them (``cas.cli.command.report_error``).
"""
from __future__ import annotations

import argparse
import sys

from casformat.errors import DocumentError
from deltagen.children import die_with_parent
from deltagen.errors import DeltaError

from .cli.command import report_error
from .config import load_config
from .deltas import run_worker
from .errors import CasError
from .repo import open_repo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cas deltas worker",
                                     description="build queued deltas until stopped (run by cas serve)")
    parser.add_argument("--store", help="the store directory (default: CAS_STORE)")
    args = parser.parse_args(argv)
    die_with_parent()
    try:
        repo = open_repo(load_config(args.store, None))
        return run_worker(repo)
    except (CasError, DocumentError, DeltaError, OSError) as exc:
        return report_error(exc)


if __name__ == "__main__":
    sys.exit(main())
