"""Metadata: releases, file entries, lifecycle, channels, uploads, roots.

``Metadata`` is the interface the rest of the server calls, and holds every
query once, written in the SQL that SQLite and PostgreSQL share (``?``
parameters, ``ON CONFLICT``, ``RETURNING``).  A backend supplies connections,
transactions, the migration bookkeeping and two lock clauses:

- ``SqliteMetadata`` (here) is the embedded default: WAL, synchronous=FULL,
  one connection per thread, every write transaction ``BEGIN IMMEDIATE`` (so
  writers are serialised and the lock clauses are empty), schema version in
  ``PRAGMA user_version``.
- ``PostgresMetadata`` (``cas/metadata_postgres.py``) runs the same queries at
  READ COMMITTED; where replicas race it relies on row locks (``FOR UPDATE``,
  ``FOR UPDATE SKIP LOCKED`` for queues), conditional updates and unique
  constraints, never on read-then-write.  Its DDL is derived from ``MIGRATIONS``.

``open_metadata`` picks the backend from ``metadata_url``.
"""
from __future__ import annotations

import abc
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

STATUSES = ("draft", "testing", "released", "deprecated")
STATUS_RANK = {s: i for i, s in enumerate(STATUSES)}

# Each migration moves the schema from version i to i+1.  Never edit one that
# has shipped: append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE roots (
        version INTEGER PRIMARY KEY,
        document BLOB NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE products (
        name TEXT PRIMARY KEY,
        created REAL NOT NULL
    );
    CREATE TABLE releases (
        product TEXT NOT NULL REFERENCES products(name),
        version TEXT NOT NULL,
        manifest_digest TEXT NOT NULL,
        manifest BLOB NOT NULL,
        status TEXT NOT NULL,
        file_count INTEGER NOT NULL,
        logical_bytes INTEGER NOT NULL,
        created REAL NOT NULL,
        status_changed REAL NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (product, version)
    );
    CREATE TABLE release_files (
        product TEXT NOT NULL,
        version TEXT NOT NULL,
        path TEXT NOT NULL,
        type TEXT NOT NULL,
        blake3 TEXT,
        size INTEGER,
        mode INTEGER,
        target TEXT,
        PRIMARY KEY (product, version, path),
        FOREIGN KEY (product, version) REFERENCES releases(product, version) ON DELETE CASCADE
    );
    CREATE INDEX release_files_blake3 ON release_files(blake3);
    CREATE TABLE release_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        product TEXT NOT NULL,
        version TEXT NOT NULL,
        from_status TEXT,
        to_status TEXT NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX release_events_release ON release_events(product, version);
    CREATE TABLE channels (
        product TEXT NOT NULL REFERENCES products(name),
        channel TEXT NOT NULL,
        release TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        min_status TEXT NOT NULL,
        document BLOB NOT NULL,
        etag TEXT NOT NULL,
        expires REAL NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (product, channel)
    );
    CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    """,
    # 2: ahead-of-time deltas.  A job builds the recipes of one (base, target)
    # object pair; base '' is the compress-only job of a target.  Recipes are
    # keyed by the pair so identical pairs across releases are built once.
    """
    CREATE TABLE delta_jobs (
        base TEXT NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        owner TEXT,
        lease_until REAL,
        queued REAL NOT NULL,
        started REAL,
        finished REAL,
        PRIMARY KEY (base, target)
    );
    CREATE INDEX delta_jobs_state ON delta_jobs(state, queued);
    CREATE TABLE recipes (
        base TEXT NOT NULL,
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        object TEXT NOT NULL,
        size INTEGER NOT NULL,
        build_seconds REAL NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (base, target, kind, algorithm)
    );
    CREATE INDEX recipes_target ON recipes(target);
    CREATE TABLE delta_plans (
        product TEXT NOT NULL,
        base_version TEXT NOT NULL,
        target_version TEXT NOT NULL,
        planned REAL NOT NULL,
        PRIMARY KEY (product, base_version, target_version)
    );
    """,
    # 3: client reports (outcomes of updates).
    """
    CREATE TABLE reports (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        product TEXT NOT NULL,
        client_id TEXT NOT NULL,
        from_version TEXT,
        to_version TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX reports_release ON reports(product, to_version, at);
    """,
    # 4: staged rollouts (cas/rollouts.py), versions offered to clients, webhook outbox.
    # At most one running or halted rollout per channel (the partial unique index);
    # ``revision`` is the compare-and-set counter of a rollout's state.
    """
    CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        product TEXT NOT NULL,
        channel TEXT NOT NULL,
        strategy TEXT NOT NULL,
        release TEXT NOT NULL,
        manifest TEXT NOT NULL,
        previous TEXT NOT NULL,
        previous_manifest TEXT NOT NULL,
        salt TEXT NOT NULL,
        stages TEXT NOT NULL,
        stage INTEGER NOT NULL,
        stage_started REAL NOT NULL,
        stage_seconds INTEGER NOT NULL,
        max_failure_bp INTEGER NOT NULL,
        min_reports INTEGER NOT NULL,
        auto_abort INTEGER NOT NULL,
        clients TEXT,
        batch_size INTEGER,
        max_failures INTEGER,
        max_concurrent INTEGER,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        revision INTEGER NOT NULL,
        started REAL NOT NULL,
        updated REAL NOT NULL,
        actor TEXT NOT NULL
    );
    CREATE UNIQUE INDEX rollouts_active ON rollouts(product, channel) WHERE state IN ('running', 'halted');
    CREATE INDEX rollouts_channel ON rollouts(product, channel, id);
    CREATE TABLE rollout_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        rollout INTEGER NOT NULL REFERENCES rollouts(id),
        event TEXT NOT NULL,
        percent INTEGER NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX rollout_events_rollout ON rollout_events(rollout, id);
    CREATE TABLE offered (
        product TEXT NOT NULL,
        version TEXT NOT NULL,
        first_offered REAL NOT NULL,
        PRIMARY KEY (product, version)
    );
    INSERT OR IGNORE INTO offered SELECT product, release, updated FROM channels;
    CREATE TABLE webhook_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        url TEXT NOT NULL,
        event TEXT NOT NULL,
        body BLOB NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        created REAL NOT NULL,
        delivered REAL
    );
    CREATE INDEX webhook_outbox_due ON webhook_outbox(state, next_attempt);
    """,
    # 5: releases marked critical are applied outside clients' maintenance windows.
    """
    ALTER TABLE releases ADD COLUMN critical INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: change counters bumped in the transaction of every write they count.  'channels'
    # lets a server's channel cache see that any replica moved a channel (cas/http/fastpath.py).
    """
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT INTO counters(name, value) VALUES ('channels', 0);
    """,
    # 7: garbage collection (cas/gc.py): unreferenced objects are tombstoned on one run
    # and deleted on a later one; a publish that needs a tombstoned object revives it.
    """
    CREATE TABLE gc_tombstones (
        digest TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        marked REAL NOT NULL
    );
    CREATE TABLE gc_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started REAL NOT NULL,
        finished REAL NOT NULL,
        dry_run INTEGER NOT NULL,
        result TEXT NOT NULL
    );
    """,
    # 8: bundles (deltagen/bundles.py): one zstd stream rebuilding several targets of a
    # release pair.  A 'bundle' job is keyed by the pair's (base, target) manifest digests.
    """
    ALTER TABLE delta_jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'files';
    CREATE TABLE bundles (
        base_manifest TEXT NOT NULL,
        target_manifest TEXT NOT NULL,
        object TEXT NOT NULL,
        size INTEGER NOT NULL,
        bases TEXT NOT NULL,
        members TEXT NOT NULL,
        build_seconds REAL NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (base_manifest, target_manifest, object)
    );
    """,
]


@dataclass(frozen=True)
class Release:
    product: str
    version: str
    manifest_digest: str
    manifest: bytes
    status: str
    file_count: int
    logical_bytes: int
    created: float
    status_changed: float
    critical: bool = False

    def summary(self) -> dict[str, Any]:
        return {"version": self.version, "status": self.status, "manifest": self.manifest_digest,
                "files": self.file_count, "bytes": self.logical_bytes, "critical": self.critical,
                "created": _iso(self.created), "status_changed": _iso(self.status_changed)}


@dataclass(frozen=True)
class Channel:
    product: str
    channel: str
    release: str
    sequence: int
    min_status: str
    document: bytes
    etag: str
    expires: float
    updated: float


class StaleWrite(Exception):
    """A compare-and-set lost against a concurrent writer."""


class ObjectsBeingDeleted(Exception):
    """A release names objects garbage collection has deleted (not uploaded again since)."""

    def __init__(self, digests: list[str]) -> None:
        super().__init__(f"{len(digests)} objects were garbage-collected")
        self.digests = digests


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class Connection(Protocol):
    """What the queries need of a connection (``sqlite3.Connection`` as it is)."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...


class Metadata(abc.ABC):
    """Every query, once.  Rows read by name or index (``row["x"]``, ``row[0]``, ``dict(row)``)."""

    #: appended to a SELECT whose rows the transaction goes on to change
    FOR_UPDATE = ""
    #: the same for queues: rows another transaction holds are passed over
    SKIP_LOCKED = ""
    #: what the driver raises on a unique or primary-key violation
    INTEGRITY_ERRORS: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)

    # -- what a backend supplies
    @abc.abstractmethod
    def _conn(self) -> Connection:
        """This thread's connection."""

    @abc.abstractmethod
    def _tx(self) -> Any:
        """A context manager: a write transaction on this thread's connection."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close this thread's connection."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The migration the store is at."""

    @abc.abstractmethod
    def migrate(self) -> None:
        """Apply the migrations the store lacks; refuse a store newer than this program."""

    @abc.abstractmethod
    def data_version(self) -> int:
        """A number that changes whenever a channel may have changed (cheap cache check)."""

    # -- roots
    def put_root(self, version: int, document: bytes) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO roots(version, document, created) VALUES (?, ?, ?)",
                      (version, document, time.time()))

    def get_root(self, version: int | None = None) -> tuple[int, bytes] | None:
        c = self._conn()
        if version is None:
            row = c.execute("SELECT version, document FROM roots ORDER BY version DESC LIMIT 1").fetchone()
        else:
            row = c.execute("SELECT version, document FROM roots WHERE version = ?", (version,)).fetchone()
        return (row[0], bytes(row[1])) if row else None

    # -- releases
    def list_products(self) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT p.name, p.created, COUNT(r.version) AS n FROM products p "
            "LEFT JOIN releases r ON r.product = p.name GROUP BY p.name, p.created ORDER BY p.name").fetchall()
        return [{"name": r["name"], "releases": r["n"], "created": _iso(r["created"])} for r in rows]

    def product_exists(self, product: str) -> bool:
        return self._conn().execute("SELECT 1 FROM products WHERE name = ?", (product,)).fetchone() is not None

    @staticmethod
    def _release(row: Any) -> Release | None:
        if row is None:
            return None
        return Release(row["product"], row["version"], row["manifest_digest"], bytes(row["manifest"]),
                       row["status"], row["file_count"], row["logical_bytes"], row["created"],
                       row["status_changed"], bool(row["critical"]))

    def get_release(self, product: str, version: str) -> Release | None:
        row = self._conn().execute("SELECT * FROM releases WHERE product = ? AND version = ?",
                                   (product, version)).fetchone()
        return self._release(row)

    def list_releases(self, product: str) -> list[Release]:
        rows = self._conn().execute("SELECT * FROM releases WHERE product = ? ORDER BY seq",
                                    (product,)).fetchall()
        return [r for r in map(self._release, rows) if r is not None]

    def insert_release(self, product: str, version: str, manifest_digest: str, manifest: bytes,
                       files: Iterable[dict[str, Any]], actor: str, status: str = "draft") -> Release | None:
        """Record a release; returns the existing one instead when the version exists.

        Publishes of one product are serialised on its ``products`` row, so two
        replicas publishing the same version record it once (the second gets the
        first's row back) and ``seq`` never repeats."""
        files = list(files)
        now = time.time()
        with self._tx() as c:
            c.execute("INSERT INTO products(name, created) VALUES (?, ?) ON CONFLICT DO NOTHING", (product, now))
            c.execute("SELECT name FROM products WHERE name = ?" + self.FOR_UPDATE, (product,)).fetchone()
            row = c.execute("SELECT * FROM releases WHERE product = ? AND version = ?",
                            (product, version)).fetchone()
            if row is not None:
                return self._release(row)
            regular = [f for f in files if f["type"] == "file"]
            gone = self._revive_in(c, [f["blake3"] for f in regular])
            if gone:
                raise ObjectsBeingDeleted(sorted(gone))
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM releases WHERE product = ?",
                            (product,)).fetchone()[0]
            c.execute("INSERT INTO releases(product, version, manifest_digest, manifest, status, file_count, "
                      "logical_bytes, created, status_changed, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (product, version, manifest_digest, manifest, status, len(files),
                       sum(f["size"] for f in regular), now, now, seq))
            c.executemany(
                "INSERT INTO release_files(product, version, path, type, blake3, size, mode, target) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(product, version, f["path"], f["type"], f.get("blake3"), f.get("size"), f.get("mode"),
                  f.get("target")) for f in files])
            c.execute("INSERT INTO release_events(product, version, from_status, to_status, actor, reason, at)"
                      " VALUES (?, ?, NULL, ?, ?, 'published', ?)", (product, version, status, actor, now))
        return None

    def set_status(self, product: str, version: str, expected: str, new: str, actor: str, reason: str) -> None:
        now = time.time()
        with self._tx() as c:
            cur = c.execute("UPDATE releases SET status = ?, status_changed = ? "
                            "WHERE product = ? AND version = ? AND status = ?",
                            (new, now, product, version, expected))
            if cur.rowcount != 1:
                raise StaleWrite(f"{product} {version} is no longer {expected}")
            c.execute("INSERT INTO release_events(product, version, from_status, to_status, actor, reason, at)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?)", (product, version, expected, new, actor, reason, now))

    def set_critical(self, product: str, version: str, critical: bool, actor: str, reason: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE releases SET critical = ? WHERE product = ? AND version = ?",
                      (int(critical), product, version))
            row = c.execute("SELECT status FROM releases WHERE product = ? AND version = ?",
                            (product, version)).fetchone()
            c.execute("INSERT INTO release_events(product, version, from_status, to_status, actor, reason, at)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?)", (product, version, row[0], row[0], actor,
                                                        f"{'marked' if critical else 'unmarked'} critical: {reason}",
                                                        time.time()))

    def critical_versions(self, product: str, versions: Iterable[str]) -> list[str]:
        c = self._conn()
        return sorted(v for v in set(versions) if c.execute(
            "SELECT 1 FROM releases WHERE product = ? AND version = ? AND critical = 1", (product, v)).fetchone())

    def release_history(self, product: str, version: str) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT from_status, to_status, actor, reason, at FROM release_events "
            "WHERE product = ? AND version = ? ORDER BY id", (product, version)).fetchall()
        return [{"from": r["from_status"], "to": r["to_status"], "actor": r["actor"],
                 "reason": r["reason"], "at": _iso(r["at"])} for r in rows]

    def referenced_objects(self) -> list[tuple[str, int]]:
        """Every distinct (blake3, size) any release references."""
        rows = self._conn().execute(
            "SELECT DISTINCT blake3, size FROM release_files WHERE type = 'file'").fetchall()
        return [(r[0], r[1]) for r in rows]

    def logical_bytes(self) -> int:
        row = self._conn().execute("SELECT COALESCE(SUM(logical_bytes), 0) FROM releases").fetchone()
        return int(row[0])

    # -- channels
    def get_channel(self, product: str, channel: str) -> Channel | None:
        row = self._conn().execute("SELECT * FROM channels WHERE product = ? AND channel = ?",
                                   (product, channel)).fetchone()
        return None if row is None else Channel(
            row["product"], row["channel"], row["release"], row["sequence"], row["min_status"],
            bytes(row["document"]), row["etag"], row["expires"], row["updated"])

    def list_channels(self, product: str | None = None) -> list[Channel]:
        c = self._conn()
        if product is None:
            rows = c.execute("SELECT product, channel FROM channels ORDER BY product, channel").fetchall()
        else:
            rows = c.execute("SELECT product, channel FROM channels WHERE product = ? ORDER BY channel",
                             (product,)).fetchall()
        return [ch for ch in (self.get_channel(r[0], r[1]) for r in rows) if ch is not None]

    def put_channel(self, ch: Channel) -> None:
        """Write sequence ``ch.sequence`` only if the stored one is ``sequence - 1``."""
        with self._tx() as c:
            self._write_channel(c, ch)

    def _write_channel(self, c: Connection, ch: Channel) -> None:
        """Compare-and-set of a channel document inside the caller's transaction.

        The row is locked before its sequence is compared, the first document of a
        channel is an insert that a concurrent first document makes fail, and the
        ``channels`` counter moves in the same transaction: sequences never repeat
        and a cache that reads the counter first never keeps an old document."""
        row = c.execute("SELECT sequence FROM channels WHERE product = ? AND channel = ?" + self.FOR_UPDATE,
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

    def channels_counter(self) -> int:
        """How many channel writes were ever committed (any replica)."""
        row = self._conn().execute("SELECT value FROM counters WHERE name = 'channels'").fetchone()
        return int(row[0]) if row else 0

    def channels_pointing_at(self, product: str, version: str) -> list[str]:
        rows = self._conn().execute("SELECT channel FROM channels WHERE product = ? AND release = ?",
                                    (product, version)).fetchall()
        return [r[0] for r in rows]

    # -- uploads
    def create_upload(self, upload_id: str) -> None:
        now = time.time()
        with self._tx() as c:
            c.execute("INSERT INTO uploads(id, created, updated) VALUES (?, ?, ?)", (upload_id, now, now))

    def upload_exists(self, upload_id: str) -> bool:
        return self._conn().execute("SELECT 1 FROM uploads WHERE id = ?", (upload_id,)).fetchone() is not None

    def touch_upload(self, upload_id: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE uploads SET updated = ? WHERE id = ?", (time.time(), upload_id))

    def delete_upload(self, upload_id: str) -> bool:
        with self._tx() as c:
            return c.execute("DELETE FROM uploads WHERE id = ?", (upload_id,)).rowcount == 1

    def stale_uploads(self, older_than: float) -> list[str]:
        rows = self._conn().execute("SELECT id FROM uploads WHERE updated < ?",
                                    (time.time() - older_than,)).fetchall()
        return [r[0] for r in rows]

    def all_uploads(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT id FROM uploads").fetchall()]

    # -- deltas
    def enqueue_jobs(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Queue (base, target) builds that were never queued; returns how many are new."""
        now = time.time()
        rows = [(b, t, now) for b, t in sorted(set(pairs))]  # one order everywhere: no deadlocks
        if not rows:
            return 0
        with self._tx() as c:
            cur = c.executemany("INSERT INTO delta_jobs(base, target, state, queued) "
                                "VALUES (?, ?, 'queued', ?) ON CONFLICT DO NOTHING", rows)
            return max(cur.rowcount, 0)

    def claim_job(self, owner: str, lease_seconds: float, max_attempts: int) -> tuple[str, str] | None:
        """Take the oldest queued job (or one whose lease expired) for ``owner``.

        Concurrent claimers never take the same job: SQLite serialises them, PostgreSQL
        locks the row and lets the others skip it."""
        now = time.time()
        with self._tx() as c:
            row = c.execute(
                "SELECT base, target FROM delta_jobs WHERE (state = 'queued' OR "
                "(state = 'running' AND lease_until < ?)) AND attempts < ? ORDER BY queued LIMIT 1"
                + self.SKIP_LOCKED, (now, max_attempts)).fetchone()
            if row is None:
                return None
            c.execute("UPDATE delta_jobs SET state = 'running', owner = ?, lease_until = ?, started = ?, "
                      "attempts = attempts + 1 WHERE base = ? AND target = ?",
                      (owner, now + lease_seconds, now, row[0], row[1]))
            return row[0], row[1]

    def finish_job(self, base: str, target: str, owner: str, recipes: list[dict[str, Any]],
                   error: str | None = None) -> None:
        """Record a job's recipes and mark it done (or failed) in one transaction."""
        now = time.time()
        with self._tx() as c:
            for r in sorted(recipes, key=lambda r: (r["base"], r["kind"], r["algorithm"])):
                c.execute("INSERT INTO recipes(base, target, kind, algorithm, object, size, build_seconds, created) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (base, target, kind, algorithm) DO UPDATE "
                          "SET object = excluded.object, size = excluded.size, "
                          "build_seconds = excluded.build_seconds, created = excluded.created",
                          (r["base"], target, r["kind"], r["algorithm"], r["object"], r["size"],
                           r.get("build_seconds", 0.0), now))
            c.execute("UPDATE delta_jobs SET state = ?, error = ?, finished = ?, lease_until = NULL "
                      "WHERE base = ? AND target = ? AND owner = ?",
                      ("failed" if error else "done", error, now, base, target, owner))

    def enqueue_bundle_job(self, base_manifest: str, target_manifest: str) -> int:
        with self._tx() as c:
            cur = c.execute("INSERT INTO delta_jobs(base, target, state, queued, kind) "
                            "VALUES (?, ?, 'queued', ?, 'bundle') ON CONFLICT DO NOTHING",
                            (base_manifest, target_manifest, time.time()))
            return max(cur.rowcount, 0)

    def job_kind(self, base: str, target: str) -> str:
        row = self._conn().execute("SELECT kind FROM delta_jobs WHERE base = ? AND target = ?",
                                   (base, target)).fetchone()
        return row[0] if row else "files"

    def defer_job(self, base: str, target: str, owner: str) -> None:
        """Put a claimed job back at the end of the queue without counting the attempt."""
        with self._tx() as c:
            c.execute("UPDATE delta_jobs SET state = 'queued', owner = NULL, lease_until = NULL, queued = ?, "
                      "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
                      "WHERE base = ? AND target = ? AND owner = ?", (time.time(), base, target, owner))

    def finish_bundle_job(self, base_manifest: str, target_manifest: str, owner: str,
                          bundles: list[dict[str, Any]], error: str | None = None) -> None:
        now = time.time()
        with self._tx() as c:
            for b in sorted(bundles, key=lambda b: b["object"]):
                c.execute("INSERT INTO bundles(base_manifest, target_manifest, object, size, bases, members, "
                          "build_seconds, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                          (base_manifest, target_manifest, b["object"], b["size"], json.dumps(b["bases"]),
                           json.dumps(b["members"]), b.get("build_seconds", 0.0), now))
            c.execute("UPDATE delta_jobs SET state = ?, error = ?, finished = ?, lease_until = NULL "
                      "WHERE base = ? AND target = ? AND owner = ?",
                      ("failed" if error else "done", error, now, base_manifest, target_manifest, owner))

    def bundles_for(self, base_manifest: str, target_manifest: str) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT object, size, bases, members FROM bundles WHERE base_manifest = ? AND target_manifest = ? "
            "ORDER BY object", (base_manifest, target_manifest)).fetchall()
        return [{"object": r[0], "size": r[1], "bases": json.loads(r[2]), "members": json.loads(r[3])}
                for r in rows]

    def release_jobs(self, owner: str) -> None:
        """Put an owner's running jobs back in the queue (clean shutdown)."""
        with self._tx() as c:
            c.execute("UPDATE delta_jobs SET state = 'queued', owner = NULL, lease_until = NULL, "
                      "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
                      "WHERE state = 'running' AND owner = ?", (owner,))

    def job_states(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        c = self._conn()
        out: dict[tuple[str, str], str] = {}
        for b, t in pairs:
            row = c.execute("SELECT state FROM delta_jobs WHERE base = ? AND target = ?", (b, t)).fetchone()
            if row:
                out[(b, t)] = row[0]
        return out

    def jobs_summary(self, limit: int = 50) -> dict[str, Any]:
        c = self._conn()
        counts = {r[0]: r[1] for r in c.execute("SELECT state, COUNT(*) FROM delta_jobs GROUP BY state")}
        def rows(state: str, order: str) -> list[dict[str, Any]]:
            return [dict(r) for r in c.execute(
                "SELECT base, target, state, attempts, error, owner, queued, started, finished "
                f"FROM delta_jobs WHERE state = ? ORDER BY {order} LIMIT ?", (state, limit))]
        return {"counts": {s: counts.get(s, 0) for s in ("queued", "running", "done", "failed")},
                "running": rows("running", "started"), "failed": rows("failed", "finished DESC"),
                "queued": rows("queued", "queued")}

    def recipes_for(self, targets: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        c = self._conn()
        out: dict[str, list[dict[str, Any]]] = {}
        for t in targets:
            out[t] = [dict(r) for r in c.execute(
                "SELECT base, target, kind, algorithm, object, size FROM recipes WHERE target = ?", (t,))]
        return out

    def record_plan(self, product: str, base_version: str, target_version: str) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO delta_plans(product, base_version, target_version, planned) "
                      "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                      (product, base_version, target_version, time.time()))

    def planned(self, product: str, base_version: str, target_version: str) -> bool:
        return self._conn().execute(
            "SELECT 1 FROM delta_plans WHERE product = ? AND base_version = ? AND target_version = ?",
            (product, base_version, target_version)).fetchone() is not None

    def release_by_manifest(self, manifest_digest: str) -> Release | None:
        return self._release(self._conn().execute("SELECT * FROM releases WHERE manifest_digest = ? LIMIT 1",
                                                  (manifest_digest,)).fetchone())

    def release_files(self, product: str, version: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn().execute(
            "SELECT path, type, blake3, size, mode, target FROM release_files WHERE product = ? AND version = ?",
            (product, version))]

    # -- deletion and garbage collection
    def delete_release(self, product: str, version: str, expected_status: tuple[str, ...], actor: str,
                       reason: str) -> None:
        """Remove a release and its file entries (its audit events stay)."""
        with self._tx() as c:
            row = c.execute(f"SELECT status FROM releases WHERE product = ? AND version = ?{self.FOR_UPDATE}",
                            (product, version)).fetchone()
            if row is None or row[0] not in expected_status:
                raise StaleWrite(f"{product} {version} is no longer one of {expected_status}")
            c.execute("DELETE FROM release_files WHERE product = ? AND version = ?", (product, version))
            c.execute("DELETE FROM delta_plans WHERE product = ? AND (base_version = ? OR target_version = ?)",
                      (product, version, version))
            c.execute("DELETE FROM releases WHERE product = ? AND version = ?", (product, version))
            c.execute("INSERT INTO release_events(product, version, from_status, to_status, actor, reason, at)"
                      " VALUES (?, ?, ?, 'deleted', ?, ?, ?)", (product, version, row[0], actor, reason, time.time()))

    def prune_recipes(self) -> int:
        """Forget recipes (and their jobs) for files no release holds any more."""
        live = "SELECT blake3 FROM release_files WHERE type = 'file'"
        with self._tx() as c:
            gone = c.execute(f"DELETE FROM recipes WHERE target NOT IN ({live}) "
                             f"OR (base <> '' AND base NOT IN ({live}))").rowcount
            c.execute(f"DELETE FROM delta_jobs WHERE kind = 'files' AND (target NOT IN ({live}) "
                      f"OR (base <> '' AND base NOT IN ({live})))")
            releases = "SELECT manifest_digest FROM releases"
            gone += c.execute(f"DELETE FROM bundles WHERE base_manifest NOT IN ({releases}) "
                              f"OR target_manifest NOT IN ({releases})").rowcount
            c.execute(f"DELETE FROM delta_jobs WHERE kind = 'bundle' AND (base NOT IN ({releases}) "
                      f"OR target NOT IN ({releases}))")
        return int(gone)

    def live_objects(self) -> set[str]:
        """Every object something still needs: release files and recipe objects."""
        c = self._conn()
        live = {r[0] for r in c.execute("SELECT DISTINCT blake3 FROM release_files WHERE type = 'file'")}
        live.update(r[0] for r in c.execute("SELECT DISTINCT object FROM recipes"))
        live.update(r[0] for r in c.execute("SELECT DISTINCT object FROM bundles"))
        return live

    def tombstones(self) -> dict[str, tuple[str, float]]:
        return {r[0]: (r[1], r[2]) for r in self._conn().execute("SELECT digest, state, marked FROM gc_tombstones")}

    def mark_tombstones(self, digests: Iterable[str], now: float) -> int:
        rows = [(d, now) for d in digests]
        with self._tx() as c:
            before = self._count(c, "gc_tombstones")
            c.executemany("INSERT INTO gc_tombstones(digest, state, marked) VALUES (?, 'marked', ?) "
                          "ON CONFLICT DO NOTHING", rows)
            return self._count(c, "gc_tombstones") - before

    @staticmethod
    def _count(c: Connection, table: str) -> int:
        return int(c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    @staticmethod
    def _revive_in(c: Connection, digests: Iterable[str]) -> set[str]:
        """Inside a write transaction: drop the 'marked' tombstones of ``digests`` (the
        DELETE takes their row locks, so it waits for a sweeper holding one) and return
        those GC has deleted (their files are gone until uploaded again)."""
        wanted = sorted(set(digests))
        deleted: set[str] = set()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            marks = ",".join("?" * len(chunk))
            c.execute(f"DELETE FROM gc_tombstones WHERE state = 'marked' AND digest IN ({marks})", chunk)
            deleted.update(r[0] for r in c.execute(
                f"SELECT digest FROM gc_tombstones WHERE state = 'deleted' AND digest IN ({marks})", chunk))
        return deleted

    def revive(self, digests: Iterable[str]) -> set[str]:
        """Objects are being relied on again (a missing-objects query found them): drop
        their 'marked' tombstones.  Returns the ones GC deleted: they are missing."""
        with self._tx() as c:
            return self._revive_in(c, digests)

    def reingested(self, digests: Iterable[str]) -> None:
        """Objects were (re)written to the store: no tombstone of any state applies now."""
        wanted = sorted(set(digests))
        with self._tx() as c:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i:i + 500]
                c.execute(f"DELETE FROM gc_tombstones WHERE digest IN ({','.join('?' * len(chunk))})", chunk)

    def sweep_one(self, digest: str, marked_before: float, delete: Callable[[], bool]) -> bool:
        """In one transaction: if ``digest``'s tombstone is old enough and nothing
        references the object, call ``delete`` and leave a 'deleted' tombstone.

        A publish recording a release that names the object serialises with this
        transaction on the tombstone row: it either comes first (the object is then
        referenced and kept) or sees 'deleted' and is refused."""
        with self._tx() as c:
            row = c.execute("SELECT state, marked FROM gc_tombstones WHERE digest = ?" + self.FOR_UPDATE,
                            (digest,)).fetchone()
            if row is None or row[0] != "marked" or row[1] >= marked_before:
                return False
            if (c.execute("SELECT 1 FROM release_files WHERE blake3 = ? LIMIT 1", (digest,)).fetchone()
                    or c.execute("SELECT 1 FROM recipes WHERE object = ? LIMIT 1", (digest,)).fetchone()
                    or c.execute("SELECT 1 FROM bundles WHERE object = ? LIMIT 1", (digest,)).fetchone()):
                c.execute("DELETE FROM gc_tombstones WHERE digest = ?", (digest,))
                return False
            deleted = delete()
            c.execute("UPDATE gc_tombstones SET state = 'deleted', marked = ? WHERE digest = ?",
                      (time.time(), digest))
            return deleted

    def forget_deleted(self, before: float) -> int:
        """'deleted' tombstones older than ``before`` (no publish raced them) can go."""
        with self._tx() as c:
            return int(c.execute("DELETE FROM gc_tombstones WHERE state = 'deleted' AND marked < ?",
                                 (before,)).rowcount)

    def record_gc_run(self, started: float, finished: float, dry_run: bool, result: str) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO gc_runs(started, finished, dry_run, result) VALUES (?, ?, ?, ?)",
                      (started, finished, int(dry_run), result))

    def last_gc_run(self) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT started, finished, dry_run, result FROM gc_runs "
                                   "ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            return None
        return {"started": _iso(row[0]), "finished": _iso(row[1]), "dry_run": bool(row[2]), "result": row[3]}

    # -- reports
    def add_report(self, product: str, client_id: str, from_version: str | None, to_version: str,
                   outcome: str, detail: str, at: float | None = None) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO reports(product, client_id, from_version, to_version, outcome, detail, at) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (product, client_id, from_version, to_version, outcome, detail,
                       time.time() if at is None else at))

    def reports(self, product: str, to_version: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql = "SELECT client_id, from_version, to_version, outcome, detail, at FROM reports WHERE product = ?"
        params: list[Any] = [product]
        if to_version is not None:
            sql += " AND to_version = ?"
            params.append(to_version)
        rows = self._conn().execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [{**dict(r), "at": _iso(r["at"])} for r in rows]

    # -- rollouts (cas/rollouts.py decides; these only read and compare-and-set)
    def _rollout_write(self, c: Connection, rollout_id: int, channel: Channel | None,
                       event: tuple[str, int, str, str, float] | None,
                       outbox: Iterable[tuple[str, str, bytes]]) -> None:
        if channel is not None:
            self._write_channel(c, channel)
        if event is not None:
            kind, percent, actor, reason, at = event
            c.execute("INSERT INTO rollout_events(rollout, event, percent, actor, reason, at) "
                      "VALUES (?, ?, ?, ?, ?, ?)", (rollout_id, kind, percent, actor, reason, at))
        self._outbox(c, outbox, event[4] if event else time.time())

    def insert_rollout(self, row: dict[str, Any], channel: Channel | None,
                       event: tuple[str, int, str, str, float],
                       outbox: Iterable[tuple[str, str, bytes]] = ()) -> int:
        """Record a new rollout and its first channel document in one transaction.

        Raises StaleWrite when the channel moved or already has an active rollout."""
        names = sorted(row)
        with self._tx() as c:
            try:
                cur = c.execute(f"INSERT INTO rollouts({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
                                "RETURNING id", [row[n] for n in names])
                rollout_id = int(cur.fetchone()[0])
            except self.INTEGRITY_ERRORS:
                raise StaleWrite(f"channel {row['product']}/{row['channel']} already has a rollout") from None
            c.execute("INSERT INTO offered(product, version, first_offered) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                      (row["product"], row["release"], row["started"]))
            self._rollout_write(c, rollout_id, channel, event, outbox)
        return rollout_id

    def update_rollout(self, rollout_id: int, revision: int, changes: dict[str, Any], channel: Channel | None,
                       event: tuple[str, int, str, str, float] | None,
                       outbox: Iterable[tuple[str, str, bytes]] = ()) -> None:
        """Apply ``changes`` only if the rollout is still at ``revision`` (and the channel
        at ``channel.sequence - 1``), together with the new channel document; else StaleWrite."""
        names = sorted(changes)
        with self._tx() as c:
            cur = c.execute(f"UPDATE rollouts SET {''.join(f'{n} = ?, ' for n in names)}revision = revision + 1 "
                            "WHERE id = ? AND revision = ?", [*(changes[n] for n in names), rollout_id, revision])
            if cur.rowcount != 1:
                raise StaleWrite(f"rollout {rollout_id} changed concurrently")
            self._rollout_write(c, rollout_id, channel, event, outbox)

    def get_rollout(self, rollout_id: int) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        return None if row is None else dict(row)

    def latest_rollout(self, product: str, channel: str, active_only: bool = False) -> dict[str, Any] | None:
        sql = "SELECT * FROM rollouts WHERE product = ? AND channel = ?"
        if active_only:
            sql += " AND state IN ('running', 'halted')"
        row = self._conn().execute(sql + " ORDER BY id DESC LIMIT 1", (product, channel)).fetchone()
        return None if row is None else dict(row)

    def active_rollouts(self, product: str | None = None, release: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM rollouts WHERE state IN ('running', 'halted')", []
        if product is not None:
            sql, params = sql + " AND product = ?", [product]
        if release is not None:
            sql, params = sql + " AND (release = ? OR previous = ?)", [*params, release, release]
        return [dict(r) for r in self._conn().execute(sql + " ORDER BY id", params)]

    def rollout_events(self, rollout_id: int) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT event, percent, actor, reason, at FROM rollout_events "
                                    "WHERE rollout = ? ORDER BY id", (rollout_id,)).fetchall()
        return [{**dict(r), "at": _iso(r["at"])} for r in rows]

    def was_offered(self, product: str, version: str) -> bool:
        return self._conn().execute("SELECT 1 FROM offered WHERE product = ? AND version = ?",
                                    (product, version)).fetchone() is not None

    def report_outcomes(self, product: str, to_version: str, since: float, until: float) -> dict[str, int]:
        """Reports per outcome for a release in [since, until]."""
        rows = self._conn().execute(
            "SELECT outcome, COUNT(*) FROM reports WHERE product = ? AND to_version = ? AND at >= ? AND at <= ? "
            "GROUP BY outcome", (product, to_version, since, until)).fetchall()
        return {r[0]: r[1] for r in rows}

    def latest_outcomes(self, product: str, to_version: str, since: float) -> dict[str, tuple[str, bool]]:
        """client id -> (its latest outcome, whether it ever failed) for a release since a moment."""
        rows = self._conn().execute(
            "SELECT client_id, outcome, id FROM reports WHERE product = ? AND to_version = ? AND at >= ? "
            "ORDER BY id", (product, to_version, since)).fetchall()
        out: dict[str, tuple[str, bool]] = {}
        for client_id, outcome, _ in rows:
            failed_before = out.get(client_id, ("", False))[1]
            out[client_id] = (outcome, failed_before or outcome != "success")
        return out

    # -- webhook outbox
    @staticmethod
    def _outbox(c: Connection, rows: Iterable[tuple[str, str, bytes]], now: float) -> None:
        rows = list(rows)
        if rows:
            c.executemany("INSERT INTO webhook_outbox(url, event, body, state, next_attempt, created) "
                          "VALUES (?, ?, ?, 'pending', ?, ?)", [(u, e, b, now, now) for u, e, b in rows])

    def enqueue_webhooks(self, rows: Iterable[tuple[str, str, bytes]], now: float) -> None:
        rows = list(rows)
        if rows:
            with self._tx() as c:
                self._outbox(c, rows, now)

    def claim_webhooks(self, now: float, lease_seconds: float, limit: int = 20) -> list[dict[str, Any]]:
        """Due deliveries, leased so that a concurrent drainer skips them."""
        with self._tx() as c:
            rows = [dict(r) for r in c.execute(
                "SELECT id, url, event, body, attempts FROM webhook_outbox WHERE state = 'pending' "
                "AND next_attempt <= ? ORDER BY next_attempt, id LIMIT ?" + self.SKIP_LOCKED, (now, limit))]
            if rows:
                c.executemany("UPDATE webhook_outbox SET next_attempt = ? WHERE id = ?",
                              [(now + lease_seconds, r["id"]) for r in rows])
        for r in rows:
            r["body"] = bytes(r["body"])
        return rows

    def finish_webhook(self, delivery_id: int, state: str, status: int | None, error: str | None,
                       next_attempt: float, now: float) -> None:
        with self._tx() as c:
            c.execute("UPDATE webhook_outbox SET state = ?, attempts = attempts + 1, last_status = ?, "
                      "last_error = ?, next_attempt = ?, delivered = ? WHERE id = ?",
                      (state, status, error, next_attempt, now if state == "delivered" else None, delivery_id))

    def webhook_summary(self, limit: int = 100) -> dict[str, Any]:
        c = self._conn()
        counts = {r[0]: r[1] for r in c.execute("SELECT state, COUNT(*) FROM webhook_outbox GROUP BY state")}
        rows = c.execute("SELECT id, url, event, state, attempts, next_attempt, last_status, last_error, created, "
                         "delivered FROM webhook_outbox ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        deliveries = [{**dict(r), "next_attempt": _iso(r["next_attempt"]), "created": _iso(r["created"]),
                       "delivered": _iso(r["delivered"]) if r["delivered"] else None} for r in rows]
        return {"counts": {s: counts.get(s, 0) for s in ("pending", "delivered", "failed")},
                "deliveries": deliveries}


class SqliteMetadata(Metadata):
    """The embedded backend: one SQLite file, WAL, synchronous=FULL, writers serialised."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self.migrate()

    # -- connections
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _tx(self) -> _Transaction:
        return _Transaction(self._conn())

    def schema_version(self) -> int:
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if current > len(MIGRATIONS):
                raise RuntimeError(f"metadata schema {current} is newer than this program ({len(MIGRATIONS)})")
            for version in range(current, len(MIGRATIONS)):
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def data_version(self) -> int:
        """Changes whenever another connection commits (cheap cache check)."""
        return int(self._conn().execute("PRAGMA data_version").fetchone()[0])


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def open_metadata(url: str | None, store: Path) -> Metadata:
    """The backend ``metadata_url`` names: ``postgresql://...`` (or ``postgres://``),
    ``sqlite:///PATH``, or nothing for the embedded default ``STORE/meta.db``."""
    if not url:
        return SqliteMetadata(Path(store) / "meta.db")
    if url.startswith(("postgresql://", "postgres://")):
        from .metadata_postgres import PostgresMetadata
        return PostgresMetadata(url)
    if url.startswith("sqlite:///"):  # sqlite:///relative.db, sqlite:////absolute.db
        return SqliteMetadata(Path(url[len("sqlite:///"):]))
    raise ValueError(f"metadata_url must be postgresql://... or sqlite:///PATH, not {url.split(':')[0]}:...")
