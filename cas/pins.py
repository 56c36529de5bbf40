"""Per-node rollback: pin client ids (one or a batch) to a release on a channel.

A pin is a row in ``client_pins`` and an entry of the channel document's optional
``pins`` list (``[{release, manifest, clients}]``, cas/channels.py), so it reaches a
client the way every channel change does: the next signed channel document it fetches.
The client (``casformat/trust.choose_release``) runs its pin before the rollout or the
channel's release, and fetches and verifies the pinned manifest like any other: its
digest is the one the channel key signed, and its signatures must meet the root's release
role.  A pin names only a release that is trusted and offerable on the channel (the same
``check_trusted``/``check_offerable`` as ``cas channel set``), so a pin cannot make a client
take unsigned or deprecated content.  Removing a pin signs a document without it: at its
next check the client goes back to what the channel (or its rollout) offers it.

Every pin and unpin is recorded with its actor and reason (``client_pin_events``).
"""
from __future__ import annotations

from typing import Any, Iterable

from casformat.canonical import parse_json
from casformat.times import format_epoch

from . import channels
from .errors import Conflict, Invalid, NotFound
from .metadata import StaleWrite
from .offerable import check_offerable, check_trusted
from .release_lookup import get_release
from .repo import Repo
from .rollouts import check_clients

ATTEMPTS = 8
MAX_REASON = 1000


def _reason(reason: Any) -> str:
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise Invalid(f"reason must be a string of at most {MAX_REASON} characters", code="bad_request")
    return reason


def _change(repo: Repo, product: str, channel: str, pin: tuple[str, ...], unpin: tuple[str, ...],
            version: str | None, manifest: str | None, actor: str, reason: str) -> None:
    """Write the pin rows and the channel's next document (listing them) together, retried on a
    concurrent channel change."""
    for _ in range(ATTEMPTS):
        current = channels.get_channel(repo, product, channel)
        signed = parse_json(current.document)["signed"]
        rows = [r for r in repo.meta.channel_pins(product, channel) if r["client_id"] not in set(pin) | set(unpin)]
        rows += [{"client_id": cid, "release": version, "manifest": manifest} for cid in pin]
        ch = channels.prepare(repo, product, channel, current.release, signed["manifest"], current.sequence + 1,
                              current.min_status, signed["rollout"], pins=rows)
        if len(ch.document) > repo.config.rollout_max_document_bytes:
            raise Invalid(f"the channel document would be {len(ch.document):,} bytes with these pins; at most "
                          f"{repo.config.rollout_max_document_bytes:,} (rollout_max_document_bytes): pin fewer "
                          "clients or remove old pins", code="too_many_clients")
        try:
            repo.meta.write_pins(ch, pin, unpin, version, manifest, actor, reason)
            return
        except StaleWrite:
            continue
    raise Conflict(f"channel {product}/{channel} is changing concurrently; try again", code="concurrent_change")


def pin(repo: Repo, product: str, channel: str, version: str, clients: Any, actor: str,
        reason: str = "") -> dict[str, Any]:
    """Pin ``clients`` (a list of ids) to ``version`` on a channel; re-pinning a client moves it."""
    reason = _reason(reason)
    ids = check_clients(clients, repo.config.rollout_max_clients)
    current = channels.get_channel(repo, product, channel)
    release = get_release(repo, product, version)
    check_trusted(repo, release)
    check_offerable(release, channel, current.min_status)
    _change(repo, product, channel, ids, (), version, release.manifest_digest, actor, reason or f"pin {version}")
    return status(repo, product, channel)


def unpin(repo: Repo, product: str, channel: str, clients: Any, actor: str, reason: str = "",
          every: bool = False) -> dict[str, Any]:
    """Remove the pins of ``clients`` (or, with ``every``, all of the channel's); an id that is
    not pinned is refused (404 ``not_pinned``) and nothing changes."""
    reason = _reason(reason)
    channels.get_channel(repo, product, channel)
    pinned = {r["client_id"] for r in repo.meta.channel_pins(product, channel)}
    if every:
        if clients:
            raise Invalid("give client ids or all, not both", code="bad_request")
        ids = tuple(sorted(pinned))
    else:
        ids = check_clients(clients, repo.config.rollout_max_clients)
        unknown = [cid for cid in ids if cid not in pinned]
        if unknown:
            raise NotFound(f"{len(unknown)} of these client ids are not pinned on {product}/{channel}",
                           detail=unknown[:20], code="not_pinned")
    if ids:
        _change(repo, product, channel, (), ids, None, None, actor, reason or "unpin")
    return status(repo, product, channel)


def status(repo: Repo, product: str, channel: str) -> dict[str, Any]:
    """A channel's pins (by client id) and its latest pin events."""
    ch = channels.get_channel(repo, product, channel)
    rows = repo.meta.channel_pins(product, channel)
    return {"product": product, "channel": channel, "sequence": ch.sequence, "release": ch.release,
            "pins": [{**r, "at": format_epoch(r["at"])} for r in rows],
            "events": repo.meta.pin_events(product, channel)}


def read_ids(values: Iterable[str] | None, files: Iterable[str] | None) -> list[str]:
    """Client ids from ``--client`` values and ``--clients FILE`` files (one a line, # comments)."""
    from .rollouts import read_clients
    ids = list(values or [])
    for name in files or []:
        with open(name, encoding="utf-8") as fh:
            ids += read_clients(fh)
    return ids
