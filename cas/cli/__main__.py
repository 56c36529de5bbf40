"""``python -m cas.cli ...``: the same as the ``cas`` command."""
from __future__ import annotations

import sys

from .main import main

sys.exit(main())
