"""Entry point for uvicorn workers: build the app from the environment."""
from __future__ import annotations

import os

from starlette.applications import Starlette

from ..config import load_config
from ..repo import open_repo
from .app import create_app


def make_app() -> Starlette:
    """Factory for ``uvicorn --factory`` (used by ``cas serve --workers N``)."""
    config = load_config(os.environ.get("CAS_STORE"), os.environ.get("CAS_CONFIG") or None)
    return create_app(open_repo(config))
