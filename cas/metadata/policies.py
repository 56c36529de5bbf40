"""Version compatibility policies of channels (``cas/channels.py`` signs them into the channel
document) and the deprecated versions a policy lists."""
from __future__ import annotations

import time
from typing import Any

from .backend import MetadataBackend

PRODUCT_WIDE = "*"   # the channel name of a product's policy for channels without their own


class PolicyQueries(MetadataBackend):
    """The ``channel_policies`` table."""

    def channel_policy(self, product: str, channel: str) -> dict[str, Any] | None:
        """The policy that applies to ``product/channel``: its own, else the product's, else None."""
        rows = self._conn().execute(
            "SELECT channel, rule, actor, at FROM channel_policies WHERE product = ? AND channel IN (?, ?)",
            (product, channel, PRODUCT_WIDE)).fetchall()
        by_channel = {r["channel"]: dict(r) for r in rows}
        return by_channel.get(channel) or by_channel.get(PRODUCT_WIDE)

    def set_channel_policy(self, product: str, channel: str, rule: str | None, actor: str) -> None:
        """Set (``rule``) or remove (None) the policy of ``product/channel`` (``*``: product-wide)."""
        with self._tx() as c:
            c.execute("DELETE FROM channel_policies WHERE product = ? AND channel = ?", (product, channel))
            if rule is not None:
                c.execute("INSERT INTO channel_policies(product, channel, rule, actor, at) VALUES (?, ?, ?, ?, ?)",
                          (product, channel, rule, actor, time.time()))

    def deprecated_versions(self, product: str, limit: int) -> list[str]:
        """The ``limit`` most recently published deprecated versions of ``product``, sorted."""
        rows = self._conn().execute(
            "SELECT version FROM releases WHERE product = ? AND status = 'deprecated' ORDER BY seq DESC LIMIT ?",
            (product, limit)).fetchall()
        return sorted(r[0] for r in rows)
