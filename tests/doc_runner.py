"""Run the shell steps of a documentation page against a real server, the way a reader
types them: the page's ``sh`` blocks (tests/test_tutorial.py) or a CI job's script
(tests/test_ci_docs.py) in one ``bash -euo pipefail``, with ``cas`` and ``cas-client`` on
PATH running this checkout (``python -m cas.cli``, ``python -m client.cli``)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def sh_blocks(markdown: str) -> list[str]:
    return SH_BLOCK.findall(markdown)


def tool_path(work: Path) -> str:
    """A bin directory with ``cas`` and ``cas-client`` of this checkout, first on PATH."""
    bin_dir = work / ".bin"
    bin_dir.mkdir(exist_ok=True)
    for name, module in (("cas", "cas.cli"), ("cas-client", "client.cli")):
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        wrapper.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def run_script(script: str, work: Path, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``script`` in ``bash -euo pipefail`` in ``work``; every process it leaves behind (a
    server started with ``&``) is ended with its session when it returns or fails."""
    repo = Path(__file__).resolve().parent.parent
    full_env = {**os.environ, "PATH": tool_path(work),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
                **(env or {})}
    for name in ("CAS_SERVER", "CAS_TOKEN", "CAS_STORE", "CAS_CONFIG"):
        if name not in (env or {}):
            full_env.pop(name, None)
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the session this test started: its server, if still up
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
