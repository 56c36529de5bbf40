"""Metadata: releases, file entries, lifecycle, channels, uploads, roots.

``Metadata`` is the small interface the rest of the server calls;
``SqliteMetadata`` is the embedded backend (WAL, one connection per thread,
versioned schema with migrations applied at open).  PostgreSQL can implement
the same interface later.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

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


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class SqliteMetadata:
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

    def _tx(self) -> "_Transaction":
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
            "LEFT JOIN releases r ON r.product = p.name GROUP BY p.name ORDER BY p.name").fetchall()
        return [{"name": r["name"], "releases": r["n"], "created": _iso(r["created"])} for r in rows]

    def product_exists(self, product: str) -> bool:
        return self._conn().execute("SELECT 1 FROM products WHERE name = ?", (product,)).fetchone() is not None

    def _release(self, row: sqlite3.Row | None) -> Release | None:
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
        """Record a release; returns the existing one instead when the version exists."""
        files = list(files)
        now = time.time()
        with self._tx() as c:
            row = c.execute("SELECT * FROM releases WHERE product = ? AND version = ?",
                            (product, version)).fetchone()
            if row is not None:
                return self._release(row)
            c.execute("INSERT OR IGNORE INTO products(name, created) VALUES (?, ?)", (product, now))
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM releases WHERE product = ?",
                            (product,)).fetchone()[0]
            regular = [f for f in files if f["type"] == "file"]
            c.execute("INSERT INTO releases(product, version, manifest_digest, manifest, status, file_count, "
                      "logical_bytes, created, status_changed, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (product, version, manifest_digest, manifest, status, len(files),
                       sum(f["size"] for f in regular), now, now, seq))
            c.executemany(
                "INSERT INTO release_files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
            row = c.execute("SELECT sequence FROM channels WHERE product = ? AND channel = ?",
                            (ch.product, ch.channel)).fetchone()
            current = row[0] if row else 0
            if current != ch.sequence - 1:
                raise StaleWrite(f"channel {ch.product}/{ch.channel} moved to sequence {current}")
            c.execute("INSERT OR REPLACE INTO channels VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (ch.product, ch.channel, ch.release, ch.sequence, ch.min_status, ch.document,
                       ch.etag, ch.expires, ch.updated))
            c.execute("INSERT OR IGNORE INTO offered VALUES (?, ?, ?)", (ch.product, ch.release, ch.updated))

    def channels_pointing_at(self, product: str, version: str) -> list[str]:
        rows = self._conn().execute("SELECT channel FROM channels WHERE product = ? AND release = ?",
                                    (product, version)).fetchall()
        return [r[0] for r in rows]

    # -- uploads
    def create_upload(self, upload_id: str) -> None:
        now = time.time()
        with self._tx() as c:
            c.execute("INSERT INTO uploads VALUES (?, ?, ?)", (upload_id, now, now))

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
        with self._tx() as c:
            before = c.total_changes
            c.executemany("INSERT OR IGNORE INTO delta_jobs(base, target, state, queued) "
                          "VALUES (?, ?, 'queued', ?)", [(b, t, now) for b, t in pairs])
            return c.total_changes - before

    def claim_job(self, owner: str, lease_seconds: float, max_attempts: int) -> tuple[str, str] | None:
        """Take the oldest queued job (or one whose lease expired) for ``owner``."""
        now = time.time()
        with self._tx() as c:
            row = c.execute(
                "SELECT base, target FROM delta_jobs WHERE (state = 'queued' OR "
                "(state = 'running' AND lease_until < ?)) AND attempts < ? ORDER BY queued LIMIT 1",
                (now, max_attempts)).fetchone()
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
            for r in recipes:
                c.execute("INSERT OR REPLACE INTO recipes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (r["base"], target, r["kind"], r["algorithm"], r["object"], r["size"],
                           r.get("build_seconds", 0.0), now))
            c.execute("UPDATE delta_jobs SET state = ?, error = ?, finished = ?, lease_until = NULL "
                      "WHERE base = ? AND target = ? AND owner = ?",
                      ("failed" if error else "done", error, now, base, target, owner))

    def release_jobs(self, owner: str) -> None:
        """Put an owner's running jobs back in the queue (clean shutdown)."""
        with self._tx() as c:
            c.execute("UPDATE delta_jobs SET state = 'queued', owner = NULL, lease_until = NULL, "
                      "attempts = MAX(attempts - 1, 0) WHERE state = 'running' AND owner = ?", (owner,))

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
            c.execute("INSERT OR IGNORE INTO delta_plans VALUES (?, ?, ?, ?)",
                      (product, base_version, target_version, time.time()))

    def planned(self, product: str, base_version: str, target_version: str) -> bool:
        return self._conn().execute(
            "SELECT 1 FROM delta_plans WHERE product = ? AND base_version = ? AND target_version = ?",
            (product, base_version, target_version)).fetchone() is not None

    def release_files(self, product: str, version: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn().execute(
            "SELECT path, type, blake3, size, mode, target FROM release_files WHERE product = ? AND version = ?",
            (product, version))]


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
    def _rollout_write(self, c: sqlite3.Connection, rollout_id: int, channel: Channel | None,
                       event: tuple[str, int, str, str, float] | None,
                       outbox: Iterable[tuple[str, str, bytes]]) -> None:
        if channel is not None:
            row = c.execute("SELECT sequence FROM channels WHERE product = ? AND channel = ?",
                            (channel.product, channel.channel)).fetchone()
            current = row[0] if row else 0
            if current != channel.sequence - 1:
                raise StaleWrite(f"channel {channel.product}/{channel.channel} moved to sequence {current}")
            c.execute("INSERT OR REPLACE INTO channels VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (channel.product, channel.channel, channel.release, channel.sequence, channel.min_status,
                       channel.document, channel.etag, channel.expires, channel.updated))
            c.execute("INSERT OR IGNORE INTO offered VALUES (?, ?, ?)",
                      (channel.product, channel.release, channel.updated))
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
                cur = c.execute(f"INSERT INTO rollouts({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                                [row[n] for n in names])
            except sqlite3.IntegrityError:
                raise StaleWrite(f"channel {row['product']}/{row['channel']} already has a rollout") from None
            rollout_id = int(cur.lastrowid)
            c.execute("INSERT OR IGNORE INTO offered VALUES (?, ?, ?)", (row["product"], row["release"], row["started"]))
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
    def _outbox(c: sqlite3.Connection, rows: Iterable[tuple[str, str, bytes]], now: float) -> None:
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
                "AND next_attempt <= ? ORDER BY next_attempt, id LIMIT ?", (now, limit))]
            c.executemany("UPDATE webhook_outbox SET next_attempt = ? WHERE id = ?",
                          [(now + lease_seconds, r["id"]) for r in rows])
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


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
