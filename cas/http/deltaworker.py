"""The server's delta builder: a supervised `cas deltas worker` child process.

Builds are CPU-heavy; running them in a child process keeps the server's event
loop free.  The server restarts the child if it dies (a killed build is
re-queued by the new child, see ``cas.deltas.requeue_dead``).  The child is started
with ``child_env`` and dies with the server, however the server dies
(``deltagen.children``); ``supervise`` and ``start`` run on the event loop's thread,
which lives as long as the server (the kernel's parent-death signal follows the
thread that started the child, and thread-pool threads come and go).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys

from deltagen.children import child_env

from ..processes import stop_process
from ..repo import Repo

log = logging.getLogger("cas.deltas")


class DeltaWorkerProcess:
    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        env = child_env({**os.environ, "CAS_STORE": str(self.repo.config.store)})
        if self.repo.config.metadata_url:  # also when it came from --config, which the child does not read
            env["CAS_METADATA_URL"] = self.repo.config.metadata_url
        self.proc = subprocess.Popen([sys.executable, "-m", "cas.deltas_worker",  # cas deltas worker, lean
                                      "--store", str(self.repo.config.store)], env=env)

    def supervise(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            log.warning("delta worker exited with %s; restarting", self.proc.returncode)
            self.restarts += 1
            self.start()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
