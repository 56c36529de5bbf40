"""The schema: SQL scripts applied in order at open, written for SQLite.

Each migration moves the schema from version i to i+1.  Never edit one that has
shipped: append a new one.  ``SqliteMetadata`` runs them as they are and keeps
the version in ``PRAGMA user_version``; ``PostgresMetadata`` translates them
type by type (``cas/metadata/postgres.py``) and keeps it in ``schema_version``.
"""
from __future__ import annotations

from .errors import SchemaTooNew

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
    # 9: who sent a report (token fingerprint @ source address) and whether the rollout
    # health gate counts it (authenticated, within the distinct-ids-per-source cap; D9).
    """
    ALTER TABLE reports ADD COLUMN reporter TEXT NOT NULL DEFAULT '';
    ALTER TABLE reports ADD COLUMN counted INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX reports_reporter ON reports(reporter, product, to_version, at);
    """,
    # 10: upload quotas per token (cas/uploads.py): who started an upload (a prefix of its
    # token's hash) and how many bytes it holds.
    """
    ALTER TABLE uploads ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE uploads ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX uploads_owner ON uploads(owner);
    """,
    # 11: objects a delta build has written (or is about to write) but not yet recorded.
    # Garbage collection treats an unexpired pin as a reference (cas/metadata/gc.py);
    # the job's recording drops its pins in the same transaction.
    """
    CREATE TABLE build_pins (
        base TEXT NOT NULL,
        target TEXT NOT NULL,
        digest TEXT NOT NULL,
        expires REAL NOT NULL,
        PRIMARY KEY (base, target, digest)
    );
    CREATE INDEX build_pins_digest ON build_pins(digest);
    """,
    # 12: chunked files (casformat/chunks.py): a file entry names its chunk index object;
    # ``index_chunks`` lists each index's chunks (with sizes) once, so garbage collection,
    # fsck and stats see the chunks a live release needs without reading index objects.
    """
    ALTER TABLE release_files ADD COLUMN chunk_index TEXT;
    ALTER TABLE release_files ADD COLUMN chunk_index_size INTEGER;
    CREATE INDEX release_files_chunk_index ON release_files(chunk_index);
    CREATE TABLE index_chunks (
        chunk_index TEXT NOT NULL,
        chunk TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (chunk_index, chunk)
    );
    CREATE INDEX index_chunks_chunk ON index_chunks(chunk);
    """,
    # 13: version
    # compatibility policies (cas/channels.py signs them into the channel document; the
    # client checks them before it downloads anything).  channel '*': the product's policy.
    """
    CREATE TABLE channel_policies (
        product TEXT NOT NULL,
        channel TEXT NOT NULL,
        rule TEXT NOT NULL,
        actor TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (product, channel)
    );
    """,
    # 14: per-node
    # rollback.  A client id pinned to a release on a channel (cas/pins.py; the channel document
    # lists the pins), and every pin and unpin with who, when and why.
    """
    CREATE TABLE client_pins (
        product TEXT NOT NULL,
        channel TEXT NOT NULL,
        client_id TEXT NOT NULL,
        release TEXT NOT NULL,
        manifest TEXT NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (product, channel, client_id)
    );
    CREATE INDEX client_pins_release ON client_pins(product, release);
    CREATE TABLE client_pin_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        product TEXT NOT NULL,
        channel TEXT NOT NULL,
        client_id TEXT NOT NULL,
        event TEXT NOT NULL,
        release TEXT,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX client_pin_events_channel ON client_pin_events(product, channel, id);
    """,
    # 15: uploads whose bytes live in a shared object store (cas/uploads.py, SharedUploads):
    # each append is one part object; a part counts once recorded here, in upload order.
    """
    CREATE TABLE upload_parts (
        upload_id TEXT NOT NULL,
        part_start INTEGER NOT NULL,
        size INTEGER NOT NULL,
        part_key TEXT NOT NULL,
        PRIMARY KEY (upload_id, part_start)
    );
    """,
    # 16: bytes the appends in flight of a shared upload have reserved against its token's
    # quota beyond what the upload holds (cas/uploads.py, SharedUploads): the quota counts
    # bytes + reserved, so parallel appends on any replicas cannot pass it.
    """
    ALTER TABLE uploads ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0;
    """,
]


def check_schema(current: int) -> None:
    """Refuse a store whose schema is newer than the migrations this program knows."""
    if current > len(MIGRATIONS):
        raise SchemaTooNew(f"metadata schema {current} is newer than this program ({len(MIGRATIONS)})",
                           detail={"schema": current, "known": len(MIGRATIONS)})
