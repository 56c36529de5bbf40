"""Clients pinned to a release on a channel (per-node rollback, ``cas/pins.py``) and their audit events."""
from __future__ import annotations

import time
from typing import Any, Iterable

from casformat.times import format_epoch

from .backend import MetadataBackend
from .channels import write_channel
from .records import Channel


class PinQueries(MetadataBackend):
    """The ``client_pins`` and ``client_pin_events`` tables."""

    def channel_pins(self, product: str, channel: str) -> list[dict[str, Any]]:
        """Every pin of a channel, by client id."""
        rows = self._conn().execute(
            "SELECT client_id, release, manifest, actor, reason, at FROM client_pins "
            "WHERE product = ? AND channel = ? ORDER BY client_id", (product, channel)).fetchall()
        return [dict(r) for r in rows]

    def pinned_channels(self, product: str, version: str) -> list[str]:
        """Channels where some client is pinned to a release."""
        rows = self._conn().execute("SELECT DISTINCT channel FROM client_pins WHERE product = ? AND release = ? "
                                    "ORDER BY channel", (product, version)).fetchall()
        return [r[0] for r in rows]

    def pinned_versions(self, product: str) -> set[str]:
        """Releases some client is pinned to (on any channel)."""
        rows = self._conn().execute("SELECT DISTINCT release FROM client_pins WHERE product = ?",
                                    (product,)).fetchall()
        return {r[0] for r in rows}

    def write_pins(self, ch: Channel, pin: Iterable[str], unpin: Iterable[str], release: str | None,
                   manifest: str | None, actor: str, reason: str) -> None:
        """Pin ``pin`` to ``release`` and remove the pins of ``unpin``, with the channel's new
        document ``ch`` (which lists the result) in one transaction; StaleWrite when the
        channel moved meanwhile (nothing written)."""
        now = time.time()
        pin, unpin = sorted(set(pin)), sorted(set(unpin))
        with self._tx() as c:
            write_channel(c, ch, self.FOR_UPDATE)
            if unpin:
                c.executemany("DELETE FROM client_pins WHERE product = ? AND channel = ? AND client_id = ?",
                              [(ch.product, ch.channel, cid) for cid in unpin])
                c.executemany("INSERT INTO client_pin_events(product, channel, client_id, event, release, actor, "
                              "reason, at) VALUES (?, ?, ?, 'unpin', NULL, ?, ?, ?)",
                              [(ch.product, ch.channel, cid, actor, reason, now) for cid in unpin])
            if pin:
                c.executemany("DELETE FROM client_pins WHERE product = ? AND channel = ? AND client_id = ?",
                              [(ch.product, ch.channel, cid) for cid in pin])
                c.executemany("INSERT INTO client_pins(product, channel, client_id, release, manifest, actor, "
                              "reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              [(ch.product, ch.channel, cid, release, manifest, actor, reason, now) for cid in pin])
                c.executemany("INSERT INTO client_pin_events(product, channel, client_id, event, release, actor, "
                              "reason, at) VALUES (?, ?, ?, 'pin', ?, ?, ?, ?)",
                              [(ch.product, ch.channel, cid, release, actor, reason, now) for cid in pin])
                c.execute("INSERT INTO offered(product, version, first_offered) VALUES (?, ?, ?) "
                          "ON CONFLICT DO NOTHING", (ch.product, release, now))

    def pin_events(self, product: str, channel: str, limit: int = 200) -> list[dict[str, Any]]:
        """The latest pin and unpin events of a channel, newest first."""
        rows = self._conn().execute(
            "SELECT client_id, event, release, actor, reason, at FROM client_pin_events "
            "WHERE product = ? AND channel = ? ORDER BY id DESC LIMIT ?", (product, channel, limit)).fetchall()
        return [{**dict(r), "at": format_epoch(r["at"])} for r in rows]
