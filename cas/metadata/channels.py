"""Channel documents, the versions channels ever offered, and the channel write counter."""
from __future__ import annotations

from .backend import Connection, MetadataBackend
from .errors import StaleWrite
from .records import Channel


def write_channel(c: Connection, ch: Channel, for_update: str) -> None:
    """Compare-and-set of a channel document inside the caller's transaction.

    The row is locked (``for_update``, the backend's ``FOR_UPDATE``) before its
    sequence is compared, the first document of a channel is an insert that a
    concurrent first document makes fail, and the ``channels`` counter moves in the
    same transaction: sequences never repeat and a cache that reads the counter
    first never keeps an old document.  Raises StaleWrite when the channel is not
    at ``ch.sequence - 1``."""
    row = c.execute("SELECT sequence FROM channels WHERE product = ? AND channel = ?" + for_update,
                    (ch.product, ch.channel)).fetchone()
    current = row[0] if row else 0
    if current != ch.sequence - 1:
        raise StaleWrite(f"channel {ch.product}/{ch.channel} moved to sequence {current}")
    values = (ch.release, ch.sequence, ch.min_status, ch.document, ch.etag, ch.expires, ch.updated)
    if row is None:
        cur = c.execute("INSERT INTO channels(product, channel, release, sequence, min_status, document, etag, "
                        "expires, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (ch.product, ch.channel, *values))
    else:
        cur = c.execute("UPDATE channels SET release = ?, sequence = ?, min_status = ?, document = ?, etag = ?, "
                        "expires = ?, updated = ? WHERE product = ? AND channel = ? AND sequence = ?",
                        (*values, ch.product, ch.channel, current))
    if cur.rowcount != 1:
        raise StaleWrite(f"channel {ch.product}/{ch.channel} moved concurrently")
    c.execute("INSERT INTO offered(product, version, first_offered) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
              (ch.product, ch.release, ch.updated))
    c.execute("UPDATE counters SET value = value + 1 WHERE name = 'channels'")


class ChannelQueries(MetadataBackend):
    """The ``channels`` and ``offered`` tables and the ``channels`` row of ``counters``."""

    def get_channel(self, product: str, channel: str) -> Channel | None:
        """A channel's current document, or None."""
        row = self._conn().execute("SELECT * FROM channels WHERE product = ? AND channel = ?",
                                   (product, channel)).fetchone()
        return None if row is None else Channel(
            row["product"], row["channel"], row["release"], row["sequence"], row["min_status"],
            bytes(row["document"]), row["etag"], row["expires"], row["updated"])

    def list_channels(self, product: str | None = None) -> list[Channel]:
        """Every channel (of a product), by product and name."""
        c = self._conn()
        if product is None:
            rows = c.execute("SELECT product, channel FROM channels ORDER BY product, channel").fetchall()
        else:
            rows = c.execute("SELECT product, channel FROM channels WHERE product = ? ORDER BY channel",
                             (product,)).fetchall()
        return [ch for ch in (self.get_channel(r[0], r[1]) for r in rows) if ch is not None]

    def put_channel(self, ch: Channel) -> None:
        """Write sequence ``ch.sequence`` only if the stored one is ``sequence - 1``; else StaleWrite."""
        with self._tx() as c:
            write_channel(c, ch, self.FOR_UPDATE)

    def channels_counter(self) -> int:
        """How many channel writes were ever committed (any replica)."""
        row = self._conn().execute("SELECT value FROM counters WHERE name = 'channels'").fetchone()
        return int(row[0]) if row else 0

    def channels_pointing_at(self, product: str, version: str) -> list[str]:
        """Names of the channels whose document points at a release."""
        rows = self._conn().execute("SELECT channel FROM channels WHERE product = ? AND release = ?",
                                    (product, version)).fetchall()
        return [r[0] for r in rows]

    def was_offered(self, product: str, version: str) -> bool:
        """Whether any channel (or rollout) ever offered a release to clients."""
        return self._conn().execute("SELECT 1 FROM offered WHERE product = ? AND version = ?",
                                    (product, version)).fetchone() is not None
