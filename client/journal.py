"""The update journal, ``.cas/journal.json``: how far an update in progress got.

Phases: ``fetching`` (nothing outside ``.cas/`` written yet), ``staged`` (the new tree
is published under ``versions/{v}`` and its manifest cached), ``swapped`` (``current``
points at it; the health check is next).  A run that finds a journal resumes from its
phase or abandons it (see ``Updater.update``); a finished update removes it.

``cas-client rollback`` keeps a journal too (``kind = "rollback"``, phase ``swapped``,
``from`` the version it leaves): killed during the health check of the version it rolls
back to, the next ``rollback`` or ``update`` checks that version again and, when it
fails, puts ``current`` back on the version the rollback started from.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from .installroot import InstallRoot

NAME = "journal.json"


@dataclass(frozen=True)
class Journal:
    """One update in progress, as written to ``journal.json``."""

    target: str | None              # the version being installed
    from_version: str | None        # current when the update started ("from" on disk)
    manifest: str | None            # digest of the target's signed manifest
    prior_previous: str | None      # ``previous`` before the update, restored after a rollback
    started: float                  # when the update (or the phase ``swapped``) started, epoch seconds
    phase: str | None = None        # fetching | staged | swapped
    kind: str = "update"            # update | rollback

    @classmethod
    def begin(cls, target: str, from_version: str | None, manifest: str, prior_previous: str | None) -> Journal:
        """The journal of an update starting now (no phase written yet)."""
        return cls(target, from_version, manifest, prior_previous, time.time())

    @classmethod
    def rollback(cls, target: str, from_version: str | None, prior_previous: str | None) -> Journal:
        """The journal of a manual rollback to ``target``, about to be swapped and checked."""
        return cls(target, from_version, None, prior_previous, time.time(), "swapped", "rollback")

    def at(self, phase: str) -> Journal:
        """This journal in ``phase``; entering ``swapped`` restarts the clock."""
        return replace(self, phase=phase, started=time.time() if phase == "swapped" else self.started)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "from": self.from_version, "manifest": self.manifest,
                "prior_previous": self.prior_previous, "started": self.started, "phase": self.phase,
                "kind": self.kind}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Journal:
        return cls(data.get("target"), data.get("from"), data.get("manifest"), data.get("prior_previous"),
                   float(data.get("started") or 0.0), data.get("phase"), str(data.get("kind") or "update"))


def read_journal(layout: InstallRoot) -> Journal | None:
    """The journal of an unfinished update, or None."""
    data = layout.read_json(NAME)
    return None if data is None else Journal.from_dict(data)


def write_journal(layout: InstallRoot, journal: Journal) -> None:
    """Record ``journal`` atomically."""
    layout.write_json(NAME, journal.to_dict())


def clear_journal(layout: InstallRoot) -> None:
    """Forget the update in progress (finished or abandoned)."""
    layout.remove_json(NAME)
