"""``cas``: the server, publisher and admin command line.

One module per command group (``serve``, ``keys``, ``publish``, ``release``, ``channel``,
``rollout``, ``deltas``, ``mirror``, ``store``, ``dashboard``, ``demo``), each with a
``register`` that adds its subcommands; ``main`` builds the parser from them and
``command`` holds what they share (arguments, local store or server, output, errors).
"""
from __future__ import annotations

from .main import build_parser, main

__all__ = ["build_parser", "main"]
